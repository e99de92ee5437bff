"""`dp-video-eval checkpoint=RUN` (dp/video/cli.py): a video checkpoint's future frames against the truth.

On held-out episodes (the run's validation split, or every episode of ``dataset=PATH``) it
predicts the future frames of ``n_clips`` windows spread evenly over those episodes, whose
future frames all lie inside their episode, and writes per predicted offset:

- PSNR and SSIM of the prediction, and of copying the last context frame (the baseline);
- ``video_eval.json`` / ``video_eval.md`` in ``output_dir`` (default ``<run>/video_eval``);
- ``video_grid.mp4``: ``n_grid`` clips, each a row of truth | prediction, one clip frame per
  video frame (context frames shown on both sides).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dp.checkpoint import load_config, resolve
from dp.data import DatasetError, SequenceDataset, collate_batch
from dp.errors import ConfigError
from dp.policies.registry import load_policy
from dp.video.metrics import psnr, ssim
from dp.video.predictor import VideoPredictor


def held_out_windows(cfg: dict, dataset: str | None) -> SequenceDataset:
    """The windows of the run's validation episodes, or of every episode of ``dataset``."""
    p, task = cfg["policy"], cfg["task"]
    common = dict(horizon=p["horizon"], n_obs_steps=p["n_obs_steps"], n_action_steps=p["n_action_steps"],
                  obs_keys=p["shape_meta"]["obs_keys"], key_offsets=p["key_offsets"])
    if dataset:
        return SequenceDataset(dataset, **common)
    ratio = cfg["training"]["val_ratio"]
    if not ratio:
        raise ConfigError("this run kept no validation episodes (training.val_ratio=0): pass dataset=PATH, a store "
                          "of other episodes of the same camera, or retrain with training.val_ratio=0.1.")
    train = SequenceDataset(task["dataset_path"], **common, val_ratio=ratio, seed=cfg["seed"],
                            max_train_episodes=cfg["training"].get("max_train_episodes"))
    return train.get_validation_dataset()


def spread_clips(windows: SequenceDataset, model: VideoPredictor, n: int) -> np.ndarray:
    """Indices of up to ``n`` windows spread evenly over ``windows``, each with its whole clip (the
    model's offsets) inside its episode."""
    valid = np.flatnonzero(windows.inside_episode(model.camera))
    if not len(valid):
        raise DatasetError(f"no held-out window has its whole clip (offsets {model.offsets}) inside its episode: "
                           "the episodes are shorter than the clip; use a store of longer episodes.")
    return valid[np.unique(np.linspace(0, len(valid) - 1, min(n, len(valid))).round().astype(int))]


def evaluate_video(checkpoint: str, n_clips: int = 64, output_dir: str | None = None, dataset: str | None = None,
                   batch_size: int = 16, n_grid: int = 4, ema: bool = True, device: str = "cpu", seed: int = 0,
                   attention: str | None = None, sampler: dict | None = None, progress: bool = True) -> dict:
    for name, value, least in (("n_clips", n_clips, 1), ("batch_size", batch_size, 1), ("n_grid", n_grid, 0)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ConfigError(f"{name}: expected an integer >= {least}, found {value!r}.")
    ckpt = resolve(checkpoint)
    cfg = load_config(ckpt)
    model = load_policy(ckpt, ema=ema, device=device)
    if not isinstance(model, VideoPredictor):
        raise ConfigError(f"{ckpt} holds a {type(model).__name__}, not a video predictor (policy=video).")
    if attention:
        model.set_attention(attention)
    if sampler:
        model.set_sampler(**sampler)
    model.generator = torch.Generator(device=device).manual_seed(seed)
    windows = held_out_windows(cfg, dataset)
    camera, n_ctx = model.camera, model.n_context
    future = np.asarray(model.offsets[n_ctx:])
    picks = spread_clips(windows, model, n_clips)

    rows = {"pred_psnr": [], "pred_ssim": [], "copy_psnr": [], "copy_ssim": []}
    grid_truth, grid_pred, seconds = [], [], 0.0
    for start in tqdm(range(0, len(picks), batch_size), desc="video eval", disable=not progress):
        batch = collate_batch(windows.get_batch(picks[start : start + batch_size]))
        clip = batch["obs"][camera].to(device)                       # uint8 [B, T, C, H, W]
        t0 = time.perf_counter()
        pred = model.predict_frames(clip[:, :n_ctx])                 # [B, Tf, C, H, W] in [0, 1]
        seconds += time.perf_counter() - t0
        truth = clip[:, n_ctx:].float() / 255.0
        copy = (clip[:, n_ctx - 1 : n_ctx].float() / 255.0).expand_as(truth)
        rows["pred_psnr"].append(psnr(pred, truth))
        rows["pred_ssim"].append(ssim(pred, truth))
        rows["copy_psnr"].append(psnr(copy, truth))
        rows["copy_ssim"].append(ssim(copy, truth))
        if len(grid_truth) < n_grid:
            context = clip[:, :n_ctx].float() / 255.0
            grid_truth.extend(torch.cat([context, truth], 1)[: n_grid - len(grid_truth)])
            grid_pred.extend(torch.cat([context, pred], 1)[: n_grid - len(grid_pred)])
    per = {k: torch.cat(v).mean(0).tolist() for k, v in rows.items()}  # mean over clips, per offset
    out = Path(output_dir) if output_dir else ckpt.parent.parent / "video_eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "checkpoint": str(ckpt), "clips": int(len(picks)), "held_out": dataset or "validation episodes",
        "offsets": future.tolist(), "attention": model.attention, "sampler": model.config.get("sampler"),
        "per_offset": [{"offset": int(o), "psnr": per["pred_psnr"][i], "ssim": per["pred_ssim"][i],
                        "copy_last_psnr": per["copy_psnr"][i], "copy_last_ssim": per["copy_ssim"][i],
                        "psnr_gain_db": per["pred_psnr"][i] - per["copy_psnr"][i]} for i, o in enumerate(future)],
        "predict_seconds_per_clip": seconds / len(picks),
    }
    if grid_truth:
        summary["grid"] = str(write_grid(torch.stack(grid_truth), torch.stack(grid_pred), out / "video_grid.mp4"))
    (out / "video_eval.json").write_text(json.dumps(summary, indent=2))
    (out / "video_eval.md").write_text(report_markdown(summary))
    summary["report"] = str(out / "video_eval.md")
    return summary


def write_grid(truth: torch.Tensor, pred: torch.Tensor, path: Path, fps: float = 2.0, scale: int = 2) -> Path:
    """truth, pred [N, T, C, H, W] in [0, 1] -> an mp4 of T frames, N rows of (truth | prediction)."""
    import imageio.v2 as imageio

    pair = torch.cat([truth, torch.ones_like(truth[..., :2]), pred], dim=-1)           # a 2 px white bar between
    rows = torch.cat([pair, torch.ones_like(pair[..., :2, :])], dim=-2)                 # and below each row
    frames = rows.permute(1, 0, 3, 4, 2).flatten(1, 2)                                  # [T, N*(H+2), W', C]
    frames = frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    imageio.mimsave(path, [(f.cpu().numpy() * 255).round().astype(np.uint8) for f in frames], fps=fps,
                    macro_block_size=1)
    return path


def report_markdown(s: dict) -> str:
    lines = [f"# Video prediction: {s['checkpoint']}", "",
             f"{s['clips']} clips from {s['held_out']}; attention {s['attention']}, sampler {s['sampler']}.", "",
             "| offset | PSNR (dB) | copy last (dB) | gain (dB) | SSIM | copy last SSIM |", "|---|---|---|---|---|---|"]
    for r in s["per_offset"]:
        lines.append(f"| +{r['offset']} | {r['psnr']:.2f} | {r['copy_last_psnr']:.2f} | {r['psnr_gain_db']:+.2f} | "
                     f"{r['ssim']:.3f} | {r['copy_last_ssim']:.3f} |")
    return "\n".join(lines) + "\n"
