"""Command-line overrides that set a task's option mapping replace it, as an assignment reads.

    dp-collect task=rs_square 'task.expert_options={plan: two_switches}'   # the options are {plan: ...}

Hydra merges ``key={...}`` into the mapping already there, and a key that mapping lacks fails with
"Could not override ... Key 'plan' is not in struct" (the ``+key=`` it suggests fails too). So before
hydra reads the command line, every ``KEY={...}`` of a key below gets ``KEY=null`` in front of it: the
mapping is cleared, then set. A dotted override (``task.expert_options.action_noise=0.1``) still
changes one entry and keeps the others.
"""
from __future__ import annotations

import sys

# the task config's mappings of options (dp/configs/task/*.yaml, written by scripts/gen_task_configs.py)
REPLACED_MAPPINGS = ("task.env_options", "task.expert_options", "task.obs_keys", "task.obs_angles", "task.recipe",
                     "task.eval_recipe")


def replace_mappings(overrides: list[str]) -> list[str]:
    """``overrides`` with ``KEY=null`` before each ``KEY={...}`` of a ``REPLACED_MAPPINGS`` key."""
    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and key in REPLACED_MAPPINGS and value.lstrip().startswith("{"):
            out.append(f"{key}=null")
        out.append(item)
    return out


def replace_mappings_in_argv() -> None:
    """``replace_mappings`` on this process's command line (a hydra entry point calls it first)."""
    sys.argv[1:] = replace_mappings(sys.argv[1:])
