"""`dp-eval checkpoint=PATH n_episodes=50 output_dir=DIR` (see dp/configs/eval.yaml)."""
from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from dp.cli_errors import run_config
from dp.constants import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base=None)
def _main(cfg: DictConfig) -> None:
    from dp.eval.evaluate import evaluate_checkpoint

    s = run_config(evaluate_checkpoint, cfg)
    lo, hi = s["wilson95"]
    print(f"success {s['success_rate']:.1%} over {s['episodes']} episodes (95% CI {lo:.1%}-{hi:.1%}); "
          f"latency median {s['latency_ms']['median']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms")
    if s["nonfinite_episodes"]:
        print(f"warning: {s['nonfinite_episodes']} of {s['episodes']} episodes ended on a non-finite (NaN/inf) "
              "prediction: counted as failures, the action was never sent to the env", file=sys.stderr)
    if len(s["per_task"]) > 1:
        for task, v in s["per_task"].items():
            print(f"  {task}: {v['success_rate']:.1%}")
    print(f"report: {s['report']}")
    for v in s["videos"]:
        print(f"video: {v}")
    print(json.dumps({k: s[k] for k in ("success_rate", "wilson95", "episodes", "nonfinite_episodes", "latency_ms")}))


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
