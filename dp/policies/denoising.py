"""The denoising policy every diffusion method composes (docs/design.md, "How a method is built").

    encoders -> condition tokens        ObsEncoder (a token per step and key) + language
    codec    -> target <-> tokens       ContinuousActionCodec (action chunk, ``action_patch``)
    process  -> corrupt / loss / prior / to_x0      GaussianProcess
    core     -> DiT(tokens, per-token levels, condition cache)
    sampler  -> sampler.generate(ctx): any sampler of the process's kind, no branch on its name
    plugins  -> trained parts with their own training terms (truncated diffusion's anchors)

Inference-only accelerations sit beside what they accelerate: the condition K/V and the
level terms in the DiT's ``ConditionCache`` (once per prediction), MoE routes in
``RouteCache`` (once per sampler and weights). Committed actions (real-time chunking) are
inpainted inside ``ctx.denoise``, so every sampler honours them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from dp.core import ConditionCache
from dp.core.dit import PREFIX_STEP
from dp.core.moe import RouteCache, balance_loss, router_stats
from dp.core.switch import switch_stats
from dp.diffusion import make_sampler
from dp.diffusion.protocol import check_pairing
from dp.diffusion.samplers import SAMPLERS as SAMPLER_NAMES
from dp.diffusion.samplers import Sampler, SamplingPlan
from dp.diffusion.streaming import StreamingPlan, StreamingSampler, StreamLayout, staggered_training_levels
from dp.encoders.tokens import ObservationTokens, Tokens
from dp.errors import ConfigError
from dp.policies.base import Policy, inpaint

# state-dict names of checkpoints written before the composition (dp format <= 2) -> today's
LEGACY_KEYS = (("tokenizer.", "codec.tokenizer."), ("head.", "codec.head."),
               ("anchor_score.", "plugins.anchors.score."), ("anchors", "plugins.anchors.anchors"))


@dataclass(frozen=True)
class PredictionPlan:
    """One prediction's shape decided before it runs (``DenoisingPolicy.plan_prediction``): the
    sampler's grid with its host-side facts and each network call's level. ``sample_target(..., plan=...)`` then reads no tensor on the host, so it can be
    captured in a CUDA graph or traced by ``torch.export`` (dp/deploy)."""

    batch: int
    sampler: SamplingPlan | StreamingPlan
    call_levels: list  # per network call: a float, or per token a list [N] (streaming's chunks)
    interval: bool  # MeanFlow: the network also takes each step's end (no precomputed level terms)
    first: bool | None = None  # stateful samplers (streaming): planned for an episode's first call or a later one

    @property
    def uniform(self) -> bool:
        return all(isinstance(v, float) for v in self.call_levels)

    @property
    def level_values(self) -> list[float]:
        return sorted({v for c in self.call_levels for v in ([c] if isinstance(c, float) else c)})


@dataclass
class SampleContext:
    """What a sampler gets for one prediction (see dp/diffusion/samplers.py)."""

    policy: "DenoisingPolicy"
    denoise: object  # (x_t [B, H, A], level [B, H]) -> x0_hat, committed actions inpainted
    batch: int
    obs: dict  # normalized observations (plug-ins that re-encode rows need them)
    cache: ConditionCache
    known: tuple | None = None  # (positions, normalized committed actions [B, k, A])
    extra: dict = field(default_factory=dict)
    noise: torch.Tensor | None = None  # the sampler's start, when the caller gives it
    plan: SamplingPlan | None = None  # the sampler's grid, planned beforehand (``PredictionPlan``)

    @property
    def process(self):
        return self.policy.process

    @property
    def generator(self) -> torch.Generator | None:
        return self.policy.generator

    @property
    def layout(self) -> StreamLayout:
        return self.policy.stream_layout

    def prior(self) -> torch.Tensor:
        return self.policy.prior_sample(self.batch) if self.noise is None else self.noise

    def network(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The raw output (e.g. logits) at x_t: for samplers that need more than ``denoise``'s x0."""
        return self.policy.network(x_t, level, self.cache)

    def plugin(self, name: str):
        if name not in self.policy.plugins:
            raise ConfigError(f"sampler {self.policy.sampler.name!r} needs the policy part {name!r}, which this "
                              f"policy was not trained with.")
        return self.policy.plugins[name]


INITIAL_NOISE = ("call", "episode")


def _check_initial_noise(mode) -> None:
    if mode not in INITIAL_NOISE:
        raise ConfigError(f"initial_noise: expected one of {INITIAL_NOISE}, found {mode!r}.")


class DenoisingPolicy(Policy):
    """Composition of the parts above. Subclasses parse their config and pass built parts."""

    def __init__(self, config: dict, *, shape_meta: dict, horizon: int, n_obs_steps: int, n_action_steps: int,
                 obs_encoder, language, codec, process, dit, sampler: dict, initial_noise: str = "call",
                 stream_fraction: float = 0.0, balance_weight: float = 0.0, plugins: dict | None = None,
                 causal: bool = False, switch_weight: float = 0.0):
        super().__init__(config)
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ConfigError(f"n_action_steps must be in [1, horizon - n_obs_steps + 1]; got {n_action_steps}.")
        _check_initial_noise(initial_noise)
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = int(shape_meta["action"][0])
        # registered in this order, the parameters iterate as they did before the composition (the
        # gradient-norm sum, and so a training run, depends on it)
        self.obs_encoder, self.dit, self.language, self.codec = obs_encoder, dit, language, codec
        self.process = process
        self.instructions = list(shape_meta.get("instructions") or [])
        self.plugins = torch.nn.ModuleDict(plugins or {})
        self.initial_noise, self.stream_fraction, self.balance_weight = initial_noise, stream_fraction, balance_weight
        self.switch_weight = switch_weight  # Switch-DiT's diffusion prior loss weight (w_JSD)
        self.causal = causal  # target tokens attend left to right (autoregressive decoding)
        # [N, N] bool among the target tokens, or None (PAD: frame tokens never attend to action tokens);
        # a buffer, so it follows the policy's device, not saved
        self.register_buffer("token_mask", None, persistent=False)
        self._episode_noise: torch.Tensor | None = None
        self._plans: dict[tuple, PredictionPlan] = {}  # (batch, sampler, device) -> plan (``_plan_for``)
        self.planning = True  # False: decide each prediction's grid as it runs (the pre-plan path, for A/B timing)
        self.generator: torch.Generator | None = None  # set for reproducible sampling
        self.routes = RouteCache(self.dit, PREFIX_STEP)
        self.register_load_state_dict_post_hook(self.clear_inference_cache)
        self.register_load_state_dict_pre_hook(self._upgrade_legacy_keys)
        if stream_fraction > 0:
            self.stream_layout  # noqa: B018  (checks the chunk layout now, not at the first call)
        self.sampler = self._checked(make_sampler(**sampler))

    # -------------------------------------------------------------- parts
    @property
    def stream_layout(self) -> StreamLayout:
        """Chunks of n_action_steps actions from the first executed one (dp.diffusion.streaming)."""
        return StreamLayout(self.horizon, self.n_obs_steps - 1, self.n_action_steps, self.codec.patch)

    def _checked(self, sampler):
        check_pairing(sampler, self.process)
        sampler.check(self)
        return sampler

    def set_sampler(self, name: str, steps: int, **options) -> None:
        """Swap the sampler (eval, control and the sweep all do it this way); checked against
        this policy before it is used. Recorded in ``config`` so reports say what ran."""
        self.sampler = self._checked(make_sampler(name, steps, **options))
        self.config["sampler"] = {"name": name, "steps": steps, **options}

    def set_action_steps(self, n: int) -> None:
        """As ``Policy.set_action_steps``; a policy trained on staggered levels keeps the chunks it trained on,
        and the sampler is checked against the new chunk."""
        old = self.n_action_steps
        if self.stream_fraction > 0 and n != old:
            raise ConfigError(f"n_action_steps: this policy trained on staggered levels over chunks of {old} "
                              f"actions (policy.streaming.train_fraction > 0), so it executes {old}; found {n}.")
        super().set_action_steps(n)
        self._plans.clear()
        try:
            self._checked(self.sampler)
        except ConfigError:
            super().set_action_steps(old)
            raise

    def normalized_keys(self) -> list[str]:
        return ["action", *self.obs_encoder.lowdim]

    def fit_to_data(self, dataset) -> None:
        """Trainer hook, after ``set_normalizer``: data-dependent setup of the codec (a discrete
        codec's bins; the round-trip error is kept in ``codec_report``) and of the plug-ins."""
        if hasattr(self.codec, "fit"):
            actions = torch.as_tensor(dataset.get_batch(np.arange(len(dataset)))["action"]).float().to(self.device)
            norm = self.normalizer.params["action"]
            self.codec_report = self.codec.fit(self.normalizer.normalize("action", actions), norm.scale)
            print(f"codec: {self.codec.bins} bins; decode(encode(a)) error per dimension, env units: "
                  + ", ".join(f"{k} {[round(v, 4) for v in self.codec_report[k]]}" for k in ("max", "mean")))
        for plugin in self.plugins.values():
            plugin.fit_to_data(self, dataset)

    def begin_training_step(self, step: int) -> None:
        """Trainer hook before each step: a process with a curriculum (MeanFlow's) reads the step."""
        if hasattr(self.process, "begin_step"):
            self.process.begin_step(step)

    def set_initial_noise(self, mode: str) -> None:
        """Where each prediction's starting noise comes from (see ``prior_sample``); an inference-time
        choice, recorded in ``config``. ``episode`` holds one draw for the whole episode, so consecutive
        chunks that see nearly the same observation start from the same noise and pick the same mode."""
        _check_initial_noise(mode)
        self.initial_noise = mode
        self.config["initial_noise"] = mode
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._episode_noise = None
        self.sampler.reset()

    def train(self, mode: bool = True):
        if mode:
            self.clear_inference_cache()
        return super().train(mode)

    def clear_inference_cache(self, *_) -> None:
        """Drop the expert route cache and the prediction plans (rebuilt on the next prediction).
        Also a load_state_dict hook."""
        self.routes.clear()
        self._plans = {}

    def _upgrade_legacy_keys(self, module, state_dict, prefix, *_):
        for old, new in LEGACY_KEYS:
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                if old == "anchors" and key != prefix + old:
                    continue  # only the buffer itself, not anchors_* names
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)

    # -------------------------------------------------------------- pieces
    def normalize_obs(self, obs: dict) -> dict:
        out = dict(obs)
        for k in self.obs_encoder.lowdim:
            out[k] = self.normalizer.normalize(k, obs[k].float())
        return out

    def encode_obs(self, obs: dict, levels: torch.Tensor | None = None, prefix_step: int | None = None) -> ConditionCache:
        """Normalized obs -> the DiT's per-prediction condition cache (computed once), with the
        level-only terms of ``levels`` [S] (the sampler's grid) when given."""
        if isinstance(self.obs_encoder, ObservationTokens):
            return self._encode_token_groups(obs, levels, prefix_step)
        tokens = self.obs_encoder({k: obs[k] for k in self.obs_encoder.keys})
        if self.dit.cond_mode == "alternating":
            per_key = tokens.reshape(tokens.shape[0], self.n_obs_steps, self.obs_encoder.tokens_per_step, -1)
            tokens = [per_key[:, :, i] for i in range(per_key.shape[2])]
        if self.language is not None:
            b = (tokens[0] if isinstance(tokens, list) else tokens).shape[0]
            lang = self.language(self._instructions(obs, b))[:, None]  # [B, 1, D]
            tokens = [lang, *tokens] if isinstance(tokens, list) else torch.cat([lang, tokens], dim=1)
        return self.dit.encode_condition(tokens, levels=levels, prefix_step=prefix_step)

    def _encode_token_groups(self, obs: dict, levels, prefix_step) -> ConditionCache:
        """Token sequences with pad masks (``obs_tokens="sequence"``): language (a token per word),
        state, image patches. Alternating cross-attention takes them as groups in that order;
        prefix and cross take them concatenated. Padding never receives attention."""
        enc = self.obs_encoder
        b = next(iter(obs[k] for k in enc.keys)).shape[0]
        texts = self._instructions(obs, b) if enc.language is not None else None
        groups = enc({k: obs[k] for k in enc.keys}, instructions=texts)
        order = [groups[g] for g in ("language", "state", "image") if g in groups]
        if self.dit.cond_mode == "alternating":
            return self.dit.encode_condition([t.x for t in order], levels=levels, prefix_step=prefix_step,
                                             cond_mask=[t.mask for t in order])
        whole = Tokens.cat(*order)
        return self.dit.encode_condition(whole.x, levels=levels, prefix_step=prefix_step, cond_mask=whole.mask)

    def denoiser_tokens(self, x_t: torch.Tensor, level: torch.Tensor, cache: ConditionCache,
                        span: torch.Tensor | None = None) -> torch.Tensor:
        """The core's output tokens [B, N, D] for a noisy normalized target at levels [B, H]
        (``span`` [B, H]: MeanFlow's t - r)."""
        level = self.process.model_level(x_t, level)
        return self.dit(self.codec.encode(self.process.model_input(x_t, level)), self.codec.token_levels(level),
                        cache=cache, causal=self.causal, token_mask=self.token_mask,
                        span=None if span is None else self.codec.token_levels(span))

    def network(self, x_t: torch.Tensor, level: torch.Tensor, cache: ConditionCache,
                span: torch.Tensor | None = None) -> torch.Tensor:
        """Raw network output in the target's layout [B, H, A]."""
        return self.codec.decode(self.denoiser_tokens(x_t, level, cache, span))

    def prior_sample(self, b: int) -> torch.Tensor:
        """The sampler's start [B, H, A]: fresh per prediction (``initial_noise="call"``,
        diffusion_policy's behaviour) or drawn once per episode (``"episode"``; ``reset()`` draws
        anew), which makes the policy a deterministic function of the observation within an
        episode. Rows belong to batch positions, so callers keep each env in one row."""
        shape = self.codec.shape(b)
        if self.initial_noise == "call":
            return self.process.prior(shape, device=self.device, generator=self.generator)
        if self._episode_noise is None or self._episode_noise.shape != shape:
            self._episode_noise = self.process.prior(shape, device=self.device, generator=self.generator)
        return self._episode_noise.clone()

    def training_levels(self, b: int, device) -> torch.Tensor:
        """[B, N] per target element (action step, or token): one level per sample, or
        (``streaming.train_fraction``) chunk-staggered levels."""
        if self.stream_fraction > 0:
            return staggered_training_levels(self.process, self.stream_layout, b, self.stream_fraction, device)
        return self.process.sample_level((b,), device=device)[:, None].expand(b, self.codec.shape(b)[1])

    def denoiser(self, cache: ConditionCache, known=None, cached: bool = False, planned: bool = False):
        """The sampler's ``denoise(x_t, level) -> x0`` for one prediction: the network, the
        process's x0, committed actions inpainted, and the call index for cached routes. A
        MeanFlow process also gets the step's end level ``target`` (the network's span is
        level - target; without a target, the whole way to 0). ``planned``: the calls follow a
        ``PredictionPlan``, so call i is on the routes' grid without a check."""
        calls = itertools.count()
        interval = getattr(self.process, "interval_network", False)

        def denoise(x_t, level, target=None):
            i = cache.call = next(calls)
            cache.step = i if cached and (planned or self.routes.on_grid(i, level)) else None
            span = (level if target is None else level - target) if interval else None
            return inpaint(self.process.to_x0(self.network(x_t, level, cache, span).float(), x_t, level), known)

        return denoise

    def _committed_slice(self, committed: torch.Tensor | None, b: int):
        """(positions, normalized actions [B, k, A]) for ``committed``, or None."""
        if committed is None:
            return None
        if self.codec.kind != "continuous":
            raise ConfigError("committed actions are inpainted into continuous action chunks; this policy decodes "
                              "discrete tokens. Use async_blend=ensemble with it.")
        committed = torch.as_tensor(committed, device=self.device).float()
        start = self.n_obs_steps - 1
        k = committed.shape[1] if committed.dim() == 3 else -1
        if committed.dim() != 3 or committed.shape[0] != b or committed.shape[2] != self.action_dim \
                or not 0 < k <= self.horizon - start:
            raise ConfigError(f"committed must be [B={b}, k, A={self.action_dim}] with 1 <= k <= "
                              f"{self.horizon - start}; got {tuple(committed.shape)}.")
        return slice(start, start + k), self.normalizer.normalize("action", committed)

    # -------------------------------------------------------------- interface
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        obs = self.with_dataset_language(self.normalize_obs(batch["obs"]), batch)
        x0 = self.codec.target(self.normalizer.normalize("action", batch["action"].float()))
        cache = self.encode_obs(obs)
        level = self.training_levels(x0.shape[0], x0.device)
        if hasattr(self.process, "training_loss"):  # a process that calls the network itself (MeanFlow's JVP)
            loss = self.process.training_loss(lambda x_t, lv, span: self.network(x_t, lv, cache, span), x0, level)
        else:
            x_t, aux = self.process.corrupt(x0, level)
            loss = self.process.loss(self.network(x_t, level, cache), x0, aux, level)
        out = {"loss": loss}
        for plugin in self.plugins.values():
            out = plugin.training_terms(self, obs, x0, out)
        ffns = self.routes.ffns()
        if ffns:  # mixture of experts: balance loss, and router statistics to log beside it
            balance = balance_loss(ffns)
            out.update(mse=out["loss"], balance_loss=balance, loss=out["loss"] + self.balance_weight * balance)
            out.update(router_stats(ffns, level[:, 0]))
        if getattr(self.dit, "switch_prior", None) is not None:  # Switch-DiT: the diffusion prior loss
            prior = self.dit.switch_loss(level[:, 0])
            out.update(mse=out.get("mse", out["loss"]), switch_prior_loss=prior.detach(),
                       loss=out["loss"] + self.switch_weight * prior)
            out.update(switch_stats([b.switch for b in self.dit.blocks], level[:, 0]))
        return out

    @torch.inference_mode()
    def predict_action(self, obs: dict, committed: torch.Tensor | None = None) -> torch.Tensor:
        """obs -> action chunk [B, H, A] in env units.

        committed: [B, k, A] env units, actions already promised to the robot for the first k
        executed steps (an async controller executes them while this call runs). They are
        inpainted: every denoising step's x0 estimate is overwritten there, so the chunk is
        sampled to continue them (real-time chunking, with hard inpainting in place of RTC's
        soft guidance). The returned chunk holds them at positions n_obs_steps - 1 onward."""
        obs = self.normalize_obs(self.obs_to_device(obs))
        return self.normalizer.unnormalize("action", self.codec.output(self.sample_target(obs, committed)))

    def plan_prediction(self, batch: int, first: bool | None = None) -> PredictionPlan:
        """The plan of a prediction at ``batch`` rows with the current sampler: one whose every call's
        level is known in advance, or streaming (``first``: an episode's first call, or a later one).
        Expert routes are cached here when they apply."""
        sampler = self.sampler
        stateful = isinstance(sampler, StreamingSampler)
        if not (stateful or getattr(sampler, "plannable", False)):
            raise ConfigError(f"sampler {sampler.name!r} has no fixed plan (its levels depend on the call); a "
                              f"planned prediction takes {sorted(SAMPLER_NAMES)}, streaming or truncated.")
        if stateful and first is None:
            raise ConfigError("a streaming prediction is planned as an episode's first call or a later one: "
                              "pass first=True or first=False.")
        if self.routes.applies(sampler):  # a traced prediction finds them built
            self.routes.ensure(sampler, self.process, self.device)
        # the target's length: the action horizon, or more (PAD's frames and actions in one target)
        plan, calls = sampler.plan_calls(self.process, batch, self.codec.shape(batch)[1], self.device,
                                         first=bool(first), layout=self.stream_layout if stateful else None)
        to_tokens = lambda lv: self.codec.token_levels(torch.tensor([lv]))[0].tolist()  # noqa: E731
        calls = [float(c) if isinstance(c, float) else to_tokens(c) for c in calls]
        return PredictionPlan(batch, plan, calls, bool(getattr(self.process, "interval_network", False)),
                              first if stateful else None)

    def _plan_for(self, batch: int) -> PredictionPlan:
        """The current sampler's plan at ``batch`` rows on this device, made once."""
        key = (batch, self.sampler, str(self.device))  # the sampler object itself: an id could be reused
        if key not in self._plans:
            if len(self._plans) >= 8:  # bounded: an evaluation may visit many batch sizes
                self._plans.clear()
            self._plans[key] = self.plan_prediction(batch)
        return self._plans[key]

    def sample_target(self, obs: dict, committed: torch.Tensor | None = None, plan: PredictionPlan | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized obs -> the sampler's clean target in the codec's layout (``codec.output``
        turns it into normalized actions). ``plan``: from ``plan_prediction`` (no host reads);
        ``noise``: the sampler's start [B, H, A] (default: drawn here)."""
        b = next(iter(obs[k] for k in self.obs_encoder.keys)).shape[0]
        cached = self.routes.applies(self.sampler)
        if cached and not torch.compiler.is_compiling():  # rebuilt when the weights changed (traced: built already)
            self.routes.ensure(self.sampler, self.process, self.device)
        if plan is None and self.planning and isinstance(self.sampler, Sampler) and self.sampler.fixed_levels:
            plan = self._plan_for(b)
        prefix_step = PREFIX_STEP if cached else None
        if plan is not None:
            if plan.batch != b:
                raise ValueError(f"the plan is for batch {plan.batch}; the observation has {b} rows.")
            if plan.first is not None and plan.first != (getattr(self.sampler, "buffer", None) is None):
                raise ValueError(f"this plan is for {'the first' if plan.first else 'a later'} streaming call of an "
                                 f"episode, but the sampler's buffer is {'warm' if plan.first else 'empty'} "
                                 f"(policy.reset() starts an episode).")
            cache = self.encode_obs(obs, levels=None if plan.interval else plan.level_values, prefix_step=prefix_step)
            cache.uniform_levels = plan.uniform
            if not plan.interval:
                self.dit.plan_calls(cache, plan.call_levels)
        else:  # a sampler whose levels depend on the call (streaming, truncated) or a non-Gaussian one
            fixed = self.sampler.fixed_levels and not getattr(self.process, "interval_network", False)
            levels = self.sampler.levels(self.process, self.device) if fixed else None
            cache = self.encode_obs(obs, levels=levels, prefix_step=prefix_step)
        known = self._committed_slice(committed, b)
        ctx = SampleContext(self, self.denoiser(cache, known, cached, planned=plan is not None), b, obs, cache, known,
                            noise=noise, plan=None if plan is None else plan.sampler)
        return self.sampler.generate(ctx)
