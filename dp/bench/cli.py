"""`dp-bench [NAME ...]`: run benchmarks and write bench/results/<name>.json.

`dp-bench quality --tasks ...` trains and evaluates policies over seeds (its own options:
`dp-bench quality --help`)."""
from __future__ import annotations

import argparse
import importlib
import sys

from dp.cli_errors import user_errors_exit

BENCHMARKS = {
    "dataset": "dp.bench.dataset",
    "eval_envs": "dp.bench.eval_envs",
    "inference": "dp.bench.inference",
    "latency": "dp.bench.latency",
    "lazy_frames": "dp.bench.lazy_frames",
    "mode": "dp.bench.mode",
    "sampling": "dp.bench.sampling",
    "rdt": "dp.bench.rdt",
    "tokens": "dp.bench.tokens",
    "train_step": "dp.bench.train_step",
    "versus": "dp.bench.versus",
    "video_sparse": "dp.bench.video_sparse",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quality"]:
        from dp.bench import quality

        with user_errors_exit():
            quality.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="dp-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--device", default="cpu",
                        help="cpu | cuda[:N]: where latency and train_step run; results on CUDA are "
                             "written as <name>_cuda.json beside the CPU ones")
    parser.add_argument("--checkpoint", default=None,
                        help="mode / video_sparse: time a trained checkpoint (policy=mode: its routes; "
                             "policy=video: also PSNR dense vs sparse) instead of random weights; eval_envs: "
                             "the checkpoint dp-eval rolls out")
    parser.add_argument("--against", default=None,
                        help="versus, inference: another checkout to time batch-1 latency against, interleaved")
    args = parser.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if n not in ("versus", "eval_envs")]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.checkpoint and len(names) != 1 or args.checkpoint and names[0] not in ("mode", "video_sparse", "eval_envs"):
        parser.error("--checkpoint applies to one benchmark, mode, video_sparse or eval_envs: "
                     "dp-bench mode --checkpoint PATH")
    if "versus" in names and args.against is None or args.against is not None and set(names) - {"versus", "inference"}:
        parser.error("dp-bench versus --against PATH (and --against only with versus or inference)")
    with user_errors_exit():
        for name in names:
            extra = {"checkpoint": args.checkpoint} if args.checkpoint else {}
            extra.update({"against": args.against} if name in ("versus", "inference") else {})
            importlib.import_module(BENCHMARKS[name]).main(device=args.device, **extra)


if __name__ == "__main__":
    main()
