"""Checkpoints: one directory per save, written atomically, loadable without pickles or code.

    <output_dir>/checkpoints/step_00005000/
        weights.safetensors   policy state dict (normalizer included)
        ema.safetensors       EMA weights (what evaluation uses by default)
        config.yaml           the full training config; its `policy` section rebuilds the policy
        train_state.pt        optimizer, scheduler, step, loss history (torch.load weights_only)
        meta.json             step, dp version, format version, size + sha256 of every file above
    <output_dir>/checkpoints/latest -> step_00005000   (symlink, replaced atomically)

A save goes to ``.step_XXXXXXXX.tmp-<pid>``, every file and the directory are fsynced, and
it is renamed into place when complete: a crash or power loss never leaves a half-written
checkpoint under a real name. Temp directories of killed writers are removed by the next save.

Loading treats the checkpoint as untrusted (it may have been downloaded): files are checked
against meta.json (``verify``), weights come from safetensors (``load_tensors`` refuses
non-finite ones), the training state from ``torch.load(weights_only=True)``, and the policy is
built by ``dp.policies.registry.load_policy`` (registered classes and plain data only, never
``hydra.utils.instantiate``). This module sits below policies and train: it knows files, not models.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import dp
from dp.data.atomic import fsync_dir, fsync_tree, remove_stale_tmp
from dp.runtime.artifact import sha256
from dp.errors import UserError

# 1: first; 2: meta.json lists every file's size and sha256; 3: policies are compositions (codec.*,
# plugins.* state names). Older formats load: DenoisingPolicy renames their state keys. Newer ones are refused.
FORMAT_VERSION = 3
LATEST = "latest"
REQUIRED = ("weights.safetensors", "config.yaml", "meta.json")  # what loading a policy reads
RESUME = "train_state.pt"  # and what resuming also needs (a save_pretrained directory has none)


class CheckpointError(UserError, RuntimeError):
    pass


def _tensors(state_dict: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_checkpoint(root: Path, step: int, policy, ema_policy, optimizer, scheduler, config: dict,
                    train_state: dict, keep: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root, ".step_")
    remove_stale_tmp(root, f".{LATEST}")
    name = f"step_{step:08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(_tensors(policy.state_dict()), tmp / "weights.safetensors")
        if ema_policy is not None:
            save_file(_tensors(ema_policy.state_dict()), tmp / "ema.safetensors")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    **train_state}, tmp / RESUME)
        _write_meta(tmp, step)
    except (OSError, SafetensorError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {root / name} ({str(e).splitlines()[0]}); the checkpoints "
                              f"already in {root} are untouched. Free disk space or choose a writable "
                              "output_dir.") from e
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    link = root / f".{LATEST}.tmp-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name)
    os.replace(link, root / LATEST)
    fsync_dir(root)
    saved = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in saved[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_meta(folder: Path, step: int) -> None:
    """meta.json: the step, dp's version, the format, each file's size and sha256; then fsync the folder."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.iterdir())}
    (folder / "meta.json").write_text(json.dumps({"step": step, "dp_version": dp.__version__,
                                                  "format": FORMAT_VERSION, "files": files}))
    fsync_tree(folder)


def save_pretrained(directory: str | os.PathLike, policy, config: dict, step: int = 0) -> Path:
    """A policy to share: config.yaml, weights.safetensors (normalizer included), meta.json (sizes,
    sha256) and a README.md model card; no optimizer state. Written beside ``directory`` and renamed
    into place, so a failed save leaves what was there."""
    out = Path(directory)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(_tensors(policy.state_dict()), tmp / "weights.safetensors")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        task = (config.get("task") or {}).get("name", "?")
        (tmp / "README.md").write_text(
            f"---\nlibrary_name: dp\ntags: [robotics, diffusion-policy]\n---\n\n# {type(policy).__name__} ({task})\n\n"
            f"A dp policy ({policy.num_parameters() / 1e6:.2f}M parameters), trained {step} steps.\n\n"
            f"```python\nfrom dp.policies import Policy\npolicy = Policy.from_pretrained(\"<this repo or directory>\")\n```\n")
        _write_meta(tmp, step)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------ integrity
def problems_of(ckpt: Path, checksums: bool = True, resume: bool = False) -> list[str]:
    """Why ``ckpt`` is not a complete checkpoint (``resume``: one training can continue from); [] when it is.

    Complete: every required file present, meta.json readable, each safetensors header
    readable, and (format >= 2, ``checksums``) every file's size and sha256 as meta.json lists."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return [f"{ckpt} is not a directory" + (" (a dangling link)" if ckpt.is_symlink() else "")]
    missing = [f for f in (*REQUIRED, *([RESUME] if resume else [])) if not (ckpt / f).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        listed = meta.get("files", {}) if meta.get("format", 1) >= 2 else {}
    except (ValueError, AttributeError) as e:
        return [f"meta.json is unreadable ({e})"]
    if meta.get("format", 1) > FORMAT_VERSION:
        return [f"format {meta['format']} was written by a newer dp (this one reads up to {FORMAT_VERSION}); "
                "upgrade dp to load it"]
    problems = []
    for name, want in listed.items():
        path = ckpt / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want.get("bytes"):
            problems.append(f"{name} has {path.stat().st_size} bytes, meta.json says {want.get('bytes')}")
        elif checksums and sha256(path) != want.get("sha256"):
            problems.append(f"{name} does not match its sha256 in meta.json")
    for name in ("weights.safetensors", "ema.safetensors"):
        if (ckpt / name).exists() and not any(p.startswith(name) for p in problems):
            try:
                with safe_open(str(ckpt / name), framework="pt"):
                    pass
            except (SafetensorError, OSError) as e:
                problems.append(f"{name} is unreadable ({e})")
    return problems


def verify(ckpt: Path) -> None:
    problems = problems_of(ckpt)
    if problems:
        raise CheckpointError(f"{ckpt} is damaged or incomplete: {'; '.join(problems)}. Use another checkpoint "
                              f"(checkpoints/step_*) or retrain.")


def step_dirs(root: Path) -> list[Path]:
    """``step_*`` checkpoint directories under ``root``, newest first."""
    return sorted((p for p in Path(root).glob("step_*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def newest_complete(root: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under a checkpoints/ root (``latest`` first, then
    ``step_*`` newest first) and a line for each one skipped."""
    root, skipped = Path(root), []
    latest = root / LATEST
    candidates = ([latest.resolve()] if latest.exists() else []) + step_dirs(root)
    if latest.is_symlink() and not latest.exists():
        skipped.append(f"{latest} -> {os.readlink(latest)}: dangling link")
    seen = set()
    for cand in candidates:
        if cand in seen:
            continue
        seen.add(cand)
        problems = problems_of(cand, resume=True)
        if not problems:
            return cand, skipped
        skipped.append(f"{cand.name}: {'; '.join(problems)}")
    return None, skipped


def has_checkpoints(root: Path) -> bool:
    root = Path(root)
    return (root / LATEST).is_symlink() or bool(step_dirs(root))


# ------------------------------------------------------------------ loading
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
    try:
        cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt} has no config.yaml: it cannot rebuild its policy. Use a complete "
                              "checkpoint written by dp-train.") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"{ckpt}/config.yaml is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{ckpt}/config.yaml must be a mapping, found {type(cfg).__name__}.")
    return cfg


def checkpoint_rollouts(cfg: dict) -> list[dict]:
    """What to roll a checkpoint out in: ``[{label, task, env_options, embodiment}]``. A mixture
    checkpoint (trained on ``task.datasets``) gives one entry per source and task, labelled
    ``task[embodiment]`` and driven through that robot's unified-space map; any other checkpoint
    gives its tasks with ``embodiment`` None."""
    sources = (cfg.get("dataset_attrs") or {}).get("sources")
    if sources:
        return [{"label": f"{t}[{s['embodiment']}]", "task": t, "env_options": dict(s.get("env_options") or {}),
                 "embodiment": s["embodiment"]} for s in sources for t in s["tasks"]]
    tasks, env_options = checkpoint_tasks(cfg)
    return [{"label": t, "task": t, "env_options": env_options, "embodiment": None} for t in tasks]


def checkpoint_tasks(cfg: dict) -> tuple[list[str], dict]:
    """The env tasks a checkpoint was trained on (its dataset's, else its task config's) and
    their env options: what dp-eval, dp-control and the sampler sweep roll it out in."""
    attrs = cfg.get("dataset_attrs", {}) or {}
    if attrs.get("sources"):
        raise CheckpointError("this checkpoint was trained on a mixture of robots (task.datasets); dp-eval rolls it "
                              "out on each of them, but this command takes single-robot checkpoints only so far.")
    if attrs.get("env_options") is not None:
        return list(attrs.get("tasks") or [cfg["task"]["env"]]), dict(attrs["env_options"])
    # a store that records no env options (imported, e.g. diffusion_policy's PushT): the task config's,
    # with the observation mode and the image side the policy was trained on
    task = cfg.get("task") or {}
    options = dict(task.get("env_options") or {})
    if task.get("obs") == "image":
        options["obs"] = "image"
        frames = [s for s in ((cfg.get("policy") or {}).get("shape_meta") or {}).get("obs", {}).values()
                  if isinstance(s, list) and len(s) >= 3]
        if frames and frames[0][-1] == frames[0][-2]:
            options.setdefault("image_size", int(frames[0][-1]))
    return list(attrs.get("tasks") or [task["env"]]), options


def load_tensors(path: Path) -> dict:
    """A safetensors file's tensors; CheckpointError when unreadable or not finite."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}). Use another checkpoint.") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in {bad[:5]}"
                              f"{' and more' if len(bad) > 5 else ''}; refusing to load it. Use an earlier "
                              "checkpoint, or retrain with a lower training.lr.")
    return state


def load_train_state(path: Path) -> tuple[dict, dict, dict]:
    """(weights, ema weights or None, train_state) of a checkpoint, for resuming."""
    ckpt = resolve(path)
    weights = load_tensors(ckpt / "weights.safetensors")
    ema = load_tensors(ckpt / "ema.safetensors") if (ckpt / "ema.safetensors").exists() else None
    if not (ckpt / RESUME).is_file():
        raise CheckpointError(f"{ckpt} has no {RESUME}: it is a shared policy (save_pretrained), which loads for "
                              f"evaluation and fine-tuning (training.init_from={ckpt}), not for resuming a run.")
    state = torch.load(ckpt / RESUME, weights_only=True)
    return weights, ema, state
