"""A task's tuned recipe: the settings dp-train uses for that task unless the command line sets them.

diffusion_policy keeps a tuned setup per task (horizon, observation history, action steps,
epochs) in that task's config. dp does the same in ``task.recipe`` (written by
scripts/gen_task_configs.py from its ``RECIPES``), as nested keys of the train config::

    recipe:
      policy: {n_action_steps: 8}
      training: {steps: 20000}

``dp-train task=rs_square`` applies them over the policy's and the trainer's defaults; a key given
on the command line (``training.steps=3000``) wins, and choosing a config group (``policy=mode``)
keeps the recipe. What was applied is printed and lands in the run's config.yaml, so a
checkpoint records how it was trained. Every value in a recipe comes with the A/B that justified
it (a comment beside it and CHANGELOG.md).

``task.eval_recipe`` does the same for dp-eval: the inference settings (``EVAL_KEYS``) that roll a
task's checkpoints out unless the dp-eval command line sets them, e.g. ``{n_action_steps: 1}`` where
executing fewer actions of each chunk than training padded for wins. They change no weights, so
``dp-bench quality`` reads them from the task config as it stands and evaluates runs trained before them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dp.constants import CONFIG_DIR
from dp.errors import ConfigError

_ABSENT = object()  # OmegaConf.select's default: tells a missing key from one set to null
EVAL_KEYS = ("n_action_steps", "initial_noise", "sampler")  # dp-eval keys an eval_recipe may set


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"policy": {"horizon": 16}} -> {"policy.horizon": 16}; a list or scalar is a leaf."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def given_keys(overrides: list[str]) -> set[str]:
    """Keys a command line sets or deletes (``a.b=1``, ``+a.b=1``, ``~a.b``), leaving out config-group
    choices (``policy=mode``: a directory of dp/configs), which keep the recipe."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o or o.startswith("~")}
    return {k for k in keys if not (Path(CONFIG_DIR) / k.replace(".", "/")).is_dir()}


def pending(recipe: dict, overrides: list[str]) -> dict[str, Any]:
    """The recipe's keys (dotted) that the command line ``overrides`` leaves to it: those it sets
    neither itself nor through a parent key."""
    given = given_keys(overrides)
    out = {}
    for key, value in flatten(recipe).items():
        parts = key.split(".")
        if not any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1)):
            out[key] = value
    return out


def apply_recipe(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Set ``cfg.task.recipe``'s keys on ``cfg`` except those ``overrides`` (the command line's
    ``key=value`` list) sets, or sets a parent of. Returns what was applied (dotted key -> value).
    A bad ``eval_recipe`` stops here too, before training, not at the first evaluation."""
    eval_recipe(cfg.task)
    recipe = cfg.task.get("recipe")
    if not recipe:
        return {}
    tree = OmegaConf.to_container(recipe, resolve=True)
    if not isinstance(tree, dict):
        raise ConfigError(f"task {cfg.task.name}: recipe must be a mapping of train-config keys, e.g. "
                          f"{{training: {{steps: 20000}}}}; found {tree!r}.")
    applied, skipped = {}, []
    for key, value in pending(tree, overrides).items():
        if _policy_lacks(cfg, key):
            skipped.append(key)
            continue
        if key.split(".")[0] == "task" or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"task {cfg.task.name}'s recipe sets {key!r}, which the train config does not have "
                              f"(or a task key, which belongs in the task itself): fix the recipe in "
                              f"scripts/gen_task_configs.py and regenerate the task configs.")
        OmegaConf.update(cfg, key, value, merge=False)
        applied[key] = value
    if applied:
        print(f"task {cfg.task.name}'s recipe: " + ", ".join(f"{k}={v}" for k, v in applied.items()), file=sys.stderr)
    if skipped:
        print(f"task {cfg.task.name}'s recipe: left out {', '.join(skipped)} (policy {cfg.policy.get('name')} has "
              "no such key)", file=sys.stderr)
    return applied


def _policy_lacks(cfg: DictConfig, key: str) -> bool:
    """A ``policy.*`` recipe key the chosen policy lacks but the baseline dit policy has (pusht's
    ``policy.image_encoder`` under ``policy=pad``): it tunes a part that policy does not have, so it is
    left out. A key no baseline has is a typo, refused by the caller."""
    if not key.startswith("policy.") or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
        return False
    baseline = OmegaConf.load(Path(CONFIG_DIR) / "policy" / "dit.yaml")
    return OmegaConf.select(baseline, key.removeprefix("policy."), default=_ABSENT) is not _ABSENT


def eval_recipe(task: Any) -> dict[str, Any]:
    """A task config's (or a checkpoint's config.yaml ``task`` mapping's) ``eval_recipe`` as a plain dict,
    ``{}`` when it has none; keys outside ``EVAL_KEYS`` are refused."""
    recipe = task.get("eval_recipe") if task is not None else None
    if OmegaConf.is_config(recipe):
        recipe = OmegaConf.to_container(recipe, resolve=True)
    if not recipe:
        return {}
    name = task.get("name", "?")
    if not isinstance(recipe, dict):
        raise ConfigError(f"task {name}: eval_recipe must be a mapping of dp-eval keys, e.g. {{n_action_steps: 1}}; "
                          f"found {recipe!r}.")
    unknown = sorted(set(recipe) - set(EVAL_KEYS))
    if unknown:
        raise ConfigError(f"task {name}: eval_recipe sets {unknown}, which are not inference settings; it may set "
                          f"{list(EVAL_KEYS)}. Fix it in scripts/gen_task_configs.py and regenerate the task configs.")
    return recipe
