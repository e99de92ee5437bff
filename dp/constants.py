"""Constants several packages share (configs, seeds). Imports nothing."""
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")  # hydra configs of every CLI
SEED_STRIDE = 1_000_000  # dp-collect: seeds of task k in a set start at seed + k * SEED_STRIDE
EVAL_SEED_BASE = 1_000_000_000  # evaluation seeds start here: never used for collection
