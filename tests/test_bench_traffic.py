"""dp.bench.traffic counts the distinct bytes matrix products read."""
import torch
import torch.nn.functional as F

from dp.bench.traffic import MatmulReads

KB = 1e-3  # megabytes


def test_windows_count_their_own_rows_and_shared_memory_once():
    w = torch.zeros(4096, 16)
    x = torch.zeros(1, 16)
    with MatmulReads() as reads, torch.inference_mode():
        F.linear(x, w[:2048])
        F.linear(x, w[1024:3072])  # overlaps the first window by 1024 rows
        F.linear(x, w[:2048])  # read again: adds nothing
    assert abs(reads.megabytes - (3072 * 16 * 4 + 16 * 4) / 1e6) < KB  # rows 0..3071, and x once


def test_a_column_window_counts_only_its_columns():
    bank = torch.zeros(8, 1024)
    with MatmulReads() as reads:
        torch.mm(torch.zeros(1, 8), bank[:, 256:512])  # 8 rows of 256 floats, 3 KB apart
    assert abs(reads.megabytes - (8 * 256 * 4 + 8 * 4) / 1e6) < 1e-6


def test_nothing_outside_the_region_and_no_elementwise_ops():
    w = torch.zeros(64, 64)
    with MatmulReads() as reads:
        (w * 2).sum()
    F.linear(torch.zeros(1, 64), w)
    assert reads.megabytes == 0
