"""`dp-video-eval checkpoint=RUN n_clips=64` (see dp/configs/video_eval.yaml)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dp.cli_errors import run_config
from dp.constants import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="video_eval", version_base=None)
def _main(cfg: DictConfig) -> None:
    from dp.eval.video import evaluate_video

    s = run_config(evaluate_video, cfg)
    for r in s["per_offset"]:
        print(f"+{r['offset']}: PSNR {r['psnr']:.2f} dB (copy last {r['copy_last_psnr']:.2f}, "
              f"{r['psnr_gain_db']:+.2f}), SSIM {r['ssim']:.3f} (copy last {r['copy_last_ssim']:.3f})")
    print(f"report: {s['report']}")
    if s.get("grid"):
        print(f"video: {s['grid']}")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
