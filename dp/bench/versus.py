"""Batch-1 ``predict_action`` latency of this checkout against another one, interleaved.

    dp-bench versus --against /path/to/other/checkout

Each round times the default DiT policy (state 39, action 4, ``action_patch`` 4, DDIM-10;
``dp.bench.latency``'s first case) in a fresh process per checkout, the two checkouts in
alternating order, so that machine load drifts over both alike. Reports each checkout's median
of the round medians and the ratio this / other (below 1: this checkout is faster).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from dp.results import write_result

ROUNDS = 10
# run inside each checkout: its own dp.bench.latency builds and times the policy
SNIPPET = """
import json, torch
from dp.bench.latency import BASE, _policy, measure
torch.manual_seed(0)
print(json.dumps(measure(_policy("dit", BASE), calls={calls})))
"""


def time_checkout(root: Path, calls: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(calls=calls)], cwd=root, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def main(device: str = "cpu", against: str | None = None, rounds: int = ROUNDS, calls: int = 200) -> None:
    if against is None:
        raise SystemExit("dp-bench versus needs --against PATH: the checkout to compare with")
    here, other = Path(__file__).resolve().parents[2], Path(against).resolve()
    samples: dict[str, list[float]] = {"this": [], "other": []}
    for r in range(rounds):
        order = [("this", here), ("other", other)] if r % 2 == 0 else [("other", other), ("this", here)]
        for name, root in order:
            samples[name].append(time_checkout(root, calls))
            print(f"round {r}: {name} {samples[name][-1]:.2f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [{"checkout": k, "path": str(p), "median_ms": med[k], "round_medians_ms": [round(x, 3) for x in samples[k]]}
            for k, p in (("this", here), ("other", other))]
    rows[0]["ratio_this_over_other"] = med["this"] / med["other"]
    write_result("latency_versus", rows, ["checkout", "median_ms", "ratio_this_over_other"],
                 {"rounds": rounds, "calls_per_round": calls, "case": "dit action_patch=4 ddim 10, batch 1"})
