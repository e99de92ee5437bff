"""Checks of a dp-train config that run before anything is loaded: every bad value is named
with what was expected and what was found, all of them in one error."""
from __future__ import annotations

from dp.errors import ConfigError


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key -> (test, what is expected)
TRAINING = {
    "steps": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "warmup_steps": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "grad_clip": (lambda v: v is None or (_num(v) and v >= 0), "a number >= 0 (0: off)"),
    "val_ratio": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "log_every": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "val_every": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: off)"),
    "checkpoint_every": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: only at the end)"),
    "keep_checkpoints": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "num_threads": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 or null"),
    "normalizer": (lambda v: v in ("limits", "gaussian"), "'limits' or 'gaussian'"),
    "image_cache_mb": (lambda v: v is None or v == "auto" or (_num(v) and v > 0), "'auto', a number of MB > 0 or null"),
}
EVAL = {
    "every": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: off)"),
    "n_episodes_periodic": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "n_envs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
}
LOGGING_MODES = ("online", "offline", "disabled")


def check_train_config(cfg) -> None:
    """Raise ConfigError listing every out-of-range value of a dp-train config."""
    problems = []
    for section, rules in (("training", TRAINING), ("eval", EVAL)):
        values = cfg.get(section) or {}
        for key, (ok, expected) in rules.items():
            if key in values and not ok(values[key]):
                problems.append(f"{section}.{key}: expected {expected}, found {values[key]!r}")
    mode = (cfg.get("logging") or {}).get("mode")
    if mode not in LOGGING_MODES:
        problems.append(f"logging.mode: expected one of {list(LOGGING_MODES)}, found {mode!r}")
    if problems:
        raise ConfigError("bad dp-train config: " + "; ".join(problems) + ".")
