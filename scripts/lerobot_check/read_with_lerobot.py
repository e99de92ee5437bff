"""Load a LeRobot v3 directory with lerobot 0.4.4's LeRobotDataset. Its video decoders need torchvision<0.26 or
torchcodec, which this side env lacks, so frames are decoded here with PyAV at the timestamps lerobot asks for,
checked against its tolerance (the rest is lerobot's own code)."""
import sys
import av
import numpy as np
import torch
import lerobot.datasets.video_utils as vu
import lerobot.datasets.lerobot_dataset as ld

def decode(video_path, timestamps, tolerance_s, backend=None):
    with av.open(str(video_path)) as c:
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    times = np.array([t for t, _ in frames])
    out = []
    for ts in timestamps:
        i = int(np.argmin(np.abs(times - ts)))
        assert abs(times[i] - ts) < tolerance_s, (ts, times[i])
        out.append(torch.from_numpy(frames[i][1]).permute(2, 0, 1).float() / 255)
    return torch.stack(out)

vu.decode_video_frames = decode
ld.decode_video_frames = decode
ds = ld.LeRobotDataset("dp/check", root=sys.argv[1])
print(ds.num_episodes, ds.num_frames, ds.fps, ds.meta.tasks.index.tolist())
for i in (0, 11, 12, 35):
    item = ds[i]
    img = item["observation.images.front"]
    print(i, item["episode_index"].item(), item["frame_index"].item(), item["task"], item["observation.state"].tolist(),
          tuple(img.shape), (img[:, 16, 16] * 255).round().tolist())
