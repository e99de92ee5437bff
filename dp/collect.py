"""`dp-collect`: run a task's scripted expert and write a zarr demonstration store.

    dp-collect task=mw_push n_episodes=100 obs=state output=data/mw_push.zarr
    dp-collect task=mt10 n_episodes=50            # 50 per task, per-step data/task_id

Seeds: task k of a set draws env seeds ``seed + k * SEED_STRIDE + attempt``; every
attempted seed is recorded in the store's attributes (``seeds``) so evaluation can
avoid them (dp-eval starts at ``EVAL_SEED_BASE``). Writing is atomic: the store is
built under ``<output>.tmp-<pid>``, fsynced, and renamed into place only when complete;
the temp directory of a run killed outright (``kill -9``) is removed by the next run that
writes the same output.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import dp
from dp.constants import CONFIG_DIR, SEED_STRIDE
from dp.data.atomic import GracefulInterrupt, atomic_store
from dp.data.errors import DatasetError
from dp.data.replay_buffer import ReplayBuffer
from dp.data.validate import validate



def collect(cfg: DictConfig | dict) -> dict:
    """Collect demonstrations as ``cfg`` says; return the summary written to the store's attrs."""
    from dp import envs
    from dp.envs.rollout import run_expert_episode

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    _check_config(cfg)
    tasks = list(envs.task_set(cfg.task.env))
    env_options = OmegaConf.to_container(cfg.task.env_options, resolve=True) if cfg.task.get("env_options") else {}
    env_options["obs"] = cfg.obs
    expert_options = OmegaConf.to_container(cfg.task.expert_options, resolve=True) if cfg.task.get("expert_options") else {}
    if cfg.obs == "image" and cfg.get("image_size"):
        env_options["image_size"] = int(cfg.image_size)
    multi = len(tasks) > 1
    output = Path(cfg.output)
    attempts_cap = int(np.ceil(cfg.n_episodes * cfg.max_attempts_factor))
    summary = {
        "task": cfg.task.name,
        "tasks": tasks,
        "instructions": [envs.task_info(t)["instruction"] for t in tasks],
        "env_options": env_options,
        "expert_options": expert_options,
        "obs": cfg.obs,
        "keep_failed": bool(cfg.keep_failed),
        "seed": int(cfg.seed),
        "seed_stride": SEED_STRIDE,
        "dp_version": dp.__version__,
    }
    seeds, episode_seeds, episode_task, per_task, embodiments = [], [], [], {}, []
    t0 = time.perf_counter()
    with GracefulInterrupt() as interrupt, atomic_store(output, overwrite=cfg.overwrite) as tmp:
        buffer = ReplayBuffer.create(tmp)
        for task_id, task in enumerate(tasks):
            env = envs.make(task, **env_options)
            expert = envs.expert(task, **expert_options)
            embodiments.append(getattr(env.unwrapped, "embodiment", None))  # its unified-space map, if any
            kept = successes = attempts = 0
            bar = tqdm(total=cfg.n_episodes, desc=f"collect {task}", unit="ep", disable=not cfg.progress)
            while kept < cfg.n_episodes and attempts < attempts_cap:
                interrupt.check()  # Ctrl-C stops between episodes: the temp store is then removed whole
                seed = int(cfg.seed) + task_id * SEED_STRIDE + attempts
                attempts += 1
                seeds.append(seed)
                ep = run_expert_episode(env, expert, seed)
                successes += ep.success
                if not (ep.success or cfg.keep_failed):
                    continue
                episode = {"state": ep.obs["state"].astype(np.float32), "action": ep.action}
                for key in ("agent_pos", "joint_pos", "keypoint"):  # proprioception, and PushT's T corners
                    if key in ep.obs:
                        episode[key] = ep.obs[key].astype(np.float32)
                if "image" in ep.obs:
                    episode["img"] = ep.obs["image"].astype(np.uint8)
                for key in (k for k in ep.obs if k.endswith("_image")):  # extra cameras keep their names
                    episode[key] = ep.obs[key].astype(np.uint8)
                if multi:
                    episode["task_id"] = np.full(len(ep), task_id, dtype=np.int64)
                buffer.add_episode(episode)
                episode_seeds.append(seed)
                episode_task.append(task_id)
                kept += 1
                bar.update(1)
                bar.set_postfix(success=f"{successes / attempts:.0%}")
            bar.close()
            env.close()
            per_task[task] = {"attempts": attempts, "successes": successes, "kept": kept,
                              "success_rate": successes / max(attempts, 1)}
            if kept < cfg.n_episodes:
                raise DatasetError(
                    f"{task}: kept only {kept} of {cfg.n_episodes} episodes after {attempts} attempts "
                    f"(expert success {successes}/{attempts}). Raise max_attempts_factor or set keep_failed=true."
                )
        total_attempts = sum(v["attempts"] for v in per_task.values())
        summary.update(
            {
                "expert_success_rate": sum(v["successes"] for v in per_task.values()) / max(total_attempts, 1),
                "per_task": per_task,
                "seeds": seeds,
                "episode_seeds": episode_seeds,
                "episode_task": episode_task,
                "embodiment": embodiments[0] if len(set(embodiments)) == 1 else None,
                "episodes": buffer.n_episodes,
                "steps": buffer.n_steps,
                "collect_seconds": round(time.perf_counter() - t0, 2),
            }
        )
        buffer.attrs.update(summary)
        validate(buffer, required_keys=("state", "action"))
    return summary


def _check_config(cfg: DictConfig) -> None:
    problems = []
    if "task" not in cfg or "env" not in cfg.task:
        problems.append("task: missing; choose one, e.g. task=mw_push (dp/configs/task/*.yaml)")
    if not isinstance(cfg.get("n_episodes"), int) or cfg.n_episodes < 1:
        problems.append(f"n_episodes: expected an integer >= 1, found {cfg.get('n_episodes')!r}")
    if cfg.get("obs") not in ("state", "image"):
        problems.append(f"obs: expected 'state' or 'image', found {cfg.get('obs')!r}")
    if not cfg.get("output"):
        problems.append("output: expected a path such as data/mw_push.zarr")
    if float(cfg.get("max_attempts_factor", 0)) < 1:
        problems.append(f"max_attempts_factor: expected >= 1, found {cfg.get('max_attempts_factor')!r}")
    if problems:
        raise DatasetError("Bad dp-collect config:\n" + "\n".join(f"  - {p}" for p in problems))


@hydra.main(config_path=CONFIG_DIR, config_name="collect", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from dp.cli_errors import user_errors_exit
    from dp.sweep import job_output

    cfg.output = job_output(cfg.output)
    try:
        with user_errors_exit():
            summary = collect(cfg)
    except KeyboardInterrupt as e:
        print(f"stopped ({e}); nothing was written to {cfg.output}", file=sys.stderr)
        sys.exit(130)
    short = {k: summary[k] for k in ("task", "episodes", "steps", "expert_success_rate", "collect_seconds")}
    print(json.dumps(short))
    print(f"wrote {cfg.output}")


def main() -> None:
    from dp.overrides import replace_mappings_in_argv

    replace_mappings_in_argv()
    _hydra_main()


if __name__ == "__main__":
    main()
