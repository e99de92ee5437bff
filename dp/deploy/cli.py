"""`dp-export checkpoint=RUN output=DIR` (dp/configs/export.yaml): write a checkpoint as an artifact
that `dp-control artifact=DIR` runs without dp's training code."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dp.cli_errors import run_config
from dp.constants import CONFIG_DIR


def export_checkpoint(checkpoint: str, output: str | None = None, batch: int = 1, sampler: dict | None = None,
                      ema: bool = True, device: str = "cpu") -> dict:
    from dp.checkpoint import checkpoint_tasks, load_config, resolve
    from dp.deploy.export import export_policy
    from dp.errors import ConfigError
    from dp.policies.registry import load_policy

    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise ConfigError(f"batch must be an integer >= 1, got {batch!r}.")
    ckpt = resolve(checkpoint)
    cfg = load_config(ckpt)
    policy = load_policy(ckpt, ema=ema, device=device)
    if sampler:
        policy.set_sampler(**sampler)
    tasks, env_options = checkpoint_tasks(cfg)
    out = Path(output) if output else ckpt.parent.parent / "export"
    info = {"checkpoint": str(ckpt), "tasks": tasks, "env_options": env_options,
            "collection_seeds_max": int(cfg.get("collection_seeds_max", -1))}
    meta = export_policy(policy, out, batch=batch, info=info)
    return {**meta, "output": str(out)}


@hydra.main(config_path=CONFIG_DIR, config_name="export", version_base=None)
def _main(cfg: DictConfig) -> None:
    meta = run_config(export_checkpoint, cfg)
    print(f"wrote {meta['output']}: {meta['policy']} with {meta['sampler']['name']}-{meta['sampler']['steps']}, batch "
          f"{meta['batch']}, {meta['device']}; max |artifact - eager| {meta['max_abs_error']:.2g}; "
          f"compiled in {meta['compile_s']} s")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
