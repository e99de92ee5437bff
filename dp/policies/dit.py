"""`policy=dit`: the baseline diffusion-transformer policy.

Observation tokens (state MLP / image CNN per step) are the DiT's condition; the action
chunk [B, H, A] is tokenized one token per step, all at one noise level, and denoised
by the shared core. Defaults follow diffusion_policy: H=16, To=2, Ta=8, DDPM
vp_cosine with 100 training steps and epsilon prediction, DDIM 10 steps at inference.
"""
from __future__ import annotations

import itertools
import warnings

import torch
import torch.nn.functional as F

from dp.core import ActionHead, ActionTokenizer, ConditionCache, DiT
from dp.core.dit import PREFIX_STEP, dense_ffn, swiglu_ffn
from dp.core.moe import NoiseRoutedMoE, moe_ffn
from dp.core.weights import weights_key
from dp.diffusion import POLICY_SAMPLERS, GaussianProcess, make_sampler
from dp.diffusion.streaming import StreamLayout, staggered_training_levels
from dp.encoders.language import make_language_encoder
from dp.encoders.obs import ObsEncoder, lowdim_keys
from dp.errors import ConfigError
from dp.policies.anchors import AnchorBranch
from dp.policies.base import Policy, inpaint

DEFAULT_PROCESS = {"schedule": "vp_cosine", "prediction": "eps", "train_steps": 100, "clip_x0": 1.0}
DEFAULT_SAMPLER = {"name": "ddim", "steps": 10}
FFNS = ("dense", "swiglu", "moe")  # GELU MLP | SwiGLU of equal parameters | noise-routed SwiGLU experts
# ffn "moe": MoDE's defaults (4 SwiGLU experts, top-2, balance loss weight 0.01)
DEFAULT_MOE = {"num_experts": 4, "top_k": 2, "shared_expert": False, "balance_weight": 0.01}
LEVEL_BUCKETS = 4  # router statistics are reported for levels in [0, .25), [.25, .5), ...
INITIAL_NOISE = ("episode", "call")
# streaming.train_fraction: share of training samples whose levels are staggered by chunk (SDP: 0.8);
# 0 trains the usual one level per sample
DEFAULT_STREAMING = {"train_fraction": 0.0}
# anchors.count > 0 trains DiffusionDrive's truncated branch beside the usual loss (sampler=truncated);
# train_level: anchors are noised up to it (DiffusionDrive: 50 of 1000 steps); batch: samples per
# training batch that run the branch (each with every anchor); weights as in DiffusionDrive
DEFAULT_ANCHORS = {"count": 0, "train_level": 0.05, "batch": 8, "cls_weight": 10.0, "rec_weight": 8.0}  # draw the sampler's starting noise once per episode, or per prediction


class DiTPolicy(AnchorBranch, Policy):
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
        norm: str = "layer",
        qk_norm: bool = False,
        cond_mode: str = "prefix",
        process: dict | None = None,
        sampler: dict | None = None,
        image_encoder: dict | None = None,
        action_patch: int = 1,
        initial_noise: str = "call",
        level_cond: str = "adaln",
        level_token: bool = False,
        language: dict | None = None,
        ffn: str = "dense",
        moe: dict | None = None,
        streaming: dict | None = None,
        anchors: dict | None = None,
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        super().__init__(config)
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ConfigError(f"n_action_steps must be in [1, horizon - n_obs_steps + 1]; got {n_action_steps}.")
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = int(shape_meta["action"][0])
        self.lowdim = lowdim_keys(shape_meta)
        self.process = GaussianProcess(**{**DEFAULT_PROCESS, **(process or {})})
        self.sampler = make_sampler(**{**DEFAULT_SAMPLER, **(sampler or {})})
        self.obs_encoder = ObsEncoder(shape_meta, dim, n_obs_steps, image_encoder)
        if ffn not in FFNS:
            raise ConfigError(f"ffn must be one of {FFNS}, got {ffn!r}.")
        moe = {**DEFAULT_MOE, **(moe or {})}
        unknown = sorted(set(moe) - set(DEFAULT_MOE))
        if unknown:
            raise ConfigError(f"unknown moe option(s) {unknown}; allowed: {sorted(DEFAULT_MOE)}.")
        if moe["balance_weight"] < 0:
            raise ConfigError(f"moe.balance_weight must be >= 0, got {moe['balance_weight']}.")
        self.balance_weight = float(moe["balance_weight"])
        ffn_factory = {"dense": dense_ffn, "swiglu": swiglu_ffn}.get(ffn) or moe_ffn(
            int(moe["num_experts"]), int(moe["top_k"]), bool(moe["shared_expert"]))
        self.dit = DiT(dim, depth, heads, mlp_ratio, norm, qk_norm, cond_mode, ffn=ffn_factory, level_cond=level_cond,
                       level_token=level_token)
        self.instructions = list(shape_meta.get("instructions") or [])
        self.language = make_language_encoder(language, self.instructions, dim) if language else None
        self.action_patch = action_patch
        self.tokenizer = ActionTokenizer(self.action_dim, dim, horizon, action_patch)
        self.head = ActionHead(dim, self.action_dim, action_patch)
        if initial_noise not in INITIAL_NOISE:
            raise ConfigError(f"initial_noise must be one of {INITIAL_NOISE}, got {initial_noise!r}.")
        self.initial_noise = initial_noise
        self._episode_noise: torch.Tensor | None = None
        self.generator: torch.Generator | None = None  # set for reproducible sampling
        self.expert_cache = True  # fused per-call experts at inference, when the ffn is routed
        self._call_levels: list[float] | None = None
        self._expert_cache_for: tuple | None = None
        self._expert_params: list[torch.Tensor] | None = None  # what _expert_cache_key watches
        self.register_load_state_dict_post_hook(self.clear_inference_cache)
        streaming = {**DEFAULT_STREAMING, **(streaming or {})}
        unknown = sorted(set(streaming) - set(DEFAULT_STREAMING))
        if unknown:
            raise ConfigError(f"unknown streaming option(s) {unknown}; allowed: {sorted(DEFAULT_STREAMING)}.")
        if not 0 <= streaming["train_fraction"] <= 1:
            raise ConfigError(f"streaming.train_fraction must be in [0, 1], got {streaming['train_fraction']}.")
        self.stream_fraction = float(streaming["train_fraction"])
        if self.stream_fraction > 0 or self.sampler.name == "streaming":
            self.stream_layout  # noqa: B018  (checks the chunk layout now, not at the first call)
        anchors = {**DEFAULT_ANCHORS, **(anchors or {})}
        unknown = sorted(set(anchors) - set(DEFAULT_ANCHORS))
        if unknown:
            raise ConfigError(f"unknown anchors option(s) {unknown}; allowed: {sorted(DEFAULT_ANCHORS)}.")
        self.anchor_cfg = anchors
        self.anchor_score = None
        if anchors["count"] > 0:
            if self.process.prediction != "x0":
                raise ConfigError("anchors (truncated diffusion) need process.prediction 'x0', as DiffusionDrive: "
                                 f"from a small level an anchor moves far, which eps/v targets cannot express; got "
                                 f"{self.process.prediction!r}. Set policy.process.prediction=x0.")
            self.anchor_score = torch.nn.Linear(dim, 1)
            self.register_buffer("anchors", torch.zeros(int(anchors["count"]), horizon, self.action_dim))
        if self.sampler.name == "truncated" and self.anchor_score is None:
            raise ConfigError("sampler 'truncated' needs a policy trained with anchors (policy.anchors.count > 0).")

    @property
    def stream_layout(self) -> StreamLayout:
        """Chunks of n_action_steps actions from the first executed one (see dp.diffusion.streaming)."""
        return StreamLayout(self.horizon, self.n_obs_steps - 1, self.n_action_steps, self.action_patch)

    def reset(self) -> None:
        super().reset()
        self._episode_noise = None
        if hasattr(self.sampler, "reset"):
            self.sampler.reset()

    def prior_sample(self, b: int) -> torch.Tensor:
        """The sampler's starting point [B, H, A]: fresh per prediction (``initial_noise="call"``,
        diffusion_policy's behaviour) or drawn once per episode and reused
        (``"episode"``; ``reset()`` draws anew), which makes the policy a deterministic
        function of the observation within an episode. On rs_lift the episode mode scored
        88% against 86% for fresh noise, which is within evaluation noise. Rows belong to batch
        positions, so callers keep each env in one row for the whole episode."""
        shape = (b, self.horizon, self.action_dim)
        if self.initial_noise == "call":
            return self.process.prior(shape, device=self.device, generator=self.generator)
        if self._episode_noise is None or self._episode_noise.shape != shape:
            self._episode_noise = self.process.prior(shape, device=self.device, generator=self.generator)
        return self._episode_noise.clone()

    def normalized_keys(self) -> list[str]:
        return ["action", *self.lowdim]

    # -------------------------------------------------------------- expert caching
    def _routed_ffns(self) -> list[NoiseRoutedMoE]:
        return [blk.ffn for blk in self.dit.blocks if isinstance(blk.ffn, NoiseRoutedMoE)]

    def _expert_cache_key(self) -> tuple:
        """What the cached routes depend on: the sampler, the level embedding and the ffn weights.

        Checked before every prediction, so the parameters are listed once per cache (walking
        the module tree cost 0.07 ms a prediction). ``load_state_dict`` clears the cache;
        parameters swapped in any other way need ``clear_inference_cache()``."""
        if self._expert_params is None:
            self._expert_params = [*self.dit.level_emb.parameters(),
                                   *(p for f in self._routed_ffns() for p in f.parameters())]
        return (self.sampler.name, self.sampler.steps, weights_key(self._expert_params))

    def prepare_inference(self) -> None:
        """Expert caching (MoDE): for the current sampler the level of every network call is
        known, so each routed ffn routes every call once and fuses the chosen experts into
        one MLP per call, keyed by the call's index. ``predict_action`` calls this on first
        use and whenever the sampler or the weights change. Nothing to do for a dense ffn."""
        ffns = self._routed_ffns()
        if not ffns or self.sampler.name in POLICY_SAMPLERS:  # no fixed level per call to route once
            return
        levels = self.sampler.call_levels(self.process)
        with torch.no_grad():
            emb = self.dit.level_emb(torch.tensor([[0.0, *levels]], device=self.device))[0]  # [1 + C, D]
        for ffn in ffns:
            ffn.build_cache(emb, keys=[PREFIX_STEP, *range(len(levels))])
        self._call_levels = levels
        self._expert_cache_for = self._expert_cache_key()

    def active_parameters(self, module: torch.nn.Module | None = None) -> int:
        """Parameters of ``module`` (default: the whole policy; ``self.dit`` for the denoiser)
        that one token passes through at inference: all but the experts it is not routed to
        (top_k of num_experts per routed layer; routers and shared experts count). Dense: all."""
        module = self if module is None else module
        total = sum(p.numel() for p in module.parameters())
        idle = 0
        for f in module.modules():
            if isinstance(f, NoiseRoutedMoE):
                per_expert = sum(p.numel() for p in f.experts[0].parameters())
                idle += (f.num_experts - f.top_k) * per_expert
        return total - idle

    def clear_inference_cache(self, *_) -> None:
        """Drop the expert cache (rebuilt on the next prediction). Also a load_state_dict hook."""
        for ffn in self._routed_ffns():
            ffn.clear_cache()
        self._call_levels, self._expert_cache_for, self._expert_params = None, None, None

    def train(self, mode: bool = True):
        if mode:
            self.clear_inference_cache()
        return super().train(mode)

    def set_sampler(self, name: str, steps: int, **options) -> None:
        sampler = make_sampler(name, steps, **options)
        if name == "streaming":
            sampler.passes(self.stream_layout)  # layout and step count checked before the first call
            if self.stream_fraction == 0:
                warnings.warn("sampler 'streaming' on a policy trained at one level per sample: it has never seen "
                              "the buffer's staggered levels, expect poor actions. Train with "
                              "policy.streaming.train_fraction=0.8.", stacklevel=2)
        if name == "truncated" and self.anchor_score is None:
            raise ConfigError("sampler 'truncated' needs a policy trained with anchors (policy.anchors.count > 0).")
        self.sampler = sampler
        self.config["sampler"] = {"name": name, "steps": steps, **options}

    # -------------------------------------------------------------- pieces
    def encode_obs(self, obs: dict, levels: torch.Tensor | None = None, prefix_step: int | None = None) -> ConditionCache:
        """Normalized obs -> the DiT's per-prediction condition cache (computed once), with the
        level-only terms of ``levels`` [S] (the sampler's grid) when given; ``prefix_step``
        selects cached expert routes for the prefix pass."""
        tokens = self.obs_encoder({k: obs[k] for k in self.obs_encoder.keys})
        if self.dit.cond_mode == "alternating":
            per_key = tokens.reshape(tokens.shape[0], self.n_obs_steps, len(self.obs_encoder.keys), -1)
            tokens = [per_key[:, :, i] for i in range(per_key.shape[2])]
        if self.language is not None:
            lang = self.language(self._instructions(obs, tokens))[:, None]  # [B, 1, D]
            tokens = [lang, *tokens] if isinstance(tokens, list) else torch.cat([lang, tokens], dim=1)
        return self.dit.encode_condition(tokens, levels=levels, prefix_step=prefix_step)

    def _instructions(self, obs: dict, tokens) -> list[str]:
        """The batch's instruction strings: ``obs["instruction"]`` (rollouts), else, in
        training, the dataset's instruction of each sample's ``task_id`` (or its only one)."""
        b = (tokens[0] if isinstance(tokens, list) else tokens).shape[0]
        texts = obs.get("instruction")
        if texts is None and "task_id" in obs:
            texts = [self.instructions[i] for i in obs["task_id"].reshape(-1).tolist()]
        elif texts is None and len(self.instructions) == 1 and self.training:  # a single-task store
            texts = self.instructions * b
        if texts is None:
            raise KeyError("this policy is conditioned on language: pass obs['instruction'], a list of B strings "
                           "(dp-eval does this from the env's instruction).")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) != b:
            raise ConfigError(f"obs['instruction'] holds {len(texts)} strings for a batch of {b}.")
        return texts

    def network(self, x_t: torch.Tensor, level: torch.Tensor, cache: ConditionCache, with_score: bool = False):
        """Raw network output for a noisy normalized chunk [B, H, A] at levels [B, H].

        With ``action_patch`` p, a token's level is that of its first action (callers keep
        levels constant within each group of p actions). ``with_score``: also each chunk's anchor
        score [B] (policies trained with anchors)."""
        h = self.dit(self.tokenizer(self.process.model_input(x_t, level)), level[:, :: self.action_patch], cache=cache)
        if with_score:  # truncated diffusion: one score per chunk, from its mean output token
            return self.head(h), self.anchor_score(h.mean(1)).squeeze(-1)
        return self.head(h)

    def normalize_obs(self, obs: dict) -> dict:
        out = dict(obs)
        for k in self.lowdim:
            out[k] = self.normalizer.normalize(k, obs[k].float())
        return out

    # -------------------------------------------------------------- interface
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        obs = self.normalize_obs(batch["obs"])
        if "task_id" in batch and "instruction" not in obs:
            obs["task_id"] = batch["task_id"]
        x0 = self.normalizer.normalize("action", batch["action"].float())
        b = x0.shape[0]
        cache = self.encode_obs(obs)
        if self.stream_fraction > 0:
            level = staggered_training_levels(self.process, self.stream_layout, b, self.stream_fraction, x0.device)
        else:
            level = self.process.sample_level((b,), device=x0.device)[:, None].expand(b, self.horizon)
        noise = torch.randn_like(x0)
        x_t = self.process.add_noise(x0, noise, level)
        pred = self.network(x_t, level, cache)
        loss = F.mse_loss(pred.float(), self.process.target(x0, noise, level))
        out = {"loss": loss}
        if self.anchor_score is not None:
            cls, rec = self.anchor_loss(obs, x0)
            out.update(diffusion_loss=loss, anchor_cls=cls, anchor_rec=rec,
                       loss=loss + self.anchor_cfg["cls_weight"] * cls + self.anchor_cfg["rec_weight"] * rec)
            loss = out["loss"]
        ffns = self._routed_ffns()
        if ffns:  # mixture of experts: balance loss, and router statistics to log beside it
            balance = torch.stack([f.aux_loss for f in ffns]).mean()
            out.update(mse=loss, balance_loss=balance, loss=loss + self.balance_weight * balance)
            out.update(self.router_stats(level[:, 0]))
        return out

    @torch.no_grad()
    def router_stats(self, levels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Router entropy and expert usage per level bucket, averaged over layers, from the last
        forward pass. levels: [B], one level per sample. Keys ``router/entropy_b{j}`` and
        ``router/usage_b{j}_e{e}`` (share of the k assignments that went to expert e)."""
        ffns = self._routed_ffns()
        b = levels.shape[0]
        probs = torch.stack([f.last_probs.reshape(b, -1, f.num_experts).mean(1) for f in ffns])  # [L, B, E]
        usage = torch.stack([(f.last_gates.reshape(b, -1, f.num_experts) > 0).float().mean(1) / f.top_k
                             for f in ffns])  # [L, B, E]
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # [L, B]
        bucket = (levels * LEVEL_BUCKETS).long().clamp(0, LEVEL_BUCKETS - 1)
        stats = {}
        for j in range(LEVEL_BUCKETS):
            rows = bucket == j
            if rows.any():
                stats[f"router/entropy_b{j}"] = entropy[:, rows].mean()
                for e, u in enumerate(usage[:, rows].mean((0, 1))):
                    stats[f"router/usage_b{j}_e{e}"] = u
        return stats

    @torch.inference_mode()
    def predict_action(self, obs: dict, committed: torch.Tensor | None = None) -> torch.Tensor:
        """obs -> action chunk [B, H, A] in env units.

        committed: [B, k, A] env units, actions already promised to the robot for the first k
        executed steps (an async controller executes them while this call runs). They are
        inpainted: every denoising step's x0 estimate is overwritten there, so the chunk is
        sampled to continue them (real-time chunking, with hard inpainting in place of RTC's
        soft guidance). The returned chunk holds them at positions n_obs_steps - 1 onward."""
        obs = self.normalize_obs(self.obs_to_device(obs))
        streaming = self.sampler.name == "streaming"
        stateful = self.sampler.name in POLICY_SAMPLERS  # streaming/truncated: no fixed level per call
        cached = self.expert_cache and bool(self._routed_ffns()) and not stateful
        if cached and self._expert_cache_for != self._expert_cache_key():
            self.prepare_inference()
        levels = None if stateful else self.sampler.levels(self.process, self.device)
        cache = self.encode_obs(obs, levels=levels, prefix_step=PREFIX_STEP if cached else None)
        b = next(iter(obs[k] for k in self.obs_encoder.keys)).shape[0]
        known = self._committed_slice(committed, b)
        denoise = self._denoiser(cache, known, cached)
        if self.sampler.name == "truncated":
            return self.normalizer.unnormalize("action", self.truncated_sample(obs, cache, b, known))
        if streaming:
            x0 = self.sampler.call(denoise, self.process, self.stream_layout, lambda: self.prior_sample(b),
                                   generator=self.generator)
        else:
            x0 = self.sampler.sample(denoise, self.process, self.prior_sample(b), generator=self.generator)
        return self.normalizer.unnormalize("action", x0)

    def _denoiser(self, cache: ConditionCache, known=None, cached: bool = False):
        """The sampler's ``denoise(x_t, level) -> x0`` for one prediction: the network, the
        process's x0, the committed actions inpainted, and the call index for cached routes."""
        calls = itertools.count()

        def denoise(x_t, level):
            i = next(calls)
            # the cached route of call i holds only if the call sits where the sampler said it would
            on_grid = cached and i < len(self._call_levels) and bool((level == self._call_levels[i]).all())
            cache.step = i if on_grid else None
            return inpaint(self.process.to_x0(self.network(x_t, level, cache).float(), x_t, level), known)

        return denoise

    def _committed_slice(self, committed: torch.Tensor | None, b: int):
        """(positions, normalized actions [B, k, A]) for ``committed``, or None."""
        if committed is None:
            return None
        committed = torch.as_tensor(committed, device=self.device).float()
        start = self.n_obs_steps - 1
        k = committed.shape[1] if committed.dim() == 3 else -1
        if committed.dim() != 3 or committed.shape[0] != b or committed.shape[2] != self.action_dim \
                or not 0 < k <= self.horizon - start:
            raise ConfigError(f"committed must be [B={b}, k, A={self.action_dim}] with 1 <= k <= "
                             f"{self.horizon - start}; got {tuple(committed.shape)}.")
        return slice(start, start + k), self.normalizer.normalize("action", committed)
