"""`policy=rdt`: the Robotics Diffusion Transformer (RDT-1B, thu-ml/RoboticsDiffusionTransformer)
on dp's core, trained on a mixture of robots in the unified space (dp/data/unified.py, mixture.py).

Denoised sequence: ``[level, control frequency, state (per obs step), action chunk (H)]``, the
state and each action step a linear map of its 128 unified values *and* the 128-slot validity
mask (the mask is an input feature). Blocks (``DiT(level_cond="token", norm="rms", qk_norm=True,
cond_mode="alternating")``): RMSNorm -> self-attention with QK-norm -> RMSNorm -> cross-attention
with QK-norm -> RMSNorm -> MLP; no adaLN, the level reaches the tokens through its token.
Cross-attention alternates: language tokens on even layers, observation tokens (cameras, and the
non-robot state of state-only tasks) on odd layers, each with its pad mask; their K/V are computed
once per prediction (``DiT.encode_condition``). x0 prediction, 1000 training levels,
DPM-Solver++ with 5 steps. The loss is taken on the valid slots only. In training each modality
(language, observation tokens, robot state) is dropped (zeroed) with probability 0.1 per sample.

Normalization is per embodiment (``state__<name>``, ``action__<name>``, ``object__<name>``),
rows picked by ``obs["embodiment"]``; actions come out unified and unnormalized, and
``Embodiment.action_from_unified`` turns them into env actions.

Deviations from RDT-1B, sized for a CPU: dim 192, depth 4, H 16 (RDT: 2048, 28, 64); the
language and image encoders are dp's (builtin word transformer, ResNet patches) instead of T5
and SigLIP; one state token per observation step (RDT: To = 1, the same thing then).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dp.constants import ENV_KEY_OF_STORE_KEY
from dp.core import DiT
from dp.core.dit import dense_ffn
from dp.core.embeddings import ActionHead, ActionTokenizer, LevelEmbedding
from dp.data.unified import embodiment
from dp.diffusion import GaussianProcess
from dp.encoders.tokens import ObservationTokens, Tokens
from dp.errors import ConfigError
from dp.policies.denoising import DenoisingPolicy, SampleContext

UNIFIED = 128
DEFAULT_PROCESS = {"schedule": "vp_cosine", "prediction": "x0", "train_steps": 1000, "clip_x0": 1.0}
DEFAULT_SAMPLER = {"name": "dpm_solver_pp", "steps": 5}
DEFAULT_DROPOUT = {"language": 0.1, "observation": 0.1, "state": 0.1}
HZ_SCALE = 1e-3  # control frequency (Hz) -> the level embedding's input (20 Hz reads as level 0.02)


class UnifiedActionCodec(nn.Module):
    """Unified action chunks [B, H, 128] <-> tokens [B, H, D]. In: each step's 128 values and the
    128-slot validity mask (``encode(x, valid)``); out: 128 values per step."""

    kind = "continuous"
    patch = 1

    def __init__(self, dim: int, horizon: int):
        super().__init__()
        self.action_dim, self.horizon = UNIFIED, horizon
        self.tokenizer = ActionTokenizer(2 * UNIFIED, dim, horizon)
        self.head = ActionHead(dim, UNIFIED, 1)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, H, 128], valid [B, 128] bool -> [B, H, D]."""
        return self.tokenizer(torch.cat([x, valid[:, None].to(x.dtype).expand_as(x)], -1))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        return level

    def shape(self, b: int) -> tuple[int, int, int]:
        return (b, self.horizon, UNIFIED)


class RDTPolicy(DenoisingPolicy):
    def __init__(
        self,
        shape_meta: dict,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        dim: int = 192,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        process: dict | None = None,
        sampler: dict | None = None,
        image_encoder: dict | None = None,
        language: dict | None = None,
        dropout: dict | None = None,
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if list(shape_meta.get("action", [])) != [UNIFIED] or "embodiments" not in shape_meta:
            raise ConfigError(f"policy=rdt trains on a dataset mixture in the unified space (task.datasets: "
                              f"[{{path, embodiment, weight}}]); this dataset gives actions {shape_meta.get('action')}.")
        if not language:
            raise ConfigError("policy=rdt needs language (e.g. policy.language={encoder: builtin, layers: 2}): its "
                              "cross-attention alternates between language and observation tokens.")
        if depth % 2:
            raise ConfigError(f"policy=rdt alternates language and observation layers: depth must be even, got {depth}.")
        self.dropout = {**DEFAULT_DROPOUT, **(dropout or {})}
        unknown = sorted(set(self.dropout) - set(DEFAULT_DROPOUT))
        if unknown or not all(0 <= p < 1 for p in self.dropout.values()):
            raise ConfigError(f"policy.dropout takes {sorted(DEFAULT_DROPOUT)} in [0, 1); got {dropout!r}.")
        obs = shape_meta["obs"]
        cond_meta = {"obs": {k: ([2 * s[0]] if k == "object" else s) for k, s in obs.items() if k != "state"}}
        obs_encoder = ObservationTokens(cond_meta, dim, n_obs_steps, image_encoder, language,
                                        list(shape_meta.get("instructions") or []))
        dit = DiT(dim, depth, heads, mlp_ratio, "rms", True, "alternating", ffn=dense_ffn, level_cond="token",
                  level_token=True)
        super().__init__(
            config, shape_meta=shape_meta, horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
            obs_encoder=obs_encoder, language=None, codec=UnifiedActionCodec(dim, horizon),
            process=GaussianProcess(**{**DEFAULT_PROCESS, **(process or {})}), dit=dit,
            sampler={**DEFAULT_SAMPLER, **(sampler or {})},
        )
        self.embodiments = list(shape_meta["embodiments"])
        self.state_in = nn.Linear(2 * UNIFIED, dim)  # a step's unified state and its validity mask
        self.state_pos = nn.Parameter(torch.zeros(1, n_obs_steps, dim))
        self.freq_emb = LevelEmbedding(dim)
        nn.init.normal_(self.state_pos, std=0.02)

    # -------------------------------------------------------------- normalization per embodiment
    def normalized_keys(self) -> list[str]:
        return [f"{k}__{e}" for e in self.embodiments for k in ("state", "action", "object")]

    def _per_embodiment(self, key: str, x: torch.Tensor, ids: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """(Un)normalize rows [B, ...] of ``x`` with the statistics of their embodiment ``ids`` [B]."""
        if not bool(((ids >= 0) & (ids < len(self.embodiments))).all()):
            raise ConfigError(f"obs['embodiment'] ids must index {self.embodiments}; got {ids.unique().tolist()}.")
        f = self.normalizer.unnormalize if inverse else self.normalizer.normalize
        out = torch.empty_like(x)
        for e, name in enumerate(self.embodiments):
            rows = ids == e
            if bool(rows.any()):
                out[rows] = f(f"{key}__{name}", x[rows])
        return out

    def normalize_obs(self, obs: dict) -> dict:
        out = dict(obs)
        ids = obs["embodiment"].long()
        out["state"] = self._per_embodiment("state", obs["state"].float(), ids)
        if "object" in obs:
            out["object"] = self._per_embodiment("object", obs["object"].float(), ids)
        return out

    # -------------------------------------------------------------- tokens
    def _dropped(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """Training only: zero a sample's tokens of modality ``key`` with its dropout probability."""
        p = self.dropout[key]
        if not self.training or p == 0:
            return x
        keep = (torch.rand(x.shape[0], device=x.device) >= p).to(x.dtype)
        return x * keep.view(-1, *([1] * (x.dim() - 1)))

    def encode_obs(self, obs: dict, levels: torch.Tensor | None = None, prefix_step: int | None = None):
        """Normalized obs -> the DiT's condition cache (language / observation K/V per layer, once
        per prediction), carrying this prediction's own tokens (frequency, state) and action mask."""
        b = obs["state"].shape[0]
        cond = {}
        if "object" in obs:
            cond["object"] = torch.cat([obs["object"], obs["object_mask"][:, None].float().expand_as(obs["object"])], -1)
        cond.update({k: obs[k] for k in self.obs_encoder.cameras})
        groups = self.obs_encoder(cond, instructions=self._instructions(obs, b))
        lang = groups["language"]
        seen = Tokens.cat(*(groups[g] for g in ("state", "image") if g in groups))
        cache = self.dit.encode_condition(
            [self._dropped(lang.x, "language"), self._dropped(seen.x, "observation")], levels=levels,
            cond_mask=[lang.mask, seen.mask])
        valid = obs["state_mask"][:, None].float().expand_as(obs["state"])
        state = self.state_in(torch.cat([self._dropped(obs["state"], "state"), valid], -1)) + self.state_pos
        freq = self.freq_emb(obs["control_hz"].float().reshape(b, 1) * HZ_SCALE)
        cache.own_tokens = torch.cat([freq, state], dim=1)  # [B, 1 + To, D]
        cache.action_valid = obs["action_mask"].bool()
        return cache

    def denoiser_tokens(self, x_t: torch.Tensor, level: torch.Tensor, cache, span=None) -> torch.Tensor:
        if span is not None:
            raise ConfigError("policy=rdt takes Gaussian processes only, not MeanFlow's interval network.")
        own = cache.own_tokens
        x = torch.cat([own.to(x_t.dtype), self.codec.encode(x_t, cache.action_valid)], dim=1)
        # the own tokens read as clean (their level is never embedded: level_cond "token")
        lv = torch.cat([level[:, :1].expand(-1, own.shape[1]), level], dim=1)
        return self.dit(x, lv, cache=cache)[:, own.shape[1]:]

    # -------------------------------------------------------------- interface
    def _obs_of(self, batch: dict) -> dict:
        obs = dict(batch["obs"])
        for k in ("state_mask", "action_mask", "object_mask", "embodiment", "control_hz", "instruction"):
            if k in batch and k not in obs:
                obs[k] = batch[k]
        return self.with_dataset_language(obs, batch)

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        obs = self.normalize_obs(self._obs_of(batch))
        x0 = self._per_embodiment("action", batch["action"].float(), obs["embodiment"].long())
        cache = self.encode_obs(obs)
        level = self.training_levels(x0.shape[0], x0.device)
        x_t, noise = self.process.corrupt(x0, level)
        err = (self.network(x_t, level, cache).float() - self.process.target(x0, noise, level)).pow(2)
        valid = cache.action_valid[:, None].expand_as(err)
        return {"loss": err[valid].mean()}

    @torch.inference_mode()
    def predict_action(self, obs: dict, committed=None) -> torch.Tensor:
        """obs: {"state" [B, To, 128], "state_mask" [B, 128], "action_mask" [B, 128], "object"
        [B, To, O] and "object_mask" [B, O] (state tasks), cameras, "embodiment" [B] ids,
        "control_hz" [B], "instruction" or "task_id"} -> unified actions [B, H, 128], unnormalized;
        slots outside ``action_mask`` are 0."""
        if committed is not None:
            raise ConfigError("policy=rdt does not inpaint committed actions yet; use async_blend=ensemble.")
        obs = self.normalize_obs(self.obs_to_device(obs))
        cache = self.encode_obs(obs, levels=self.sampler.levels(self.process, self.device)
                                if self.sampler.fixed_levels else None)
        ctx = SampleContext(self, self.denoiser(cache), obs["state"].shape[0], obs, cache)
        out = self._per_embodiment("action", self.codec.output(self.sampler.generate(ctx)), obs["embodiment"].long(),
                                   inverse=True)
        return out * cache.action_valid[:, None]

    def driver(self, name: str) -> "EmbodimentDriver":
        """This policy driving robot ``name`` (one of ``embodiments``) from its env observations."""
        return EmbodimentDriver(self, name)


class EmbodimentDriver:
    """An RDT policy on one robot, with the rollout interface of a plain policy: env
    observations {"state" [B, S], "agent_pos" [B, P], "joint_pos" [B, J], "instruction"} in,
    env actions [B, A] out. Keeps the last To observations (the first repeated at an episode's
    start) and a queue of the executed actions of the last chunk."""

    def __init__(self, policy: RDTPolicy, name: str):
        if name not in policy.embodiments:
            raise ConfigError(f"this checkpoint was trained on {policy.embodiments}, not on {name!r}.")
        self.policy, self.embodiment, self.id = policy, embodiment(name), policy.embodiments.index(name)
        self.object_dim = int(policy.config["shape_meta"]["obs"].get("object", [0])[0])
        # camera obs name -> the env's image keys (stores keep the main camera as "img", envs call it "image")
        store_keys = policy.config["shape_meta"].get("cameras") or {}
        self.cameras = {cam: [ENV_KEY_OF_STORE_KEY.get(k, k) for k in ([v] if isinstance(v, str) else v)]
                        for cam, v in store_keys.items() if cam in policy.obs_encoder.cameras}
        self.stacked = {cam: not isinstance(store_keys[cam], str) for cam in self.cameras}
        # per robot, not per prediction: the slots it fills
        self.state_mask = torch.as_tensor(self.embodiment.state_mask())
        self.action_mask = torch.as_tensor(self.embodiment.action_mask())
        self._history: list[dict] = []
        self._queue: list[torch.Tensor] = []

    def __getattr__(self, name):  # sampler, config, generator, ...: the policy's
        return getattr(self.policy, name)

    def eval(self):
        self.policy.eval()
        return self

    def reset(self) -> None:
        self.policy.reset()
        self._history, self._queue = [], []

    @property
    def needs_prediction(self) -> bool:
        return not self._queue

    def _unified_step(self, obs: dict) -> dict:
        emb = self.embodiment
        step = {"state": torch.as_tensor(emb.state_to_unified(obs), dtype=torch.float32)}
        if self.object_dim:
            raw = np.asarray(obs["state"], np.float32)[:, emb.agent_pos_dim:]
            if raw.shape[1] > self.object_dim:
                raise ConfigError(f"{emb.name}: the env gives {raw.shape[1]} non-robot state numbers; the policy "
                                  f"was trained with at most {self.object_dim}.")
            obj = torch.zeros(raw.shape[0], self.object_dim)
            obj[:, : raw.shape[1]] = torch.as_tensor(raw)
            step["object"], step["n_object"] = obj, raw.shape[1]
        for cam, keys in self.cameras.items():  # [B, H, W, C] per view -> [B, (V,) C, H, W]
            views = torch.stack([torch.as_tensor(np.asarray(obs[k])).permute(0, 3, 1, 2) for k in keys], 1)
            step[cam] = views if self.stacked[cam] else views[:, 0]
        return step

    @torch.inference_mode()
    def select_action(self, obs: dict) -> torch.Tensor:
        step = self._unified_step(obs)
        self._history = (self._history or [step] * self.policy.n_obs_steps)[1:] + [step]
        if not self._queue:
            b = step["state"].shape[0]
            emb = self.embodiment
            batch = {k: torch.stack([h[k] for h in self._history], 1) for k in step if k != "n_object"}
            batch.update({
                "state_mask": self.state_mask.expand(b, -1),
                "action_mask": self.action_mask.expand(b, -1),
                "embodiment": torch.full((b,), self.id), "control_hz": torch.full((b,), float(emb.control_hz)),
                "instruction": obs["instruction"],
            })
            if self.object_dim:
                batch["object_mask"] = (torch.arange(self.object_dim) < step["n_object"]).expand(b, -1)
            chunk = self.policy.executed_actions(self.policy.predict_action(batch))  # [B, Ta, 128]
            env_actions = torch.as_tensor(emb.action_from_unified(chunk.cpu().double().numpy()), dtype=torch.float32)
            self._queue = list(env_actions.unbind(1))
        return self._queue.pop(0)
