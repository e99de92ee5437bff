"""Policy quality over training seeds: collect, train and evaluate a task list, one table.

    dp-bench quality --tasks rs_can rs_square pusht pusht@image --seeds 0 1 2 [--policies dit mode]
                     [--episodes 50] [--set training.steps=3000 ...] [--eval-set n_action_steps=1 ...]
                     [--runs runs/quality] [--jobs 2]

Per task (``NAME`` or ``NAME@image`` for image observations):

- the store: ``<data>/<name>.zarr`` (``<name>_img.zarr`` for ``@image``; ``--data`` default
  data/quality, apart from hand-collected stores of other sizes; another expert variant,
  ``task.expert_options``, gets ``<name>_<hash>.zarr``), collected with ``dp-collect``
  from the scripted expert (``task.demos`` episodes, per task of a set) when it does not exist;
- per policy and training seed: ``dp-train`` with the task's recipe (``dp/recipes.py``) and
  ``--set`` overrides into ``<runs>/<task>_<policy>[_<hash of the settings>]_seed<S>``, where the settings are
  the recipe's keys that ``--set`` leaves to it and then ``--set`` itself (so a recipe value names the same
  runs as the A/B that set it with ``--set``; execution settings such as ``training.bf16`` name nothing, like
  ``--device``, so an interrupted run may resume under them; resumed when interrupted; a run
  is finished when it holds ``.done``), then ``dp-eval`` of its final checkpoint on
  ``--episodes`` initial states, the same for every seed and disjoint from the collection seeds
  (``dp.eval.rollout.eval_seeds``), with the task's ``eval_recipe`` and ``--eval-set`` (inference settings:
  they name the evaluation, ``eval_quality[_<hash>]``, and its record, not the run, so a finished run is
  evaluated again under them without training);
- a row: success per seed, their mean and sample standard deviation (PushT: also the mean final coverage
  of the target, and DP's score, the best clip(coverage / 0.95, 0, 1) of an episode, each averaged over
  episodes and seeds), training minutes per seed, steps, the machine.

Each finished seed leaves a record, ``bench/results/quality_runs/<run name>.json`` (its eval report, less
the per-call latencies and video paths, and its train summary), committed with the table: a row is rebuilt
from the records, so seeds run on different machines or days add up without their run directories, and a seed
with a record is not trained again (delete the record to redo it).

``--jobs N`` trains and evaluates N seeds at once, each in its own processes with the machine's cores shared out
(``OMP_NUM_THREADS``, unless set) and its output in ``<runs>/<run name>.log``: on a 2-core CPU two one-thread
runs make more steps per second together than one two-thread run, and one GPU holds several small runs.

A task set (mt50) also gets ``bench/results/quality_<set>_<policy>_per_task.md``, one row per task.
Rows accumulate in ``bench/results/quality.{json,md}`` keyed by (task, policy, settings):
run the harness task by task and the table keeps every row. The Diffusion Policy paper reports
the max over checkpoints and the mean of the last 10; this table evaluates the final
checkpoint only (stricter than the max).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dp.results import RESULTS_DIR, machine_info, write_result

_ABSENT = object()
# task-config keys that change what a run learns, beside its recipe's train-config keys: they name runs too
TASK_SETTINGS = ("obs_angles", "state_keys")  # and expert_options, named by its value (settings_of)
# how a run computes, not what it learns (as --device): they do not name runs, so a run resumes under them
EXECUTION_KEYS = ("training.bf16", "training.compile", "training.num_threads", "training.image_cache_mb")
# keys only an image policy reads: a state run ignores them, so they do not name it (one recipe serves both)
IMAGE_ONLY_KEYS = ("policy.image_encoder",)
_UNRECORDED = ("latency_histogram", "videos")  # report keys a run's record leaves out (bulky, or paths in the run)
COLUMNS = ["task", "policy", "seeds", "success_mean", "success_std", "per_seed", "coverage_mean", "score_mean",
           "train_min", "steps", "settings", "machine"]


def task_spec(spec: str) -> tuple[str, str]:
    """``rs_can`` -> (rs_can, state); ``pusht@image`` -> (pusht, image)."""
    name, _, obs = spec.partition("@")
    obs = obs or "state"
    if obs not in ("state", "image"):
        raise SystemExit(f"--tasks {spec}: the part after @ must be 'image' (or nothing for state), found {obs!r}")
    return name, obs


def _train_cfg(name: str, overrides: list[str] = ()):
    """dp-train's config for task ``name`` with the defaults and ``overrides`` (its recipe not applied)."""
    from hydra import compose, initialize_config_dir

    from dp.constants import CONFIG_DIR
    from dp.overrides import replace_mappings

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=replace_mappings([f"task={name}", *overrides]))


def _task_cfg(name: str):
    return _train_cfg(name).task


def _run(cmd: list[str], env: dict | None = None, log: Path | None = None) -> None:
    """Run ``cmd``; its output goes to ``log`` (appended) when given, else to this process's."""
    print("+", " ".join(cmd) + (f"  > {log}" if log else ""), flush=True)
    if log is None:
        done = subprocess.run(cmd, env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        where = f" (its output: {log})" if log else ""
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {done.returncode}){where}; rerun dp-bench quality "
                         "to resume.")


def job_env(jobs: int) -> dict[str, str]:
    """The environment of one of ``jobs`` runs at once: the machine's cores shared out through
    ``OMP_NUM_THREADS`` (at least 1 each), unless it is set already."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def _expert_settings(settings: list[str]) -> list[str]:
    """The settings that choose the scripted expert's variant (``task.expert_options=...``), if any."""
    return [item for item in settings if item.startswith("task.expert_options=")]


def _collect_expert(settings: list[str]) -> list[str]:
    """dp-collect's overrides for the expert that ``settings`` name: the task's options cleared first (a hydra
    override merges a mapping into the one there), then the named ones, if any (none: the stock expert)."""
    return ["task.expert_options=null", *_expert_settings(settings)]


def store_path(name: str, obs: str, data: Path, settings: list[str] = ()) -> Path:
    """``<data>/<name>[_img][_<hash of the expert options>].zarr``: demonstrations from another expert variant
    (``task.expert_options`` among the run's settings) go to their own store."""
    return data / f"{name}{'_img' if obs == 'image' else ''}{settings_tag(_expert_settings(settings))}.zarr"


def store_for(name: str, obs: str, data: Path, demos: int | None = None, settings: list[str] = ()) -> str:
    """The task's store under ``data`` (``store_path``), collected from the scripted expert when missing
    (``demos`` episodes per task, default the task config's ``demos``)."""
    path = store_path(name, obs, data, settings)
    if not path.exists():
        demos = demos or _task_cfg(name).demos
        _run([sys.executable, "-m", "dp.collect", f"task={name}", f"n_episodes={demos}", f"obs={obs}",
              f"output={path}", "progress=false", *_collect_expert(settings)])
    return str(path)


def settings_of(name: str, overrides: list[str], obs: str = "state") -> list[str]:
    """What makes a task's runs differ from the defaults, sorted: its recipe's keys that ``overrides``
    (``--set``) leaves to it, the task config's ``TASK_SETTINGS`` it sets, and ``overrides``, as
    ``key=value``, less any that only restates a default (``training.steps=5000``). A recipe or task value
    and the same ``--set`` give the same settings, so they name the same runs; the defaults, set or not,
    name the runs without a hash. The expert's options are named by their value once ``overrides`` apply
    (``task.expert_options={plan: two_switches}``, however the command line reached it), and the stock
    expert (none) by nothing, so its runs keep their names when a task adopts options. ``IMAGE_ONLY_KEYS``
    name only ``obs="image"`` runs."""
    if any(o.lstrip("+~").startswith("task.recipe") for o in overrides):
        return list(overrides)
    from omegaconf import OmegaConf

    from dp.recipes import given_keys, pending

    cfg = _train_cfg(name)
    recipe = cfg.task.get("recipe")
    tree = OmegaConf.to_container(recipe, resolve=True) if recipe else {}
    expert = lambda o: o.lstrip("+~").startswith("task.expert_options")  # noqa: E731
    settings = [f"{k}={v}" for k, v in pending(tree, overrides).items()] + [o for o in overrides if not expert(o)]
    given = given_keys(overrides)
    options = _train_cfg(name, overrides).task.get("expert_options") if any(map(expert, overrides)) else \
        cfg.task.get("expert_options")
    options = OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else options
    if options not in (None, {}):
        settings.append(f"task.expert_options={_flow(options)}")
    for key in TASK_SETTINGS:  # set in the task config itself (not its recipe), named as --set would name them
        value = cfg.task.get(key)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if value not in (None, {}) and f"task.{key}" not in given:
            settings.append(f"task.{key}={_flow(value)}")

    def restates_default(item: str) -> bool:
        key, _, value = item.partition("=")
        if key.startswith(("+", "~")):
            return False
        default = OmegaConf.select(cfg, key, default=_ABSENT)
        if default is _ABSENT or OmegaConf.is_config(default):
            return False
        return ("null" if default is None else str(default)) == value

    def inert(item: str) -> bool:  # how the run computes, or what only an image policy reads
        key = item.split("=", 1)[0].lstrip("+~")
        return key in EXECUTION_KEYS or (obs != "image" and any(
            key == k or key.startswith(k + ".") for k in IMAGE_ONLY_KEYS))

    return sorted(item for item in settings if not (inert(item) or restates_default(item)))


def eval_settings_of(name: str, eval_overrides: list[str]) -> list[str]:
    """The inference settings of a task's evaluations, sorted: its config's ``eval_recipe`` keys that
    ``eval_overrides`` (``--eval-set``) leaves to it, then ``eval_overrides``, as dp-eval ``key=value``."""
    from dp.recipes import eval_recipe

    given = {o.split("=", 1)[0] for o in eval_overrides}
    recipe = [f"{k}={_flow(v)}" for k, v in eval_recipe(_task_cfg(name)).items() if k not in given]
    return sorted(recipe + list(eval_overrides))


def _flow(value) -> str:
    """A config value as a command line writes it: {state: [4]}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def settings_tag(settings: list[str]) -> str:
    """Runs with other settings go to other directories: ``_<8 hex of their hash>``, none for the defaults."""
    if not settings:
        return ""
    return "_" + hashlib.sha256("\n".join(settings).encode()).hexdigest()[:8]


def run_name(name: str, obs: str, policy: str, settings: list[str], seed: int) -> str:
    """``<task>[_img]_<policy>[_<hash of the settings>]_seed<S>``: one run's directory under ``--runs``."""
    return f"{name}{'_img' if obs == 'image' else ''}_{policy}{settings_tag(settings)}_seed{seed}"


def run_dir(name: str, policy: str, seed: int, overrides: list[str], obs: str = "state",
            runs: str = "runs/quality") -> Path:
    """Where ``dp-bench quality --tasks NAME --policies POLICY --seeds SEED --set OVERRIDES`` puts its run
    (for scripts that evaluate it further)."""
    return Path(runs) / run_name(name, obs, policy, settings_of(name, overrides, obs), seed)


def record_path(run: str, eval_settings: list[str] = ()) -> Path:
    """``bench/results/quality_runs/<run>[_eval<hash of the eval settings>].json``: one seed's record."""
    eval_tag = settings_tag(list(eval_settings))
    return RESULTS_DIR / "quality_runs" / f"{run}{'_eval' + eval_tag if eval_tag else ''}.json"


def train_and_eval(name: str, obs: str, policy: str, seed: int, overrides: list[str], runs: Path,
                   episodes: int, data: Path, demos: int | None = None, device: str = "cpu",
                   settings: list[str] | None = None, eval_settings: list[str] = (), jobs: int = 1) -> dict:
    """One seed's run (trained and evaluated unless already done) -> its eval report and train summary.
    ``settings`` (default ``overrides``) name the run; dp-train applies the recipe itself. ``eval_settings``
    (dp-eval ``key=value``) name the evaluation and the record: ``eval_quality[_<hash>]``. ``jobs`` > 1: this
    is one of that many runs at once (``job_env``), its output in ``<runs>/<run>.log``."""
    run = run_name(name, obs, policy, overrides if settings is None else settings, seed)
    record = record_path(run, eval_settings)
    if record.exists():
        return json.loads(record.read_text())
    store = store_for(name, obs, data, demos, overrides if settings is None else settings)
    out = runs / run
    env, log = (job_env(jobs), runs / f"{run}.log") if jobs > 1 else (None, None)
    if not (out / ".done").exists():
        _run([sys.executable, "-m", "dp.train.cli", f"task={name}", f"task.obs={obs}", f"task.dataset_path={store}",
              f"policy={policy}", f"seed={seed}", f"output_dir={out}", f"device={device}", "resume=true",
              "progress=false", *overrides], env, log)
        (out / ".done").touch()
    report = out / f"eval_quality{settings_tag(list(eval_settings))}" / "report.json"
    if not report.exists():
        _run([sys.executable, "-m", "dp.eval.cli", f"checkpoint={out}", f"n_episodes={episodes}",
              f"output_dir={report.parent}", f"device={device}", "progress=false", *eval_settings], env, log)
    result = {"report": {k: v for k, v in json.loads(report.read_text()).items() if k not in _UNRECORDED},
              "train": json.loads((out / "train_summary.json").read_text()), "run": str(out),
              "machine": machine_label(device)}
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(record)
    return result


def machine_label(device: str) -> str:
    """``AMD EPYC (2 cores)``, with the accelerator when not on the CPU."""
    m = machine_info(device)
    return f"{m['cpu']} ({m['cpu_count']} cores)" + (f", {m['device']}" if device != "cpu" else "")


def quality_row(name: str, obs: str, policy: str, settings: list[str], seeds: list[int],
                runs_out: list[dict], eval_settings: list[str] = ()) -> dict:
    """One table row from each seed's record: eval report, train summary and machine. The settings column
    names the run's settings, then ``; eval:`` and the evaluation's, if any."""
    machine = "; ".join(dict.fromkeys(r["machine"] for r in runs_out))
    success = [r["report"]["success_rate"] for r in runs_out]
    row = {"task": name if obs == "state" else f"{name}@image", "policy": policy, "seeds": len(seeds),
           "success_mean": float(np.mean(success)), "success_std": float(np.std(success, ddof=1)) if len(success) > 1
           else 0.0, "per_seed": " / ".join(f"{s:.0%}" for s in success),
           "train_min": float(np.mean([r["train"].get("total_seconds", r["train"]["seconds"]) for r in runs_out]) / 60),
           "steps": runs_out[0]["train"]["steps"], "machine": machine,
           "settings": "; ".join(filter(None, [" ".join(settings),
                                                 "eval: " + " ".join(eval_settings) if eval_settings else ""])),
           "episodes_per_seed": runs_out[0]["report"]["episodes"], "seed_list": seeds}
    for figure in ("coverage", "score"):  # final-info means an env reports (PushT's), where every seed has them
        values = [t.get(f"mean_{figure}") for r in runs_out for t in r["report"]["per_task"].values()]
        if values and all(v is not None for v in values):
            row[f"{figure}_mean"] = float(np.mean(values))
    return row


def per_task_rows(runs_out: list[dict]) -> list[dict]:
    """For a multi-task set: one row per task, its success per seed and their mean."""
    tasks = list(runs_out[0]["report"]["per_task"])
    rows = []
    for task in tasks:
        rates = [r["report"]["per_task"][task]["success_rate"] for r in runs_out]
        rows.append({"task": task, "success_mean": float(np.mean(rates)),
                     "per_seed": " / ".join(f"{x:.0%}" for x in rates)})
    return rows


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Old rows with the same (task, policy, settings) as a new one are replaced; order kept."""
    key = lambda r: (r["task"], r["policy"], r.get("settings", r.get("overrides", "")))  # noqa: E731
    fresh = {key(r): r for r in new}
    kept = [fresh.pop(key(r), r) for r in old]
    return kept + list(fresh.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dp-bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]: where every run trains and evaluates")
    parser.add_argument("--tasks", nargs="+", required=True, help="task names; NAME@image for image observations")
    parser.add_argument("--policies", nargs="+", default=["dit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per seed (per task of a set)")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="dp-train overrides for every run (they win over the task's recipe)")
    parser.add_argument("--eval-set", nargs="*", default=[], dest="eval_overrides", metavar="KEY=VALUE",
                        help="dp-eval overrides for every evaluation (they win over the task's eval_recipe), "
                             "e.g. n_action_steps=1")
    parser.add_argument("--runs", default="runs/quality", help="where the runs go")
    parser.add_argument("--data", default="data/quality", help="where the collected stores go")
    parser.add_argument("--demos", type=int, default=None,
                        help="demonstrations to collect per task (default: the task config's demos)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained and evaluated at once, each with cores / jobs threads "
                             "(OMP_NUM_THREADS, unless set) and its output in <runs>/<run name>.log")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    device = args.device
    specs = [task_spec(t) for t in args.tasks]
    overrides = list(args.overrides)
    for name, obs in specs:
        settings, eval_settings = settings_of(name, overrides, obs), eval_settings_of(name, list(args.eval_overrides))
        for policy in args.policies:
            jobs = args.jobs if len(args.seeds) > 1 else 1

            def one_seed(seed: int) -> dict:
                return train_and_eval(name, obs, policy, seed, overrides, Path(args.runs), args.episodes,
                                      Path(args.data), args.demos, device, settings, eval_settings, jobs)

            if jobs > 1:
                if not all(record_path(run_name(name, obs, policy, settings, s), eval_settings).exists()
                           for s in args.seeds):
                    store_for(name, obs, Path(args.data), args.demos, settings)  # once, before the seeds share it
                with ThreadPoolExecutor(jobs) as pool:
                    outs = list(pool.map(one_seed, args.seeds))
            else:
                outs = [one_seed(s) for s in args.seeds]
            row = quality_row(name, obs, policy, settings, args.seeds, outs, eval_settings)
            if len(outs[0]["report"]["per_task"]) > 1:  # a task set: its per-task table beside the row
                tag = settings_tag(settings) + settings_tag(eval_settings)
                write_result(f"quality_{name}_{policy}{tag}_per_task", per_task_rows(outs),
                             ["task", "success_mean", "per_seed"], {"row": row}, device=device)
            path = RESULTS_DIR / "quality.json"  # written row by row: a long task list keeps what it finished
            old = json.loads(path.read_text())["rows"] if path.exists() else []
            for r in old:  # rows written before the column was named settings
                if "overrides" in r:
                    r["settings"] = r.pop("overrides")
            write_result("quality", merge_rows(old, [row]), COLUMNS, device=device)
    print((RESULTS_DIR / "quality.md").read_text())
