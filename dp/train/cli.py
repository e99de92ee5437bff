"""`dp-train`: hydra entry point around dp.train.trainer.Trainer (see dp/configs/train.yaml)."""
from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from dp.cli_errors import user_errors_exit
from dp.constants import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base=None)
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dp.recipes import apply_recipe
    from dp.sweep import job_output
    from dp.train.trainer import Trainer

    cfg.output_dir = job_output(cfg.output_dir)
    try:
        with user_errors_exit():
            apply_recipe(cfg, list(HydraConfig.get().overrides.task))
            summary = Trainer(cfg).run()
    except KeyboardInterrupt as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(summary))


def main() -> None:
    from dp.overrides import replace_mappings_in_argv

    replace_mappings_in_argv()
    _main()


if __name__ == "__main__":
    main()
