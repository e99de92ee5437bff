"""Evaluate a checkpoint in its task: success with Wilson 95% CI, lengths, latency, videos, report."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dp.errors import ConfigError
from dp.eval.plots import latency_histogram
from dp.eval.env_batch import VECTOR_MODES
from dp.eval.rollout import eval_seeds, run_episodes, summarize
from dp.checkpoint import checkpoint_rollouts, load_config, resolve
from dp.policies.registry import load_policy
from dp.recipes import eval_recipe


def evaluate_checkpoint(checkpoint: str, n_episodes: int = 50, output_dir: str | None = None, n_envs: int = 10,
                        n_videos: int = 4, ema: bool = True, device: str = "cpu", seed: int = 0,
                        sampler: dict | None = None, max_steps: int | None = None, progress: bool = True,
                        vector: str = "sync", n_action_steps: int | None = None,
                        initial_noise: str | None = None) -> dict:
    for name, value in (("n_episodes", n_episodes), ("n_envs", n_envs), ("n_videos", n_videos)):
        least = 0 if name == "n_videos" else 1
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ConfigError(f"{name}: expected an integer >= {least}, found {value!r}.")
    if vector not in VECTOR_MODES:
        raise ConfigError(f"vector: expected one of {list(VECTOR_MODES)}, found {vector!r}.")
    ckpt = resolve(checkpoint)
    cfg = load_config(ckpt)
    defaults = eval_recipe(cfg.get("task"))  # the task's eval_recipe when it trained: the command line wins
    sampler = sampler or defaults.get("sampler")
    n_action_steps = defaults.get("n_action_steps") if n_action_steps is None else n_action_steps
    initial_noise = defaults.get("initial_noise") if initial_noise is None else initial_noise
    out = Path(output_dir) if output_dir else ckpt.parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    policy = load_policy(ckpt, ema=ema, device=device)
    if sampler:
        policy.set_sampler(**sampler)  # name, steps and any sampler options
    if n_action_steps is not None:
        policy.set_action_steps(n_action_steps)
    if initial_noise is not None:
        if not hasattr(policy, "set_initial_noise"):
            raise ConfigError(f"initial_noise: {type(policy).__name__} does not sample from noise; leave initial_noise "
                              "unset for it.")
        policy.set_initial_noise(initial_noise)
    policy.generator = torch.Generator(device=device).manual_seed(seed)
    seeds = eval_seeds(n_episodes)
    if min(seeds) <= int(cfg.get("collection_seeds_max", -1)):
        raise ConfigError("evaluation seeds overlap the collection seeds; raise dp.constants.EVAL_SEED_BASE")
    results = []
    for r in checkpoint_rollouts(cfg):  # a mixture checkpoint: every source's robot, reported per robot
        actor = policy.driver(r["embodiment"]) if r["embodiment"] else policy
        result = run_episodes(actor, r["task"], seeds, r["env_options"], n_envs=n_envs, max_steps=max_steps,
                              n_videos=n_videos, video_dir=out / "videos" / r["label"] if r["embodiment"] else
                              out / "videos", progress=progress, vector=vector)
        results.append({**result, "task": r["label"]})
    summary = summarize(results)
    per_task = [v["success_rate"] for v in summary["per_task"].values()]
    summary.update({
        "mean_task_success": sum(per_task) / len(per_task),  # equals success_rate when tasks have equal episodes
        "checkpoint": str(ckpt),
        "task": cfg["task"]["name"],
        "policy": cfg["policy"]["_target_"].rsplit(".", 1)[-1],
        "sampler": policy.config.get("sampler"),
        "n_action_steps": policy.n_action_steps,
        "initial_noise": getattr(policy, "initial_noise", None),
        "seeds": [seeds[0], seeds[-1]],
        "videos": [v for r in results for v in r["videos"]],
    })
    sampler = getattr(policy, "sampler", None)  # none for a policy that does not denoise (mlp_bc)
    if getattr(sampler, "rows", 0):  # truncated sampling: how often rows fell back to full sampling
        summary["fallback_rate"] = sampler.fallbacks / sampler.rows
    lat = [x * 1000 for r in results for x in r["latency_s"]]
    summary["latency_histogram"] = str(latency_histogram(lat, out / "latency.png",
                                                         f"predict_action latency (batch {n_envs})"))
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report_markdown(summary))
    summary["report"] = str(out / "report.md")
    return summary


def report_markdown(s: dict) -> str:
    lo, hi = s["wilson95"]
    lines = [
        f"# Evaluation: {s['policy']} on {s['task']}",
        "",
        f"- checkpoint: `{s['checkpoint']}`",
        f"- sampler: {s['sampler']}; actions executed per chunk: {s.get('n_action_steps')}; "
        f"initial noise: {s.get('initial_noise')}",
        f"- success: **{s['success_rate']:.1%}** over {s['episodes']} episodes (Wilson 95% CI {lo:.1%}-{hi:.1%})",
        f"- episodes ended by a non-finite (NaN/inf) prediction: {s['nonfinite_episodes']}",
        f"- predict_action latency (batch {s['latency_ms']['batch']}): median {s['latency_ms']['median']:.1f} ms, "
        f"p99 {s['latency_ms']['p99']:.1f} ms over {s['latency_ms']['calls']} calls",
        f"- mean of the per-task success rates: {s['mean_task_success']:.1%} over {len(s['per_task'])} task(s)",
        f"- evaluation seeds {s['seeds'][0]}..{s['seeds'][1]} (disjoint from collection seeds)",
        "",
        "| task | success | episodes | Wilson 95% | mean length |",
        "|---|---|---|---|---|",
    ]
    for task, v in s["per_task"].items():
        lines.append(f"| {task} | {v['success_rate']:.1%} | {v['episodes']} | "
                     f"{v['wilson95'][0]:.1%}-{v['wilson95'][1]:.1%} | {v['mean_length']:.0f} |")
    means = {t: {k.removeprefix("mean_"): x for k, x in v.items() if k.startswith("mean_") and k != "mean_length"}
             for t, v in s["per_task"].items()}
    if any(means.values()):
        lines += ["", "Mean over episodes of what the env reports at an episode's end (e.g. PushT's score: DP's "
                  "coverage figure):"]
        lines += [f"- {t}: " + ", ".join(f"{k} {x:.3f}" for k, x in m.items()) for t, m in means.items() if m]
    if s.get("videos"):
        lines += ["", "Videos:"] + [f"- `{v}`" for v in s["videos"]]
    return "\n".join(lines) + "\n"
