"""The policy classes a config may name, and the one way a policy is built from a config.

A checkpoint's ``config.yaml`` is untrusted input (checkpoints are downloaded and shared),
so building a policy never goes through ``hydra.utils.instantiate``, which would call any
importable ``_target_`` (``torch.load``, ``numpy.load``, ``builtins.open``, ...). Instead:

- ``_target_`` must name a registered class (``POLICIES``; ``register_policy`` adds one);
- every other key must be a parameter of that class's constructor;
- every value must be plain data (None, bool, int, float, str, lists and str-keyed dicts of
  them), and no nested key may start with ``_`` (no nested ``_target_``, ``_partial_``, ...).

    policy = build_policy({"_target_": "dp.policies.dit.DiTPolicy", "shape_meta": {...}, "depth": 4})
    policy = load_policy("runs/mw_push")          # a checkpoint (dp.checkpoint), verified first
"""
from __future__ import annotations

import importlib
import inspect
import os

from dp.checkpoint import CheckpointError, load_config, load_tensors, resolve, verify
from dp.data.normalizer import Normalizer
from dp.errors import ConfigError

# dotted path (what configs carry as _target_) -> the module that defines it
POLICIES: dict[str, str] = {
    "dp.policies.dit.DiTPolicy": "dp.policies.dit",
    "dp.policies.mode.MoDEPolicy": "dp.policies.mode",
    "dp.policies.mlp_bc.MLPBCPolicy": "dp.policies.mlp_bc",
    "dp.policies.ddvla.DDVLAPolicy": "dp.policies.ddvla",
    "dp.policies.ddvla.ARTokensPolicy": "dp.policies.ddvla",
    "dp.policies.rdt.RDTPolicy": "dp.policies.rdt",
    "dp.policies.pad.PADPolicy": "dp.policies.pad",
    "dp.video.predictor.VideoPredictor": "dp.video.predictor",
}
PLAIN_SCALARS = (type(None), bool, int, float, str)


def register_policy(cls: type) -> type:
    """Allow configs (and checkpoints) to name ``cls``; usable as a class decorator."""
    POLICIES[f"{cls.__module__}.{cls.__qualname__}"] = cls.__module__
    return cls


def policy_class(target) -> type:
    if not isinstance(target, str) or target not in POLICIES:
        raise ConfigError(
            f"policy._target_ must name a registered dp policy class {sorted(POLICIES)}; found {target!r}. "
            "A config may not name any other callable (register your own class with "
            "dp.policies.registry.register_policy)."
        )
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(POLICIES[target]), name)


def policy_options(cls: type) -> list[str]:
    """Constructor parameters of ``cls``, following ``**kwargs`` up the class hierarchy."""
    options: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        options += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                    and p.name not in options]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return options


def check_plain_data(value, where: str) -> None:
    """Raise ConfigError unless ``value`` is plain data with no ``_``-prefixed keys."""
    if isinstance(value, PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain_data(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, found {k!r}.")
            if k.startswith("_"):
                raise ConfigError(f"{where}.{k}: a policy config is plain data; keys starting with '_' "
                                  f"(_target_, _partial_, ...) are refused.")
            check_plain_data(v, f"{where}.{k}")
        return
    raise ConfigError(f"{where}: expected plain data (number, string, list, dict), found {type(value).__name__}.")


def build_policy(config: dict, where: str = "policy"):
    """The policy ``config`` describes (``_target_`` plus constructor arguments), after checking it."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a mapping with _target_, found {type(config).__name__}.")
    cls = policy_class(config.get("_target_"))
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    options = policy_options(cls)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"{where}: {unknown} {'is not an option' if len(unknown) == 1 else 'are not options'} "
                          f"of {cls.__name__}; its options are {options}.")
    for k, v in kwargs.items():
        check_plain_data(v, f"{where}.{k}")
    return cls(**kwargs)


def load_policy(path: str | os.PathLike, ema: bool = True, device="cpu"):
    """Rebuild the policy from config.yaml and load (EMA) weights; normalizer included."""
    ckpt = resolve(path)
    verify(ckpt)
    cfg = load_config(ckpt)
    if not isinstance(cfg.get("policy"), dict):
        raise CheckpointError(f"{ckpt}/config.yaml has no policy section; it cannot rebuild the policy.")
    try:
        policy = build_policy(cfg["policy"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}/config.yaml refused: {e}") from None
    weights = ckpt / ("ema.safetensors" if ema and (ckpt / "ema.safetensors").exists() else "weights.safetensors")
    state = load_tensors(weights)
    policy.normalizer = Normalizer.from_state_dict(state, prefix="normalizer.")
    load_weights(policy, state, weights, "The weights and config.yaml come from different runs.")
    policy.checkpoint_path = str(ckpt)
    return policy.to(device).eval()


def load_weights(policy, state: dict, source, advice: str) -> None:
    """``policy.load_state_dict(state)``, strict, with a size or key mismatch raised as a
    ``CheckpointError`` that names the first differing tensors, ``source`` and ``advice``."""
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointError(f"{source} does not fit the policy: {'; '.join(lines[:3])}. {advice}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the policy: missing {missing[:5]}, unexpected {unexpected[:5]}. {advice}")
