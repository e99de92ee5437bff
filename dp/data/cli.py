"""`dp-data`: inspect, validate and import demonstration stores.

    dp-data info PATH [--json]
    dp-data validate PATH [--require KEY ...] [--quick]
    dp-data import-robomimic IN.hdf5 OUT.zarr [--state-keys a,b]
    dp-data import-lerobot DIR OUT.zarr        # a LeRobotDataset (v3.0) directory
    dp-data export-lerobot IN.zarr DIR [--fps 10] [--robot-type NAME]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from dp.data.replay_buffer import ReplayBuffer
from dp.data.validate import find_problems


def describe(buffer: ReplayBuffer) -> dict:
    """Plain-dict summary: keys, shapes, dtypes, episodes, length stats, attributes."""
    lengths = buffer.episode_lengths
    stats = (
        {
            "min": int(lengths.min()),
            "max": int(lengths.max()),
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
        }
        if len(lengths)
        else {}
    )
    return {
        "zarr_format": buffer.zarr_format,
        "episodes": buffer.n_episodes,
        "steps": buffer.n_steps,
        "episode_length": stats,
        "keys": {
            k: {"shape": list(buffer.data[k].shape), "dtype": str(buffer.data[k].dtype)} for k in buffer.keys()
        },
        "attrs": {k: v for k, v in dict(buffer.attrs).items() if k not in ("seeds",)},
    }


def _print_info(path: str, info: dict) -> None:
    print(f"{path}  (zarr format {info['zarr_format']})")
    print(f"  episodes {info['episodes']}, steps {info['steps']}")
    if info["episode_length"]:
        s = info["episode_length"]
        print(f"  episode length min {s['min']}  median {s['median']:.0f}  mean {s['mean']:.1f}  max {s['max']}")
    width = max((len(k) for k in info["keys"]), default=4)
    for k, v in info["keys"].items():
        print(f"  data/{k:<{width}}  {str(tuple(v['shape'])):<22} {v['dtype']}")
    for k in ("task", "tasks", "expert_success_rate", "dp_version"):
        if k in info["attrs"]:
            print(f"  {k}: {info['attrs'][k]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-data", description="Inspect, validate and import demonstration stores.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="keys, shapes, dtypes, episodes, length stats")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("validate", help="exit 0 when the store is valid")
    p.add_argument("path")
    p.add_argument("--require", nargs="*", default=["action"], help="keys that must exist (default: action)")
    p.add_argument(
        "--quick", action="store_true", help="check metadata and chunk presence only; skip reading every chunk"
    )
    p = sub.add_parser("import-robomimic", help="robomimic hdf5 -> zarr")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--state-keys", default="", help="comma-separated obs keys to concatenate into data/state")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("import-lerobot", help="LeRobotDataset v3.0 directory (parquet + mp4) -> zarr")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("export-lerobot", help="zarr -> LeRobotDataset v3.0 directory (parquet + AV1 mp4)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the store's, else 10)")
    p.add_argument("--robot-type", default=None)
    p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "info":
            info = describe(ReplayBuffer.open(args.path))
            print(json.dumps(info, indent=2, default=str)) if args.json else _print_info(args.path, info)
        elif args.cmd == "validate":
            buffer = ReplayBuffer.open(args.path)
            problems = find_problems(buffer, tuple(args.require), quick=args.quick)
            if problems:
                print(f"INVALID {args.path}", file=sys.stderr)
                for prob in problems:
                    print(f"  {prob}", file=sys.stderr)
                return 1
            quick = " (quick: chunk data not read)" if args.quick else ""
            print(f"OK {args.path}: {buffer.n_episodes} episodes, {buffer.n_steps} steps, keys {buffer.keys()}{quick}")
        elif args.cmd == "import-robomimic":
            from dp.data.robomimic import import_robomimic

            keys = [k for k in args.state_keys.split(",") if k]
            out = import_robomimic(args.src, args.dst, keys, args.overwrite)
            print(f"Imported {out.n_episodes} episodes ({out.n_steps} steps) to {args.dst}: keys {out.keys()}")
        elif args.cmd == "import-lerobot":
            from dp.data.lerobot import import_lerobot

            out = import_lerobot(args.src, args.dst, args.overwrite)
            print(f"Imported {out.n_episodes} episodes ({out.n_steps} steps) to {args.dst}: keys {out.keys()}")
        elif args.cmd == "export-lerobot":
            from dp.data.lerobot import export_lerobot

            info = export_lerobot(args.src, args.dst, args.fps, args.robot_type, args.overwrite)
            print(f"Exported {info['total_episodes']} episodes ({info['total_frames']} frames, {info['fps']:g} fps) "
                  f"to {args.dst}: features {sorted(info['features'])}")
    except Exception as e:  # noqa: BLE001 - a user error ends with its message, anything else is re-raised
        from dp.cli_errors import EXIT_USER_ERROR, user_error_message

        message = user_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
