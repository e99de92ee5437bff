"""The Policy interface every method implements (DESIGN.md, "Interfaces").

    loss = policy.compute_loss(batch)["loss"]        # batch from SequenceDataset, torch tensors
    actions = policy.predict_action(obs)              # obs [B, To, ...] -> [B, H, A] env units, inference mode
    action = policy.select_action(step_obs)           # ONE env step's obs [B, ...] -> [B, A]; keeps its own
                                                      # observation history and a queue of n_action_steps
    history = policy.new_history()                    # the same history for callers that predict themselves
    policy.reset()                                    # between episodes: history, queue, sampler state
    policy = Policy.from_checkpoint("runs/x/checkpoints/latest")

A policy is rebuilt from its config alone: ``policy.config`` holds the constructor
arguments (``_target_`` included) and is written to the checkpoint's config.yaml.
The Normalizer is a submodule, so normalization travels in the weights.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import torch
from torch import nn

from dp.constants import ENV_KEY_OF_STORE_KEY
from dp.data.normalizer import Normalizer
from dp.errors import ConfigError
from dp.runtime.history import ObservationHistory


class Policy(nn.Module):
    n_obs_steps: int
    n_action_steps: int
    horizon: int

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.normalizer = Normalizer()
        self._queue: collections.deque = collections.deque()
        self._history: ObservationHistory | None = None
        self.instructions: list[str] = []  # the dataset's, by task_id (language-conditioned policies)

    # -------------------------------------------------------------- required
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict_action(self, obs: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``compute_loss``; a forward() so DistributedDataParallel and torch.compile can wrap it."""
        return self.compute_loss(batch)

    # -------------------------------------------------------------- shared
    def reset(self) -> None:
        """Clear per-episode state (observation history, action queue; sampler state in subclasses)."""
        self._queue.clear()
        if self._history is not None:
            self._history.clear()

    def set_normalizer(self, normalizer: Normalizer) -> None:
        missing = [k for k in self.normalized_keys() if k not in normalizer]
        if missing:
            raise KeyError(f"Normalizer lacks keys {missing}; it has {normalizer.keys()}.")
        self.normalizer = normalizer.to(self.device)

    def normalized_keys(self) -> list[str]:
        """Keys the normalizer must know: the action and every low-dim obs key."""
        return ["action"]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_action_steps(self, n: int) -> None:
        """Execute ``n`` actions of each predicted chunk before predicting again (the receding horizon;
        training fixes only the chunk, so this is an inference-time choice). Recorded in ``config``."""
        most = self.horizon - self.n_obs_steps + 1
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= most):
            raise ConfigError(f"n_action_steps: expected an integer in [1, horizon - n_obs_steps + 1 = {most}], "
                              f"found {n!r}.")
        self.n_action_steps = n
        self.config["n_action_steps"] = n
        self.reset()

    def executed_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """The part of a predicted chunk that is executed: [B, H, A] -> [B, Ta, A].

        Windows start n_obs_steps-1 steps before the current step (diffusion_policy)."""
        start = self.n_obs_steps - 1
        return chunk[:, start : start + self.n_action_steps]

    def new_history(self, keys: list[str] | None = None, cameras: list[str] | None = None) -> ObservationHistory:
        """An empty observation history in this policy's layout (its obs keys, cameras, To, and the
        env keys each is made of: ``shape_meta["obs_keys"]``, the store keys it trained on). ``keys``
        and ``cameras`` default to the observation encoder's."""
        enc = self.obs_encoder
        store_keys = (self.config.get("shape_meta") or {}).get("obs_keys") or {}
        sources = {name: [ENV_KEY_OF_STORE_KEY.get(s, s) for s in ([keys] if isinstance(keys, str) else keys)]
                   for name, keys in store_keys.items()}
        return ObservationHistory(enc.keys if keys is None else keys,
                                  getattr(enc, "cameras", []) if cameras is None else cameras, self.n_obs_steps, sources)

    @property
    def needs_prediction(self) -> bool:
        """The next ``select_action`` predicts a chunk (its queue of executed actions is empty)."""
        return not self._queue

    @torch.inference_mode()
    def select_action(self, obs: dict) -> torch.Tensor:
        """One env step's observation {key: [B, ...]} (images HWC, plus ``instruction``) -> the
        next action [B, A]. Keeps the last To observations and predicts a new chunk when its
        queue of executed actions is empty."""
        if self._history is None:
            self._history = self.new_history()
        self._history.push(obs)
        if not self._queue:
            self._queue.extend(self.executed_actions(self.predict_action(self._history.batch())).unbind(1))
        return self._queue.popleft()

    def with_dataset_language(self, obs: dict, batch: dict) -> dict:
        """``obs`` of a dataset ``batch`` (training or validation) with what names each sample's instruction:
        the batch's ``task_id``, or a single-task store's only instruction. Rollouts pass ``obs["instruction"]``
        themselves, and a missing one is an error there."""
        if "instruction" not in obs:
            if "task_id" in batch:
                obs["task_id"] = batch["task_id"]
            elif len(self.instructions) == 1:
                obs["instruction"] = self.instructions * len(batch["action"])
        return obs

    def _instructions(self, obs: dict, b: int) -> list[str]:
        """``obs["instruction"]``, else the dataset's instruction of each sample's ``task_id`` (see
        ``with_dataset_language``); ``b`` is the batch size."""
        texts = obs.get("instruction")
        if texts is None and "task_id" in obs:
            texts = [self.instructions[i] for i in obs["task_id"].reshape(-1).tolist()]
        if texts is None:
            raise KeyError("this policy is conditioned on language: pass obs['instruction'], a list of B strings "
                           "(dp-eval does this from the env's instruction).")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) != b:
            raise ConfigError(f"obs['instruction'] holds {len(texts)} strings for a batch of {b}.")
        return texts

    def obs_to_device(self, obs: dict) -> dict:
        """Observations as tensors on the policy's device (numpy accepted)."""
        out = {}
        for k, v in obs.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(self.device)
            elif k == "instruction":
                out[k] = v
            else:
                out[k] = torch.as_tensor(v, device=self.device)
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu") -> "Policy":
        """Rebuild a policy from a checkpoint directory (see dp.checkpoint and dp.policies.registry)."""
        from dp.policies.registry import load_policy

        return load_policy(Path(path), ema=ema, device=device)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, ema: bool = True,
                        device: str | torch.device = "cpu", cache_dir: str | None = None) -> "Policy":
        """A policy from a local directory (a ``save_pretrained`` output, a checkpoint or a run) or from a
        Hugging Face Hub model repo ``owner/name`` (downloaded with huggingface_hub; only config.yaml,
        the safetensors, meta.json and README.md are fetched). Either way the files are checked against
        meta.json and a config that names code is refused, as for any checkpoint."""
        from dp.policies.registry import load_policy

        local = Path(path_or_repo_id)
        if not local.exists():
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(str(path_or_repo_id), revision=revision, cache_dir=cache_dir,
                                           allow_patterns=["config.yaml", "*.safetensors", "meta.json", "README.md"]))
        return load_policy(local, ema=ema, device=device)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """This policy's weights (normalizer included) and config, to share: ``from_pretrained`` loads it,
        ``huggingface-cli upload OWNER/NAME DIR`` publishes it. A policy loaded from a checkpoint keeps
        that checkpoint's whole config (task, dataset attributes), so dp-eval can roll it out."""
        from dp.checkpoint import load_config, save_pretrained

        source = getattr(self, "checkpoint_path", None)
        config = load_config(source) if source else {"policy": self.config}
        step = 0
        if source and (Path(source) / "meta.json").is_file():
            import json

            step = int(json.loads((Path(source) / "meta.json").read_text()).get("step", 0))
        return save_pretrained(save_directory, self, config, step)


def inpaint(x0: torch.Tensor, known) -> torch.Tensor:
    """x0 [B, H, A] with ``known`` = (positions, values [B, k, A]) written in (None: x0 as is)."""
    if known is None:
        return x0
    x0 = x0.clone()
    x0[:, known[0]] = known[1]
    return x0


def select_rows(obs: dict, rows) -> dict:
    """The observation dict of batch rows ``rows`` (a slice or index tensor); instructions too."""
    out = {k: v[rows] for k, v in obs.items() if k != "instruction"}
    if "instruction" in obs:
        texts = list(obs["instruction"])
        out["instruction"] = texts[rows] if isinstance(rows, slice) else [texts[i] for i in rows.tolist()]
    return out
