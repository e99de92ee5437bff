"""Which initial states rs_square policies fail, and where they sit in the scripted expert's plan.

    python scripts/square_failures.py [--plan two_switches] RUN/eval_quality RUN/eval_ta1 ...

For each evaluation directory (a dp-eval output with report.json) it counts the failures per initial state,
then prints every initial state that failed at least once with the nut's yaw, its quaternion's w (robosuite's
SquareNut_quat keeps z >= 0, so w flips sign as the yaw crosses 0), and the expert's plan there (grasp yaw
minus nut yaw, final nut yaw; ``--plan``: the expert variant the runs' demonstrations came from, default
least_turn), the yaws where that plan switches, and the failure rate of the initial states
within NEAR degrees of a switch against the rest. Evaluations must share their initial states (dp-eval's
defaults do).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from dp.envs.registry import make
from dp.envs.robosuite_experts import SquareExpert, yaw_of

NUT_QUAT = slice(19, 23)  # SquareNut_quat in rs_square's state (robot 9, then object-state 14)
NEAR = 15.0  # degrees from a plan switch


def plan_of(expert: SquareExpert, nut_yaw: float) -> tuple[int, int]:
    """(grasp hand yaw - nut yaw, final nut yaw), degrees."""
    grasp, _, final = expert._plan(nut_yaw)
    return round(np.degrees(grasp - nut_yaw)), round(np.degrees(final))


def main(evals: list[str], plan: str = "least_turn") -> None:
    failures, seeds = Counter(), None
    for d in evals:
        episodes = next(iter(json.loads((Path(d) / "report.json").read_text())["per_task"].values()))["episode_results"]
        seeds = seeds or [e["seed"] for e in episodes]
        failures.update(e["seed"] for e in episodes if not e["success"])
    env, expert = make("rs_square"), SquareExpert(plan)
    switches, prev = [], None
    for deg in np.arange(-180, 180, 0.5):
        plan = plan_of(expert, np.radians(deg))
        if prev is not None and plan != prev:
            switches.append(float(deg))
        prev = plan
    yaws = {}
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        yaws[seed] = (yaw_of(obs["state"][NUT_QUAT]), float(obs["state"][NUT_QUAT][3]))
    print(f"{len(evals)} evaluations of {len(seeds)} initial states; failures per state, most first")
    print("index | seed | failed | nut yaw (deg) | quat w | plan (grasp offset, final yaw)")
    for seed, n in failures.most_common():
        yaw, w = yaws[seed]
        print(f"{seeds.index(seed)} | {seed} | {n}/{len(evals)} | {np.degrees(yaw):.1f} | {w:.2f} | "
              f"{plan_of(expert, yaw)}")
    print("the expert's plan switches at nut yaw (deg):", switches)

    def gap(seed: int) -> float:  # degrees to the nearest switch, around the circle
        return min(abs((np.degrees(yaws[seed][0]) - s + 180) % 360 - 180) for s in switches)

    for label, group in (("within", [s for s in seeds if gap(s) <= NEAR]), ("beyond", [s for s in seeds if gap(s) > NEAR])):
        lost = sum(failures[s] for s in group)
        print(f"{len(group)} initial states {label} {NEAR:.0f} deg of a switch: {lost} failures in "
              f"{len(group) * len(evals)} episodes ({lost / max(len(group) * len(evals), 1):.1%})")
    env.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", help="dp-eval output directories (each with report.json)")
    parser.add_argument("--plan", default="least_turn", choices=SquareExpert.PLANS)
    args = parser.parse_args()
    main(args.evals, args.plan)
