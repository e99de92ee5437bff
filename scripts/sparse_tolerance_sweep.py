"""PSNR of sparse clip attention against full, per setting, on a trained policy=video run's held-out clips.

    python scripts/sparse_tolerance_sweep.py runs/video_mw_push [--clips 16]

Settings: the default (dense_calls 1, every head a pattern), more dense calls, and a dense fallback for heads
whose better pattern misses full attention by more than a tolerance. Prints the PSNR change per predicted
offset and how many head-calls took each pattern (what dp-bench video_sparse reports for the default).
"""
import argparse

import dp.eval.video as video_eval
from dp.policies.registry import load_policy

SETTINGS = [{"dense_calls": 1, "tolerance": None}, {"dense_calls": 3, "tolerance": None}] + \
    [{"dense_calls": 1, "tolerance": t} for t in (0.05, 0.1, 0.2, 0.35, 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--clips", type=int, default=16)
    args = parser.parse_args()
    chosen, models = {}, []

    def load(*a, **k):  # the run's model with this setting's sparse state
        model = load_policy(*a, **k)
        for key, value in chosen.items():
            setattr(model.sparse_state, key, value)
        models.append(model)
        return model

    video_eval.load_policy = load
    full = video_eval.evaluate_video(args.run, n_clips=args.clips, output_dir="/tmp/sparse_sweep/full", n_grid=0,
                                     attention="full", progress=False)
    base = [d["psnr"] for d in full["per_offset"]]
    print("full attention PSNR per offset:", [round(p, 2) for p in base])
    for setting in SETTINGS:
        chosen.clear()
        chosen.update(setting)
        got = video_eval.evaluate_video(args.run, n_clips=args.clips, output_dir="/tmp/sparse_sweep/sparse", n_grid=0,
                                        attention="sparse", progress=False)
        change = [round(d["psnr"] - b, 2) for d, b in zip(got["per_offset"], base)]
        print(setting, "PSNR change (dB):", change, "head-calls:", dict(models[-1].sparse_state.counts))


if __name__ == "__main__":
    main()
