"""Name -> task family. Each family module exposes:

    NAMES: list[str]                       single-task names it owns
    make(name, **options) -> gym.Env
    expert(name, **options) -> Expert      (or EXPERTS: the module that has it, e.g. robosuite's)
    instruction(name) -> str
    SETS: dict[str, list[str]]             (optional) multi-task sets, e.g. mt10

Family modules are imported lazily so that using `toy` never imports MuJoCo.
"""
from __future__ import annotations

import difflib
import importlib
from functools import cache

from dp.envs.base import perturbed
from dp.envs.errors import UnknownTaskError

FAMILIES = {
    "toy": "dp.envs.toy",
    "mw": "dp.envs.metaworld_tasks",
    "rs": "dp.envs.robosuite_tasks",
    "pusht": "dp.envs.pusht",
}
# Multi-task sets and the family that defines them (in its SETS dict).
SET_FAMILIES = {"mt10": "mw", "mt50": "mw", "mw3": "mw"}


def _family_of(name: str) -> str:
    if name in FAMILIES:
        return FAMILIES[name]
    prefix = name.split("_", 1)[0]
    if prefix in FAMILIES and prefix != name:
        return FAMILIES[prefix]
    raise UnknownTaskError(_unknown(name))


def _module(name: str):
    return importlib.import_module(_family_of(name))


@cache
def task_names() -> tuple[str, ...]:
    names: list[str] = []
    for mod in FAMILIES.values():
        names.extend(importlib.import_module(mod).NAMES)
    return tuple(names)


@cache
def task_sets() -> dict[str, tuple[str, ...]]:
    return {name: tuple(importlib.import_module(FAMILIES[fam]).SETS[name]) for name, fam in SET_FAMILIES.items()}


def _unknown(name: str) -> str:
    try:
        known = list(task_names()) + list(task_sets())
    except Exception:  # a family failing to import must not hide the real message
        known = list(FAMILIES)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown task {name!r}.{hint} Known tasks: see dp.envs.task_names() and dp.envs.task_sets()."


def _check_single(name: str):
    if name in SET_FAMILIES:
        raise UnknownTaskError(
            f"{name!r} is a multi-task set ({len(task_sets()[name])} tasks); "
            f"make one of its tasks, e.g. dp.envs.make({task_sets()[name][0]!r})."
        )
    mod = _module(name)
    if name not in mod.NAMES:
        raise UnknownTaskError(_unknown(name))
    return mod


def make(name: str, **options):
    """Build the gymnasium env for one task (see the package docstring for conventions)."""
    return _check_single(name).make(name, **options)


def expert(name: str, **options):
    """The scripted expert for one task: an object with reset() and act(obs). ``options`` (a task config's
    ``expert_options``) choose among an expert's variants, e.g. rs_square's ``plan``; ``action_noise``
    (every task) makes it a DART demonstrator (``dp.envs.base.PerturbedExpert``)."""
    options = dict(options)
    action_noise = options.pop("action_noise", 0.0)
    family = _check_single(name)
    experts = importlib.import_module(family.EXPERTS) if hasattr(family, "EXPERTS") else family
    return perturbed(experts.expert(name, **options), action_noise)


def task_set(name: str) -> tuple[str, ...]:
    """Single-task names of a set (``mt10``, ``mt50``); a single task is a set of one."""
    if name in SET_FAMILIES:
        return task_sets()[name]
    _check_single(name)
    return (name,)


def task_info(name: str) -> dict:
    """Plain description of a task: family, instruction."""
    mod = _check_single(name)
    return {"name": name, "family": _family_of(name), "instruction": mod.instruction(name)}
