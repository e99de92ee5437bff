"""A planned prediction replayed from one CUDA graph: the launch cost of every op is paid once, at
capture, instead of on every prediction (at batch 1 a GPU prediction is launch-bound).

    graphed = GraphedPrediction(policy, batch=1)
    actions = graphed.predict_action(obs)        # [B, H, A] env units, like policy.predict_action

Each (batch, sampler) has its own static buffers: a prediction copies the observation and the
starting noise into them, replays the graph and returns a copy of the static output. The graph
is captured again when the sampler changes or any weight is replaced or updated in place
(``weights_key``), since a capture also freezes what was computed outside it (cached expert
routes). On a CPU there is no graph: the same static-buffer path runs the planned prediction
directly (the logic is the same; ``captured`` says which ran).
"""
from __future__ import annotations

import torch

from dp.core.weights import weights_key
from dp.deploy.export import example_inputs
from dp.deploy.planned import PlannedPrediction

WARMUP = 3  # eager runs on a side stream before capture (allocator and kernel selection settle)


class GraphedPrediction:
    def __init__(self, policy, batch: int = 1):
        self.policy, self.batch = policy.eval(), batch
        self.n_obs_steps = policy.n_obs_steps
        self.params = list(policy.parameters())
        self.builds = 0  # how many times the graph (or the CPU static path) was built
        self._key = None

    @property
    def captured(self) -> bool:
        return self.policy.device.type == "cuda"

    def _current(self) -> tuple:
        return (self.policy.sampler, str(self.policy.device), weights_key(self.params))

    def _build(self) -> None:
        self.planned = PlannedPrediction(self.policy, self.batch)
        self.inputs = [torch.zeros_like(x) for x in example_inputs(self.planned)]
        self.graph = None
        if self.captured:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(WARMUP):
                    self.planned(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self.output = self.planned(*self.inputs)
        self._key = self._current()
        self.builds += 1

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        """obs tensors in ``planned.keys`` order, then the starting noise -> actions [B, H, A] (a copy)."""
        if self._key != self._current():
            self._build()
        if len(tensors) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs) - 1} observation tensors ({self.planned.keys}) and the "
                             f"noise, got {len(tensors)} tensors.")
        with torch.inference_mode():
            for buffer, x in zip(self.inputs, tensors):
                if buffer.shape != x.shape:
                    raise ValueError(f"this graph was built for inputs {[tuple(b.shape) for b in self.inputs]}; got "
                                     f"{tuple(x.shape)} in place of {tuple(buffer.shape)}.")
                buffer.copy_(x)
            if self.graph is None:
                return self.planned(*self.inputs).clone()
            self.graph.replay()
            return self.output.clone()

    def predict_action(self, obs: dict) -> torch.Tensor:
        """``policy.predict_action`` through the graph (no ``committed`` actions)."""
        if self._key != self._current():
            self._build()
        device = self.policy.device
        tensors = [torch.as_tensor(obs[k]).to(device) for k in self.planned.keys]
        return self(*tensors, self.policy.prior_sample(self.batch))
