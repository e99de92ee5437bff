"""Constants several packages share (configs, seeds). Imports nothing."""
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")  # hydra configs of every CLI
SEED_STRIDE = 1_000_000  # dp-collect: seeds of task k in a set start at seed + k * SEED_STRIDE
EVAL_SEED_BASE = 1_000_000_000  # evaluation seeds start here: never used for collection
# diffusion_policy's stores call the camera "img"; dp's envs call it "image" (every other key is shared)
ENV_KEY_OF_STORE_KEY = {"img": "image"}
