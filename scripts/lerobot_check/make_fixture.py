"""Write a tiny LeRobotDataset v3 with lerobot's own code (side venv): 3 episodes, state 4, action 2, one camera video."""
import sys, shutil
from pathlib import Path
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root = Path(sys.argv[1])
shutil.rmtree(root, ignore_errors=True)
features = {
    "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "vx", "vy"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["ax", "ay"]},
    "observation.images.front": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
}
ds = LeRobotDataset.create("dp/tiny", fps=10, features=features, root=root, robot_type="toy", use_videos=True)
rng = np.random.default_rng(0)
for ep, (length, task) in enumerate([(12, "push the block"), (9, "reach the goal"), (15, "push the block")]):
    for t in range(length):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[:, :, 0] = 8 * t; frame[:, :, 1] = 80 * ep; frame[4:12, 4 + t:12 + t, 2] = 255
        ds.add_frame({"observation.state": np.array([ep, t, 0.5 * t, -t], np.float32),
                      "action": np.array([t / 10, -ep], np.float32),
                      "observation.images.front": frame, "task": task})
    ds.save_episode()
ds.finalize()
print("wrote", root)
