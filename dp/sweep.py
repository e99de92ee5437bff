"""Where one job of a hydra multirun writes (``dp-train -m seed=0,1``): every job its own output.

A single run writes where the config says. In a multirun the output is suffixed with the values
that job sweeps, ``key-value``: ``runs/toy_dit`` becomes ``runs/toy_dit_seed-0`` and
``runs/toy_dit_seed-1``; ``data/toy.zarr`` becomes ``data/toy_seed-0.zarr``. Only swept keys name
a job (``seed=0,1 task=toy`` gives ``_seed-0``, not ``_seed-0_task-toy``). No ``=``, ``,`` or ``/`` in
the name: it must pass back through a hydra override (``task.dataset_path=data/toy_seed-0.zarr``)
unquoted. The sweep's own files go to ``multirun/`` (git-ignored).
"""
from __future__ import annotations

import sys
from pathlib import Path


def swept_keys(argv: list[str]) -> set[str]:
    """The keys that a command line's overrides sweep (``seed=0,1``, ``lr=range(1,3)``, ``x=glob(*)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()}


def job_output(path: str, argv: list[str] | None = None) -> str:
    """``path`` for this job: unchanged outside a multirun; else suffixed with the job's swept values
    (before a ``.zarr`` suffix)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return path
    hc = HydraConfig.get()
    keys = swept_keys(sys.argv[1:] if argv is None else argv)
    values = [o.lstrip("+~").split("=", 1) for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in keys]
    clean = lambda v: "".join(c if c.isalnum() or c in "._-" else "-" for c in v)  # noqa: E731
    tag = "_".join(f"{k}-{clean(v)}" for k, v in values) if values else f"job{hc.job.num}"
    p = Path(path)
    suffix = p.suffix if p.suffix == ".zarr" else ""
    return str(p.with_name(f"{p.name[:len(p.name) - len(suffix)]}_{tag}{suffix}"))
