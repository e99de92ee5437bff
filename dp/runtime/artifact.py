"""Load and run a policy written by ``dp-export``: torch and numpy only, no dp training code.

    policy = ExportedPolicy("runs/mw_push/export")          # a directory holding policy.json
    history = policy.new_history(); history.push_one(robot.observe())
    chunk = policy.predict_action(history.batch())          # [B, H, A] env units
    actions = policy.executed_actions(chunk)                # [B, n_action_steps, A]

The artifact is an AOTInductor package (``policy.pt2``): the whole prediction (normalization,
observation encoding, every sampler step, unnormalization) compiled to native code for one batch
size and one sampler, with the weights inside. A streaming policy has a second package for an
episode's first call (``first.pt2``); its buffer passes from call to call here, and ``reset()``
empties it. It is native code, so it is trusted like a
binary you built: load only artifacts you exported yourself. ``policy.json`` records what the
package takes and returns and each file's sha256, which is checked here (integrity, not trust).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from dp.errors import ConfigError
from dp.runtime.fallback import with_fallback
from dp.runtime.history import ObservationHistory

FORMAT = "dp-artifact"
VERSION = 1
META = "policy.json"
PACKAGE = "policy.pt2"
FIRST_PACKAGE = "first.pt2"  # streaming: an episode's first call (from noise alone; policy.pt2 takes the buffer)
FALLBACK_PACKAGE = "fallback.pt2"  # truncated: the full sample for rows whose best anchor scored low


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(path: str | Path) -> dict:
    """policy.json of an artifact directory, checked: the format, this loader's version, every file's
    size and sha256. Raises ConfigError saying what is wrong and what to do."""
    root = Path(path)
    meta_path = root / META
    if not meta_path.is_file():
        raise ConfigError(f"{root} is not a dp-export artifact: it has no {META}. Write one with "
                          f"`dp-export checkpoint=RUN output={root}`.")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{meta_path} is not valid JSON ({e}); export the artifact again.") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError(f"{meta_path}: expected format {FORMAT!r} version {VERSION}, found "
                          f"{meta.get('format')!r} version {meta.get('version')!r}; export it again with this dp.")
    for name, want in meta.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise ConfigError(f"artifact {root} lacks {name} (listed in {META}); export it again.")
        if f.stat().st_size != want["size"] or sha256(f) != want["sha256"]:
            raise ConfigError(f"artifact file {f} does not match {META} (size or sha256): it was changed or "
                              f"truncated after export; export it again.")
    return meta


class ExportedPolicy:
    """The control loop's policy interface over an artifact (``predict_action``, ``executed_actions``,
    ``new_history``, ``reset``). ``seed``: the generator of the sampler's starting noise."""

    def __init__(self, path: str | Path, seed: int | None = None):
        self.path = Path(path)
        self.meta = meta = read_meta(self.path)
        built = meta["torch"]
        if built != torch.__version__:
            raise ConfigError(f"artifact {self.path} was compiled with torch {built}; this is torch "
                              f"{torch.__version__}. AOTInductor packages run only on the torch that built "
                              f"them: export it again here.")
        self.device = torch.device(meta["device"])
        self._run = torch._inductor.aoti_load_package(str(self.path / PACKAGE))
        state = meta.get("state")  # streaming: the buffer carried from call to call
        self._first = torch._inductor.aoti_load_package(str(self.path / state["first_package"])) if state else None
        self.fallback = meta.get("fallback")  # truncated: the full sample's program, run for rows that need it
        self._fallback = torch._inductor.aoti_load_package(str(self.path / self.fallback["package"])) \
            if self.fallback else None
        self.fallbacks = 0  # rows sampled in full since loading
        self._state: torch.Tensor | None = None
        self.inputs = meta["inputs"]  # [{key, shape, dtype}], in the package's argument order
        self.n_obs_steps, self.n_action_steps = meta["n_obs_steps"], meta["n_action_steps"]
        self.horizon, self.action_dim = meta["horizon"], meta["action_dim"]
        self.config = {"sampler": meta["sampler"]}
        self.sampler = SimpleNamespace(**meta["sampler"])  # what was compiled in (read by the loop's mode check)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self._episode_noise: torch.Tensor | None = None

    def reset(self) -> None:
        """A new episode: fresh noise (``initial_noise: episode``) and, for streaming, an empty buffer."""
        self._episode_noise = None
        self._state = None

    def new_history(self) -> ObservationHistory:
        h = self.meta["history"]
        return ObservationHistory(h["keys"], h["cameras"], self.n_obs_steps, h["sources"])

    def executed_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """[B, H, A] -> the executed part [B, n_action_steps, A] (from step n_obs_steps - 1)."""
        start = self.meta["executed_start"]
        return chunk[:, start:start + self.n_action_steps]

    def _draw(self, noise: dict) -> torch.Tensor:
        return noise["scale"] * torch.randn(noise["shape"], generator=self.generator, device=self.device)

    def _noise(self) -> torch.Tensor:
        noise = self.meta["noise"]
        if self.fallback:  # anchors' noise: fresh every call, as the eager sampler draws it
            return self._draw(noise)
        if self.meta["initial_noise"] == "episode" and self._episode_noise is not None:
            return self._episode_noise.clone()
        x = self._draw(noise)
        if self.meta["initial_noise"] == "episode":
            self._episode_noise = x
        return x.clone()

    def predict_action(self, obs: dict) -> torch.Tensor:
        """obs {key: [B, To, ...]} as ``new_history().batch()`` gives it -> actions [B, H, A] (env units)."""
        args = []
        for spec in self.inputs:
            key = spec["key"]
            if key not in obs:
                raise ConfigError(f"the observation lacks {key!r}: this artifact takes {[s['key'] for s in self.inputs]}, "
                                  f"got {sorted(obs)}.")
            x = torch.as_tensor(obs[key])
            if list(x.shape) != spec["shape"]:
                raise ConfigError(f"observation {key!r}: this artifact was exported for shape {spec['shape']} "
                                  f"(batch, steps, ...), got {list(x.shape)}; export it for this batch size.")
            args.append(x.to(self.device, getattr(torch, spec["dtype"])).contiguous())
        if self._fallback is not None:
            actions, score = self._run(*args, self._noise())
            actions, n = with_fallback(actions, score, self.fallback["score"],
                                       lambda: self._fallback(*args, self._draw(self.fallback["noise"])))
            self.fallbacks += n
            return actions
        if self._first is None:
            return self._run(*args, self._noise())
        if self._state is None:
            actions, self._state = self._first(*args, self._noise())
        else:
            actions, self._state = self._run(*args, self._state, self._noise())
        return actions
