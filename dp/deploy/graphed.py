"""A planned prediction replayed from CUDA graphs: the launch cost of every op is paid once, at
capture, instead of on every prediction (at batch 1 a GPU prediction is launch-bound).

    graphed = GraphedPrediction(policy, batch=1)
    actions = graphed.predict_action(obs)        # [B, H, A] env units, like policy.predict_action
    graphed.reset()                              # a new episode (streaming: an empty buffer)

Each program has static buffers: a prediction copies the observation and the starting noise into
them, replays and returns a copy of the static output. A streaming policy has two programs (an
episode's first call, later calls) and keeps its buffer in static memory between them. The
graphs are captured again when the sampler changes or any weight is replaced or updated in place
(``weights_key``), since a capture also freezes what was computed outside it (cached expert
routes). Truncated sampling has two programs too, the anchored path and the full sample that rows
outside every anchor's support fall back to (replayed only when a row needs it). On a CPU there is no graph: the same static-buffer path runs the planned prediction
directly (the logic is the same; ``captured`` says which ran).
"""
from __future__ import annotations

import torch

from dp.core.weights import weights_key
from dp.deploy.export import example_inputs
from dp.deploy.planned import PlannedPrediction
from dp.runtime.fallback import with_fallback

WARMUP = 3  # eager runs on a side stream before capture (allocator and kernel selection settle)


class _Program:
    """One planned prediction with static input buffers and, on CUDA, its captured graph."""

    def __init__(self, planned: PlannedPrediction, capture: bool):
        self.planned = planned
        self.inputs = [torch.zeros_like(x) for x in example_inputs(planned)]
        self.graph = None
        if capture:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(WARMUP):
                    planned(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self.output = planned(*self.inputs)

    def run(self, tensors: list[torch.Tensor]):
        """Copy ``tensors`` into the static inputs and run: the static output (not a copy)."""
        if len(tensors) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} tensors: the observations {self.planned.keys}"
                             f"{', the buffer' if self.planned.stateful and not self.planned.first else ''} and the "
                             f"noise; got {len(tensors)}.")
        with torch.inference_mode():
            for buffer, x in zip(self.inputs, tensors):
                if buffer.shape != x.shape:
                    raise ValueError(f"this graph was built for inputs {[tuple(b.shape) for b in self.inputs]}; got "
                                     f"{tuple(x.shape)} in place of {tuple(buffer.shape)}.")
                buffer.copy_(x)
            if self.graph is None:
                return self.planned(*self.inputs)
            self.graph.replay()
            return self.output


class GraphedPrediction:
    def __init__(self, policy, batch: int = 1):
        self.policy, self.batch = policy.eval(), batch
        self.n_obs_steps = policy.n_obs_steps
        self.params = list(policy.parameters())
        self.builds = 0  # how many times the graphs (or the CPU static paths) were built
        self._key = None
        self.state: torch.Tensor | None = None  # streaming: the buffer, in static memory
        self.warm = False  # streaming: the buffer holds this episode's state
        self.fallbacks = 0  # truncated: rows sampled in full

    @property
    def captured(self) -> bool:
        return self.policy.device.type == "cuda"

    @property
    def stateful(self) -> bool:
        return hasattr(self.policy.sampler, "buffer")

    def _current(self) -> tuple:
        return (self.policy.sampler, str(self.policy.device), weights_key(self.params))

    def _build(self) -> None:
        if self.stateful:
            self.first = _Program(PlannedPrediction(self.policy, self.batch, first=True), self.captured)
            self.later = _Program(PlannedPrediction(self.policy, self.batch, first=False), self.captured)
            self.state = torch.zeros(self.later.planned.state_shape, device=self.policy.device)
        else:
            self.first = self.later = _Program(PlannedPrediction(self.policy, self.batch), self.captured)
            self.state = None
        sampler = self.policy.sampler
        self.fallback = _Program(PlannedPrediction(self.policy, self.batch, sampler=sampler.fallback), self.captured) \
            if self.later.planned.truncated else None
        self.warm = False
        self._key = self._current()
        self.builds += 1

    def reset(self) -> None:
        """A new episode: a streaming buffer starts again from noise."""
        self.warm = False

    def __call__(self, *tensors: torch.Tensor, fallback_noise: torch.Tensor | None = None) -> torch.Tensor:
        """obs tensors in ``keys`` order, then the starting noise -> actions [B, H, A] (a copy).
        Truncated: the anchors' noise, and ``fallback_noise`` [B, H, A] for rows sampled in full
        (default: ``policy.prior_sample``)."""
        if self._key != self._current():
            self._build()
        if self.fallback is not None:
            *obs, _ = tensors
            actions, score = self.later.run(list(tensors))
            full = lambda: self.fallback.run([*obs, self.policy.prior_sample(self.batch) if fallback_noise is None  # noqa: E731
                                             else fallback_noise])
            actions, n = with_fallback(actions, score, self.policy.sampler.fallback_score, full)
            self.fallbacks += n
            return actions.clone()
        if not self.stateful:
            return self.later.run(list(tensors)).clone()
        *obs, noise = tensors
        if self.warm:
            actions, buffer = self.later.run([*obs, self.state, noise])
        else:
            actions, buffer = self.first.run([*obs, noise])
        with torch.inference_mode():
            self.state.copy_(buffer)
        self.warm = True
        return actions.clone()

    def predict_action(self, obs: dict) -> torch.Tensor:
        """``policy.predict_action`` through the graphs (no ``committed`` actions)."""
        if self._key != self._current():
            self._build()
        device = self.policy.device
        tensors = [torch.as_tensor(obs[k]).to(device) for k in self.later.planned.keys]
        planned = self.later.planned
        noise = planned.draw_noise(self.policy.generator) if planned.truncated else self.policy.prior_sample(self.batch)
        return self(*tensors, noise)
