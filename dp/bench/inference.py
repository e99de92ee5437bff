"""Batch-1 inference against the hardware: where a prediction's time goes, what each faster path
gains, and how far each is from the floor of its own matrix products.

    dp-bench inference [--against OLD_CHECKOUT]

The default ``dit`` (Meta-World push shapes, ``action_patch`` 4) with DDIM-10. In-process rows:
- ``eager unplanned``: ``predict_action`` deciding its grid as it runs (``policy.planning = False``);
- ``eager planned``: ``predict_action`` as it runs by default (``PredictionPlan``: no host reads);
- ``compiled``: ``torch.compile`` (inductor) of the planned prediction;
- ``streaming-2``: one warm streaming call (one network pass), eager;
- the FLOP bound: the prediction's matrix products (recorded from one prediction) at the
  machine's measured peak GEMM rate, which every latency is reported as a multiple of; and the
  same products run alone, back to back, one op call each.
Interleaved rows, a fresh process each, in alternating order over ``ROUNDS`` rounds: this
checkout's ``predict_action``, its ``dp-export`` artifact, and with ``--against`` the other
checkout's ``predict_action`` (the A/B against the code before a change).
A ``torch.profiler`` table per op class goes to ``inference_profile.md``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dp.bench.latency import BASE, _policy, measure
from dp.results import RESULTS_DIR, machine_info, sync, write_result

ROUNDS = 5
CALLS = 200
SAMPLER = ("ddim", 10)
ROOT = Path(__file__).resolve().parents[2]
# the matrix products as they reach the dispatcher (in inference mode, a Linear arrives as aten.linear)
MATMULS = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default,
           torch.ops.aten.bmm.default, torch.ops.aten.matmul.default}
# op name (aten::...) -> class in the profile table; the first matching prefix wins
OP_CLASSES = [
    ("matmul", ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("aten::_scaled_dot_product", "aten::scaled_dot_product")),
    ("norm", ("aten::native_layer_norm", "aten::layer_norm", "aten::rms_norm", "aten::_fused_rms_norm")),
    ("elementwise", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::gelu", "aten::silu", "aten::where",
                     "aten::exp", "aten::clamp", "aten::sqrt", "aten::log", "aten::neg", "aten::pow", "aten::cos",
                     "aten::sin", "aten::rsub", "aten::lerp", "aten::floor", "aten::round", "aten::sigmoid")),
    ("layout and copies", ("aten::view", "aten::reshape", "aten::as_strided", "aten::transpose", "aten::t",
                           "aten::slice", "aten::select", "aten::expand", "aten::cat", "aten::copy_", "aten::contiguous",
                           "aten::unbind", "aten::narrow", "aten::split", "aten::chunk", "aten::empty", "aten::permute",
                           "aten::unsqueeze", "aten::squeeze", "aten::clone", "aten::stack", "aten::to",
                           "aten::_to_copy", "aten::unflatten", "aten::flatten", "aten::index", "aten::_unsafe_view",
                           "aten::alias", "aten::detach", "aten::lift", "aten::zeros", "aten::ones", "aten::full",
                           "aten::fill_", "aten::resolve")),
]

# run in a fresh process inside a checkout: its own predict_action, or an artifact
CHECKOUT_SNIPPET = """
import json, torch
from dp.bench.latency import BASE, _policy, measure
torch.manual_seed(0)
policy = _policy("dit", BASE)
policy.set_sampler("{sampler}", {steps})
print(json.dumps(measure(policy, calls={calls})))
"""
ARTIFACT_SNIPPET = """
import json, time, numpy as np, torch
from dp.runtime.artifact import ExportedPolicy
policy = ExportedPolicy({path!r}, seed=0)
obs = {{"state": torch.randn(1, policy.n_obs_steps, 39)}}
for _ in range(10):
    policy.predict_action(obs)
samples = []
for _ in range({calls}):
    t0 = time.perf_counter(); policy.predict_action(obs); samples.append(time.perf_counter() - t0)
ms = np.asarray(samples) * 1000
print(json.dumps({{"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}}))
"""


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix product (linear, addmm, mm, bmm, matmul) a computation runs, with copies of its
    operands."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS:
            self.calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], dict(kwargs)))
        return func(*args, **kwargs)


def peak_gemm_gflops(n: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """The machine's GEMM rate on a large square fp32 product (all of torch's threads): the peak the
    FLOP bound divides by."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        samples.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(samples) / 1e9


def gemm_floor(policy, obs: dict, repeats: int = 50, device: str = "cpu") -> dict:
    """The prediction's matrix products: their GFLOP, the FLOP bound (that arithmetic at the measured
    peak GEMM rate) and the time of running them alone, back to back, each as its own op call
    (``replay_ms``: at batch 1 that is per-call cost more than arithmetic)."""
    with torch.inference_mode(), MatmulRecorder() as rec:
        policy.predict_action(obs)
    flops = 0
    for func, args, _ in rec.calls:
        if func is torch.ops.aten.linear.default:  # x [..., K], weight [N, K]
            flops += 2 * args[0].numel() * args[1].shape[0]
        else:
            a, b = (args[1], args[2]) if func is torch.ops.aten.addmm.default else (args[0], args[1])
            flops += 2 * (a.numel() // a.shape[-1]) * a.shape[-1] * b.shape[-1]

    def replay():
        for func, args, kwargs in rec.calls:
            func(*args, **kwargs)
        sync(device)

    with torch.inference_mode():
        for _ in range(5):
            replay()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            replay()
            samples.append(time.perf_counter() - t0)
    peak = peak_gemm_gflops(device=device)
    return {"gemms": len(rec.calls), "gflop": flops / 1e9, "peak_gflops": peak, "bound_ms": flops / 1e9 / peak * 1000,
            "replay_ms": 1000 * statistics.median(samples)}


def profile_table(policy, obs: dict, predictions: int = 20) -> tuple[list[dict], float]:
    """Self CPU time per op class per prediction (torch.profiler), and the wall time per prediction."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(5):
            policy.predict_action(obs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(predictions):
                policy.predict_action(obs)
            wall_ms = 1000 * (time.perf_counter() - t0) / predictions
    per_class: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        name = next((c for c, prefixes in OP_CLASSES if e.key.startswith(prefixes)), "other ops")
        per_class[name][0] += e.self_cpu_time_total / 1000 / predictions
        per_class[name][1] += e.count / predictions
    op_ms = sum(v[0] for v in per_class.values())
    rows = [{"class": c, "ms_per_prediction": v[0], "calls_per_prediction": v[1], "share": v[0] / wall_ms}
            for c, v in sorted(per_class.items(), key=lambda kv: -kv[1][0])]
    rows.append({"class": "outside ops (Python, dispatch, profiler)", "ms_per_prediction": max(0.0, wall_ms - op_ms),
                 "calls_per_prediction": "", "share": max(0.0, wall_ms - op_ms) / wall_ms})
    return rows, wall_ms


class CompiledPrediction:
    """``torch.compile`` (inductor, one graph) of the planned prediction, with ``predict_action``."""

    def __init__(self, policy, batch: int = 1):
        from dp.deploy import PlannedPrediction

        self.policy, self.batch, self.n_obs_steps = policy, batch, policy.n_obs_steps
        self.planned = PlannedPrediction(policy, batch)
        self.run = torch.compile(self.planned, fullgraph=True, dynamic=False)

    def predict_action(self, obs: dict) -> torch.Tensor:
        device = self.policy.device
        with torch.inference_mode():
            return self.run(*[obs[k].to(device) for k in self.planned.keys], self.policy.prior_sample(self.batch))


def _subprocess_median(code: str, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"timing in {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(against: str | None = None, rounds: int = ROUNDS, calls: int = CALLS, device: str = "cpu") -> dict:
    from dp.deploy.export import export_policy

    torch.manual_seed(0)
    policy = _policy("dit", BASE).to(device)
    policy.set_sampler(*SAMPLER)
    obs = {"state": torch.randn(1, policy.n_obs_steps, 39)}
    floor = gemm_floor(policy, obs, device=device)
    rows = [{"path": f"FLOP bound ({floor['gflop']:.3f} GFLOP at {floor['peak_gflops']:.0f} GFLOP/s)",
             "median_ms": floor["bound_ms"]},
            {"path": f"the prediction's {floor['gemms']} matrix products alone, one op call each",
             "median_ms": floor["replay_ms"]}]

    policy.planning = False
    rows.append({"path": "eager unplanned (grid read as it runs)", **measure(policy, calls, device=device)})
    policy.planning = True
    rows.append({"path": "eager planned (predict_action)", **measure(policy, calls, device=device)})

    compiled = CompiledPrediction(policy)
    t0 = time.perf_counter()
    compiled.predict_action(obs)
    compile_s = time.perf_counter() - t0
    rows.append({"path": f"compiled planned (torch.compile, {compile_s:.0f} s to compile)",
                 **measure(compiled, calls, device=device)})
    streaming = _policy("dit", {**BASE, "n_obs_steps": 1, "streaming": {"train_fraction": 0.8}}).to(device)
    streaming.set_sampler("streaming", 2)  # 2 chunks: one network pass per call once warm
    # another case (one pass, not ten): no ratio to the DDIM-10 rows' bound or baseline
    streaming.reset()
    rows.append({"path": "streaming-2 (one pass per call), eager", "other_case": True,
                 **measure(streaming, calls, device=device)})
    if device.startswith("cuda"):
        from dp.deploy.graphed import GraphedPrediction

        for batch in (1, 64):
            graphed = GraphedPrediction(policy, batch)
            obs_b = {"state": torch.randn(batch, policy.n_obs_steps, 39)}
            graphed.predict_action(obs_b)
            rows.append({"path": f"CUDA graph, batch {batch}", "other_case": batch != 1,
                         **measure(graphed, calls, device=device, obs=obs_b)})
        graphed = GraphedPrediction(streaming)
        rows.append({"path": "streaming-2 CUDA graph, batch 1", "other_case": True,
                     **measure(graphed, calls, device=device, obs={"state": torch.randn(1, 1, 39)})})
        rows.append({"path": "eager planned, batch 64", "other_case": True,
                     **measure(policy, calls, device=device, obs={"state": torch.randn(64, policy.n_obs_steps, 39)})})

    # interleaved, a fresh process each: this checkout, its artifact, the other checkout
    sampler, steps = SAMPLER
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "artifact"
        t0 = time.perf_counter()
        export_policy(policy, artifact)
        export_s = time.perf_counter() - t0
        stream_artifact = Path(tmp) / "streaming"
        t0 = time.perf_counter()
        export_policy(streaming, stream_artifact)
        stream_export_s = time.perf_counter() - t0
        jobs = {"this checkout, predict_action": CHECKOUT_SNIPPET.format(sampler=sampler, steps=steps, calls=calls),
                f"dp-export artifact ({export_s:.0f} s to export)": ARTIFACT_SNIPPET.format(path=str(artifact),
                                                                                            calls=calls),
                f"streaming-2 dp-export artifact ({stream_export_s:.0f} s to export)": ARTIFACT_SNIPPET.format(
                    path=str(stream_artifact), calls=calls)}
        roots = {name: ROOT for name in jobs}
        if against:
            other = Path(against).resolve()
            name = f"other checkout ({other.name}), predict_action"
            jobs[name] = CHECKOUT_SNIPPET.format(sampler=sampler, steps=steps, calls=calls)
            roots[name] = other
        samples: dict[str, list[dict]] = defaultdict(list)
        names = list(jobs)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                samples[name].append(_subprocess_median(jobs[name], roots[name]))
                print(f"round {r}: {name}: {samples[name][-1]['median_ms']:.2f} ms", flush=True)
    for name in names:
        med = statistics.median(s["median_ms"] for s in samples[name])
        rows.append({"path": name, "median_ms": med, "other_case": name.startswith("streaming"),
                     "p99_ms": statistics.median(s["p99_ms"] for s in samples[name]),
                     "round_medians_ms": [round(s["median_ms"], 3) for s in samples[name]]})
    same = [r for r in rows if not r.pop("other_case", False)]
    for r in same:
        r["x_bound"] = r["median_ms"] / floor["bound_ms"]
    if against:
        before = next(r["median_ms"] for r in rows if r["path"].startswith("other checkout"))
        for r in same:
            r["speedup_vs_other"] = before / r["median_ms"]
    return {"rows": rows, "floor": floor}


def main(device: str = "cpu", against: str | None = None) -> None:
    torch.manual_seed(0)
    result = run(against, device=device)
    columns = ["path", "median_ms", "p99_ms", "x_bound"] + (["speedup_vs_other"] if against else [])
    write_result("inference" if device == "cpu" else "inference_cuda", result["rows"], columns,
                 {"case": f"dit action_patch=4 {SAMPLER[0]}-{SAMPLER[1]}, batch 1", "rounds": ROUNDS,
                  "calls": CALLS, "gemms": result["floor"]}, device=device)
    policy = _policy("dit", BASE)
    policy.set_sampler(*SAMPLER)
    table, wall = profile_table(policy, {"state": torch.randn(1, policy.n_obs_steps, 39)})
    m = machine_info(device)
    lines = [f"predict_action profile ({SAMPLER[0]}-{SAMPLER[1]}, batch 1) on {m['cpu']} ({m['cpu_count']} cores, "
             f"torch {m['torch']}, {torch.get_num_threads()} threads): {wall:.2f} ms per prediction under the "
             f"profiler", "", "| op class | ms per prediction | calls per prediction | share |", "|---|---|---|---|"]
    for r in table:
        calls = f"{r['calls_per_prediction']:.0f}" if r["calls_per_prediction"] != "" else ""
        lines.append(f"| {r['class']} | {r['ms_per_prediction']:.2f} | {calls} | {r['share']:.0%} |")
    (RESULTS_DIR / "inference_profile.md").write_text("\n".join(lines) + "\n")
    (RESULTS_DIR / "inference_profile.json").write_text(json.dumps({"machine": m, "wall_ms": wall, "rows": table},
                                                                   indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
