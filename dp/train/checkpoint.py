"""Checkpoints: one directory per save, written atomically, loadable without pickles.

    <output_dir>/checkpoints/step_00005000/
        weights.safetensors   policy state dict (normalizer included)
        ema.safetensors       EMA weights (what evaluation uses by default)
        config.yaml           the full training config; its `policy` section rebuilds the policy
        train_state.pt        optimizer, scheduler, step, loss history (torch.load weights_only)
        meta.json             step, dp version, checkpoint format version
    <output_dir>/checkpoints/latest -> step_00005000   (symlink, replaced atomically)

A save goes to ``.step_XXXXXXXX.tmp-<pid>`` and is renamed into place when complete, so
a crash never leaves a half-written checkpoint under a real name.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

import dp

FORMAT_VERSION = 1
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def _tensors(state_dict: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_checkpoint(root: Path, step: int, policy, ema_policy, optimizer, scheduler, config: dict,
                    train_state: dict, keep: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(policy.state_dict()), tmp / "weights.safetensors")
    if ema_policy is not None:
        save_file(_tensors(ema_policy.state_dict()), tmp / "ema.safetensors")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step, **train_state},
               tmp / "train_state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "dp_version": dp.__version__, "format": FORMAT_VERSION}))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    link = root / f".{LATEST}.tmp-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name)
    os.replace(link, root / LATEST)
    saved = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in saved[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory, a run directory (uses checkpoints/latest) or a checkpoints/ root."""
    path = Path(path)
    for cand in (path, path / LATEST, path / "checkpoints" / LATEST):
        if (cand / "weights.safetensors").exists():
            return cand.resolve()
    raise CheckpointError(
        f"No checkpoint at {path}: expected a directory holding weights.safetensors (or a run directory "
        f"with checkpoints/latest). Train one with `dp-train`."
    )


def load_config(path: str | os.PathLike) -> dict:
    ckpt = resolve(path)
    return yaml.safe_load((ckpt / "config.yaml").read_text())


def checkpoint_tasks(cfg: dict) -> tuple[list[str], dict]:
    """The env tasks a checkpoint was trained on (its dataset's, else its task config's) and
    their env options: what dp-eval, dp-control and the sampler sweep roll it out in."""
    attrs = cfg.get("dataset_attrs", {}) or {}
    return list(attrs.get("tasks") or [cfg["task"]["env"]]), dict(attrs.get("env_options") or {})


def load_policy(path: str | os.PathLike, ema: bool = True, device="cpu"):
    """Rebuild the policy from config.yaml and load (EMA) weights; normalizer included."""
    from hydra.utils import instantiate

    from dp.data.normalizer import Normalizer

    ckpt = resolve(path)
    cfg = load_config(ckpt)
    if "policy" not in cfg or "_target_" not in cfg["policy"]:
        raise CheckpointError(f"{ckpt}/config.yaml has no policy._target_; it cannot rebuild the policy.")
    policy = instantiate(cfg["policy"], _convert_="all")
    weights = ckpt / ("ema.safetensors" if ema and (ckpt / "ema.safetensors").exists() else "weights.safetensors")
    state = load_file(str(weights))
    policy.normalizer = Normalizer.from_state_dict(state, prefix="normalizer.")
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match the policy its config builds: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    policy.checkpoint_path = str(ckpt)
    return policy.to(device).eval()


def load_train_state(path: Path) -> tuple[dict, dict, dict]:
    """(weights, ema weights or None, train_state) of a checkpoint, for resuming."""
    ckpt = resolve(path)
    weights = load_file(str(ckpt / "weights.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors")) if (ckpt / "ema.safetensors").exists() else None
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    return weights, ema, state
