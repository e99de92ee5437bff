"""Sparse VideoGen's attention against dense attention on a video clip.

    dp-bench video_sparse [--checkpoint RUN]

A ``policy=video`` model (the default config: 8 frames of 84 px, 12 px patches, 392 tokens;
fresh weights, or a trained ``--checkpoint``). Three figures, dense and sparse timed
interleaved in the same run, medians of repeats, ratios reported:

- attention per layer: ``scaled_dot_product_attention`` over the clip against
  ``SparseHeadAttention`` (profiling included) on the q, k, v a layer sees mid-prediction;
- whole prediction: ``predict_frames`` with ``attention=full`` against ``sparse``, batch 1;
- profiling overhead: the share of the sparse prediction spent profiling heads;
- with ``--checkpoint``: PSNR per predicted offset of both on the run's held-out clips, and
  the change (sparse - dense);
- with ``--checkpoint``: how sparse the trained heads are. For every head, layer and network
  call of a prediction on 8 held-out clips, the relative squared error of attention restricted
  to a pattern (and renormalized) against full attention, for SVG's two patterns and for
  denser frame-window ones (``_pattern_masks``). SVG's premise is that one of its two patterns
  is close to full attention for nearly every head; this table says whether a model meets it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from dp.core.attention import (
    SparseHeadAttention, SparseState, restricted_attention_errors, spatial_attention, temporal_attention,
)
from dp.results import result_name, sync, write_result
from dp.video import VideoPredictor

DEFAULT_OFFSETS = [-2, 0, 2, 4, 6, 8, 10, 12]


def _pattern_masks(layout, n_context: int) -> dict[str, torch.Tensor]:
    """[N, N] bool masks (True = may attend) of SVG's patterns and of frame-window ones with their density."""
    idx = torch.arange(layout.n)
    frame = idx // layout.patches
    own, context = layout.mask("spatial"), (frame[None, :] < n_context).expand(layout.n, layout.n)
    previous, near = frame[None, :] == frame[:, None] - 1, (frame[None, :] - frame[:, None]).abs() <= 1
    return {"spatial": own, "temporal": layout.mask("temporal"), "spatial or temporal": own | layout.mask("temporal"),
            "own frame + context frames": own | context, "own + previous + context frames": own | previous | context,
            "frames within 1 + context frames": near | context}


def restricted_errors(q, k, v, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per mask [N, N], [heads]: the squared error of attention restricted to the mask against full
    attention, relative to full attention's output, over every row of q, k, v [B, heads, N, d]."""
    errors, scale = restricted_attention_errors(q, k, v, torch.stack(list(masks.values())).to(q.device))
    return dict(zip(masks, errors / scale))


@torch.no_grad()
def pattern_errors(model: VideoPredictor, context: torch.Tensor) -> list[dict]:
    """Per pattern: key density, and the median relative squared error of the restricted attention against
    full attention over every head x layer x network call of ``predict_frames(context)``, with the share of
    head-calls under 5% and 10%, and (for SVG's pair) of the better of the two per head."""
    masks = _pattern_masks(model.layout, model.n_context)
    errors = {name: [] for name in masks}

    def kernel(q, k, v, mask=None):
        for name, error in restricted_errors(q, k, v, masks).items():
            errors[name].append(error)
        return F.scaled_dot_product_attention(q, k, v)

    model.set_attention("full")
    for block in model.dit.blocks:
        block.attn.kernel = kernel
    try:
        model.predict_frames(context)
    finally:
        for block in model.dit.blocks:
            block.attn.kernel = None
    stacked = {name: torch.cat(e).float().cpu() for name, e in errors.items()}
    stacked["better of spatial, temporal"] = torch.minimum(stacked["spatial"], stacked["temporal"])
    rows = []
    for name, e in stacked.items():
        density = masks[name].float().mean().item() if name in masks else None
        rows.append({"pattern": name, "key_density": density, "median_rel_error": e.median().item(),
                     "share_under_5pct": (e < 0.05).float().mean().item(),
                     "share_under_10pct": (e < 0.1).float().mean().item(), "head_calls": e.numel()})
    return rows


def _model(checkpoint: str | None, device: str) -> VideoPredictor:
    if checkpoint:
        from dp.policies.registry import load_policy

        model = load_policy(checkpoint, device=device)
        if not isinstance(model, VideoPredictor):
            raise SystemExit(f"--checkpoint must be a policy=video run; {checkpoint} is {type(model).__name__}")
        return model
    torch.manual_seed(0)
    return VideoPredictor({"obs": {"image": [3, 84, 84]}}, {"image": DEFAULT_OFFSETS}).to(device).eval()


def _held_out_context(checkpoint: str, model: VideoPredictor, device: str, n: int = 8) -> torch.Tensor:
    """The context frames of ``n`` held-out clips spread over the run's validation episodes, uint8."""
    from dp.checkpoint import load_config, resolve
    from dp.data import collate_batch
    from dp.eval.video import held_out_windows, spread_clips

    windows = held_out_windows(load_config(resolve(checkpoint)), None)
    clip = collate_batch(windows.get_batch(spread_clips(windows, model, n)))["obs"][model.camera]
    return clip[:, : model.n_context].to(device)


def _times_ms(fn, repeats: int, device: str) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _layer_qkv(model: VideoPredictor, context: torch.Tensor) -> torch.Tensor:
    """q, k, v of the middle layer at the middle network call of one dense prediction."""
    block = model.dit.blocks[model.dit.depth // 2]
    seen = []
    block.attn.kernel = lambda q, k, v, mask: (seen.append((q, k, v)), F.scaled_dot_product_attention(q, k, v))[1]
    model.predict_frames(context)
    block.attn.kernel = None
    return seen[len(seen) // 2]


def main(device: str = "cpu", checkpoint: str | None = None, rounds: int = 5, repeats: int = 10) -> None:
    model = _model(checkpoint, device)
    model.generator = torch.Generator(device=device).manual_seed(0)
    c, h, w = model.codec.channels, model.codec.height, model.codec.width
    context = torch.randint(0, 256, (1, model.n_context, c, h, w), dtype=torch.uint8, device=device)
    model.set_attention("full")
    q, k, v = _layer_qkv(model, context)
    state = SparseState(dense_calls=0, sample_rows=model.sparse_state.sample_rows)
    sparse_layer = SparseHeadAttention(model.layout, state)
    layer = {"dense": [], "sparse (profiled)": [], "spatial only": [], "temporal only": []}
    fns = {"dense": lambda: F.scaled_dot_product_attention(q, k, v),
           "sparse (profiled)": lambda: sparse_layer(q, k, v),
           "spatial only": lambda: spatial_attention(q, k, v, model.layout),
           "temporal only": lambda: temporal_attention(q, k, v, model.layout)}
    whole = {"full": [], "sparse": []}
    for fn in fns.values():
        fn()  # warm-up
    for attention in whole:
        model.set_attention(attention)
        model.predict_frames(context)
    profile_s, sparse_s = 0.0, 0.0
    for _ in range(rounds):
        for name, fn in fns.items():
            layer[name] += _times_ms(fn, repeats, device)
        for attention in whole:
            model.set_attention(attention)
            model.sparse_state.timing = attention == "sparse"
            model.sparse_state.reset_stats()
            times = _times_ms(lambda: model.predict_frames(context), 2, device)
            whole[attention] += times
            if attention == "sparse":
                profile_s += model.sparse_state.profile_seconds
                sparse_s += sum(times) / 1000
    counts = dict(model.sparse_state.counts)
    rows = []
    for name, t in layer.items():
        rows.append({"what": f"attention, one layer: {name}", "median_ms": float(np.median(t)), "repeats": len(t)})
    for name, t in whole.items():
        rows.append({"what": f"whole prediction: {name}", "median_ms": float(np.median(t)), "repeats": len(t)})
    for row in rows[1:4]:
        row["speedup_vs_dense"] = rows[0]["median_ms"] / row["median_ms"]
    rows[5]["speedup_vs_dense"] = rows[4]["median_ms"] / rows[5]["median_ms"]
    meta = {"batch": 1, "frames": model.layout.frames, "patches_per_frame": model.layout.patches,
            "tokens": model.layout.n, "heads": model.dit.blocks[0].attn.heads, "depth": model.dit.depth,
            "sampler": model.config.get("sampler"), "dense_calls": model.sparse_state.dense_calls,
            "sample_rows": model.sparse_state.sample_rows, "profiling_share_of_sparse_prediction": profile_s / sparse_s,
            "last_prediction_head_patterns": counts, "weights": checkpoint or "fresh (seed 0)",
            "threads": torch.get_num_threads()}
    if checkpoint:
        from dp.eval.video import evaluate_video

        from dp.checkpoint import resolve

        run_dir = resolve(checkpoint).parent.parent
        runs = {a: evaluate_video(checkpoint, n_clips=16, output_dir=str(run_dir / f"video_eval_bench_{a}"), n_grid=0,
                                  attention=a, device=device, progress=False) for a in ("full", "sparse")}
        meta["psnr_per_offset"] = [{"offset": d["offset"], "dense": d["psnr"], "sparse": s["psnr"],
                                    "change_db": s["psnr"] - d["psnr"]}
                                   for d, s in zip(runs["full"]["per_offset"], runs["sparse"]["per_offset"])]
    write_result(result_name("video_sparse", device), rows, ["what", "median_ms", "repeats", "speedup_vs_dense"], meta,
                 device=device)
    if checkpoint:
        write_pattern_errors(checkpoint, model, device)


def write_pattern_errors(checkpoint: str, model: VideoPredictor, device: str = "cpu") -> None:
    """bench/results/video_sparse_patterns_<run>.{json,md}: ``pattern_errors`` on the run's held-out clips."""
    from dp.checkpoint import resolve

    run = resolve(checkpoint).parent.parent.name
    rows = pattern_errors(model, _held_out_context(checkpoint, model, device))
    write_result(result_name(f"video_sparse_patterns_{run}", device), rows,
                 ["pattern", "key_density", "median_rel_error", "share_under_5pct", "share_under_10pct", "head_calls"],
                 {"weights": checkpoint, "clips": 8, "sampler": model.config.get("sampler")}, device=device)
