"""Bad input and faults, tried the way a new user or an attacker would, through the real CLIs.

    .venv/bin/python scripts/fault_campaign.py [--out bench/results/fault_campaign.json]

Builds a toy store and a tiny trained checkpoint in a temp directory, damages copies of
them, runs each command in a fresh process and counts, per class of bad input:
- tracebacks: a Python traceback on stderr (a user error must be one line);
- silent acceptance: the command exited 0 where it had to refuse;
- code execution: a crafted checkpoint's payload ran (a marker file appeared or a file changed);
- non-finite actions sent: NaN/inf in the actions dp-control logged as sent (ticks.csv).
Writes the per-case table and the totals as JSON and prints a summary. About 5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.horizon=8", "policy.n_action_steps=4"]
QUIET = ["logging.mode=disabled", "progress=false", "training.batch_size=16", "training.val_every=0",
         "training.warmup_steps=5"]


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(cmd: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    return done.returncode, done.stdout, done.stderr


def rewrite(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and its checksum in meta.json: a crafted checkpoint, not a damaged one."""
    (ckpt / name).write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def chunk_files(store: Path, key: str) -> list[Path]:
    return sorted(p for p in (store / "data" / key / "c").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fault_campaign.json"))
    args = parser.parse_args()
    import torch
    import yaml

    work = Path(tempfile.mkdtemp(prefix="dp_faults_"))
    t0 = time.perf_counter()
    store = work / "toy.zarr"
    rc, _, err = run([str(BIN / "dp-collect"), "task=toy", "n_episodes=20", f"output={store}", "progress=false"], work)
    assert rc == 0, err
    run_dir = work / "run"
    rc, _, err = run([str(BIN / "dp-train"), "task=toy", f"task.dataset_path={store}", f"output_dir={run_dir}",
                      "training.steps=20", "training.checkpoint_every=10", *TINY, *QUIET], work)
    assert rc == 0, err
    ckpt = (run_dir / "checkpoints" / "latest").resolve()

    def store_copy(name: str) -> Path:
        dst = work / name
        shutil.copytree(store, dst)
        return dst

    def ckpt_copy(name: str) -> Path:
        dst = work / name / "checkpoints" / ckpt.name
        shutil.copytree(ckpt, dst)
        return dst

    def craft(name: str, policy_cfg: dict) -> Path:
        dst = ckpt_copy(name)
        cfg = yaml.safe_load((dst / "config.yaml").read_text())
        cfg["policy"] = policy_cfg
        rewrite(dst, "config.yaml", yaml.safe_dump(cfg).encode())
        return dst

    # ---------------------------------------------------------------- damaged data
    missing = store_copy("missing_chunk.zarr")
    chunk_files(missing, "action")[0].unlink()
    flipped = store_copy("flipped.zarr")
    f = chunk_files(flipped, "state")[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    truncated = store_copy("truncated_chunk.zarr")
    f = chunk_files(truncated, "action")[0]
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    bad_meta = store_copy("truncated_meta.zarr")
    meta = bad_meta / "data" / "action" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    from dp.data import ReplayBuffer

    gray = work / "gray.zarr"
    buf = ReplayBuffer.create(gray)
    buf.add_episode({"img": np.zeros((10, 8, 8), np.uint8), "action": np.zeros((10, 2), np.float32)})
    (work / "a_file").write_text("x")

    # ---------------------------------------------------------------- crafted and damaged checkpoints
    real_policy = yaml.safe_load((ckpt / "config.yaml").read_text())["policy"]
    c_torch = craft("crafted_torch", {"_target_": "torch.load", "f": "PAYLOAD", "weights_only": False})
    torch.save(Payload(work / "pwned_torch"), c_torch / "payload.pt")
    rewrite(c_torch, "config.yaml", (c_torch / "config.yaml").read_text().replace(
        "PAYLOAD", str(c_torch / "payload.pt")).encode())
    c_numpy = craft("crafted_numpy", {**real_policy, "process": {"_target_": "numpy.load", "allow_pickle": True,
                                                                  "file": str(work / "payload.npy")}})
    (work / "payload.npy").write_bytes(pickle.dumps(Payload(work / "pwned_numpy")))
    victim = work / "victim.txt"
    victim.write_text("precious")
    c_open = craft("crafted_open", {"_target_": "builtins.open", "file": str(victim), "mode": "w"})
    from safetensors.torch import load_file, save_file

    nan_ckpt = ckpt_copy("nan_weights")
    w = load_file(str(nan_ckpt / "ema.safetensors"))
    next(v for k, v in w.items() if v.is_floating_point() and "normalizer" not in k).fill_(float("nan"))
    save_file(w, str(work / "w.safetensors"))
    rewrite(nan_ckpt, "ema.safetensors", (work / "w.safetensors").read_bytes())
    blown = ckpt_copy("blown")  # finite weights whose predictions overflow to NaN
    for name in ("weights.safetensors", "ema.safetensors"):
        w = load_file(str(blown / name))
        w = {k: (v * 1e30 if v.is_floating_point() and not k.startswith("normalizer") else v) for k, v in w.items()}
        save_file(w, str(work / "w.safetensors"))
        rewrite(blown, name, (work / "w.safetensors").read_bytes())
    trunc_w = ckpt_copy("truncated_weights")
    (trunc_w / "ema.safetensors").write_bytes((trunc_w / "ema.safetensors").read_bytes()[:200])
    no_cfg = ckpt_copy("no_config")
    (no_cfg / "config.yaml").unlink()
    mismatch = ckpt_copy("mismatch")
    cfg = yaml.safe_load((mismatch / "config.yaml").read_text())
    cfg["policy"]["dim"] = 64
    rewrite(mismatch, "config.yaml", yaml.safe_dump(cfg).encode())

    # ---------------------------------------------------------------- runs to resume
    def run_copy(name: str) -> Path:
        dst = work / name
        shutil.copytree(run_dir, dst, symlinks=True)
        return dst

    dangling = run_copy("dangling")
    shutil.rmtree((dangling / "checkpoints" / "latest").resolve())
    corrupt_latest = run_copy("corrupt_latest")
    f = (corrupt_latest / "checkpoints" / "latest").resolve() / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    none_readable = run_copy("none_readable")
    for p in (none_readable / "checkpoints").glob("step_*"):
        (p / "weights.safetensors").write_bytes(b"garbage")

    train = [str(BIN / "dp-train"), "task=toy", f"task.dataset_path={store}", *TINY, *QUIET]
    dp_eval = [str(BIN / "dp-eval"), "n_episodes=2", "n_envs=2", "n_videos=0", "progress=false"]
    control = [str(BIN / "dp-control"), "robot=sim", "hz=50", "max_ticks=100", "mode=sync", "progress=false",
               "max_consecutive_misses=0", "torch_threads=1"]
    out = lambda name: f"output_dir={work / 'out' / name}"  # noqa: E731
    # (class, case, command, expected exit codes, stderr must contain)
    cases = [
        ("corrupt data", "missing chunk: validate", [str(BIN / "dp-data"), "validate", str(missing)], {1}, "missing"),
        ("corrupt data", "missing chunk: train", [*train, f"task.dataset_path={missing}", out("m")], {2}, "missing"),
        ("corrupt data", "flipped byte: validate", [str(BIN / "dp-data"), "validate", str(flipped)], {1}, "checksum"),
        ("corrupt data", "flipped byte: train", [*train, f"task.dataset_path={flipped}", out("f")], {2}, "checksum"),
        ("corrupt data", "truncated chunk: validate", [str(BIN / "dp-data"), "validate", str(truncated)], {1}, ""),
        ("corrupt data", "truncated chunk: train", [*train, f"task.dataset_path={truncated}", out("t")], {2}, ""),
        ("corrupt data", "truncated zarr.json", [str(BIN / "dp-data"), "validate", str(bad_meta)], {2}, "zarr.json"),
        ("corrupt data", "truncated zarr.json: train", [*train, f"task.dataset_path={bad_meta}", out("z")], {2},
         "zarr.json"),
        ("corrupt data", "image without channel axis", [str(BIN / "dp-data"), "validate", str(gray)], {1}, "[T, H, W"),
        ("corrupt data", "not a store", [str(BIN / "dp-data"), "validate", str(work / "a_file")], {2}, ""),
        ("mismatched data", "toy store under task=mw_push",
         [str(BIN / "dp-train"), "task=mw_push", f"task.dataset_path={store}", *TINY, *QUIET, out("mm")], {2},
         "allow_mismatch"),
        ("bad config", "batch_size=0", [*train, "training.batch_size=0", out("b")], {2}, "batch_size"),
        ("bad config", "steps=0", [*train, "training.steps=0", out("s")], {2}, "training.steps"),
        ("bad config", "checkpoint_every=-1", [*train, "training.checkpoint_every=-1", out("c")], {2},
         "checkpoint_every"),
        ("bad config", "dim not divisible by heads", [*train, "policy.dim=33", out("d")], {2}, "divisible"),
        ("bad config", "unknown policy option", [*train, "+policy.dimm=3", out("u")], {2}, "dimm"),
        ("bad config", "output_dir is a file", [*train, f"output_dir={work / 'a_file' / 'run'}"], {2}, "output_dir"),
        ("bad config", "dp-eval n_episodes=0", [*dp_eval, f"checkpoint={run_dir}", "n_episodes=0"], {2}, "n_episodes"),
        ("bad config", "dp-eval missing checkpoint", [*dp_eval, f"checkpoint={work / 'nope'}"], {2}, "No checkpoint"),
        ("bad config", "dp-control hz=-1", [*control, f"checkpoint={run_dir}", "hz=-1"], {2}, "hz"),
        # hydra's own composition errors exit 1 with their message (no traceback)
        ("bad config", "dp-control unknown task", [*control, f"checkpoint={run_dir}", "task=mw_nope"], {1},
         "mw_nope"),
        ("bad config", "dp-collect n_episodes=0",
         [str(BIN / "dp-collect"), "task=toy", "n_episodes=0", f"output={work / 'x.zarr'}"], {2}, "n_episodes"),
        ("bad config", "dp-collect unknown task",
         [str(BIN / "dp-collect"), "task=toy", "task.env=toyy", f"output={work / 'y.zarr'}"], {2}, "toyy"),
        ("bad config", "dp-bench mode missing checkpoint",
         [str(BIN / "dp-bench"), "mode", "--checkpoint", str(work / "nope")], {2}, "No checkpoint"),
        ("crafted checkpoint", "torch.load payload", [*dp_eval, f"checkpoint={c_torch}"], {2}, "registered"),
        ("crafted checkpoint", "numpy.load nested in a real policy", [*dp_eval, f"checkpoint={c_numpy}"], {2},
         "keys starting with '_'"),
        ("crafted checkpoint", "builtins.open mode w", [*control, f"checkpoint={c_open}"], {2}, "registered"),
        ("damaged checkpoint", "NaN weights", [*dp_eval, f"checkpoint={nan_ckpt}"], {2}, "non-finite weights"),
        ("damaged checkpoint", "truncated weights", [*dp_eval, f"checkpoint={trunc_w}"], {2}, "damaged"),
        ("damaged checkpoint", "no config.yaml", [*dp_eval, f"checkpoint={no_cfg}"], {2}, "config.yaml"),
        ("damaged checkpoint", "config of another size", [*dp_eval, f"checkpoint={mismatch}"], {2}, "size mismatch"),
        ("non-finite actions", "dp-control, predictions overflow", [*control, f"checkpoint={blown}",
                                                                    f"output_dir={work / 'ctl'}"], {3}, "fault"),
        ("non-finite actions", "dp-eval, predictions overflow", [*dp_eval, f"checkpoint={blown}"], {0}, "non-finite"),
        ("resume", "latest dangles", [*train, f"output_dir={dangling}", "training.steps=30", "resume=true",
                                      "training.checkpoint_every=10"], {0}, ""),
        ("resume", "latest corrupt", [*train, f"output_dir={corrupt_latest}", "training.steps=30", "resume=true",
                                      "training.checkpoint_every=10"], {0}, ""),
        ("resume", "no checkpoint readable", [*train, f"output_dir={none_readable}", "resume=true"], {2},
         "Refusing to start over"),
        ("divergence", "lr=1e30", [*train, "training.lr=1e30", "training.grad_clip=0", out("nan")], {2},
         "training diverged"),
    ]
    tiny_fs = work / "tiny_fs"
    tiny_fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny_fs)], capture_output=True).returncode == 0:
        cases.append(("bad config", "full disk", [*train, f"output_dir={tiny_fs / 'run'}"], {2}, "space"))
    rows = []
    for cls, case, cmd, expected, needle in cases:
        rc, stdout, stderr = run(cmd, work)
        row = {"class": cls, "case": case, "exit": rc, "expected": sorted(expected),
               "traceback": "Traceback" in stderr,
               "silent": rc == 0 and 0 not in expected,
               "message_ok": needle.lower() in (stderr + stdout).lower(),
               "stderr_tail": stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""}
        if case.startswith("latest"):
            row["message_ok"] = "resumed from" in stdout and "step_00000010" in stdout
        rows.append(row)
        flag = "ok " if rc in expected and not row["traceback"] and row["message_ok"] else "BAD"
        print(f"{flag} [{cls}] {case}: exit {rc}; {row['stderr_tail'][:160]}", flush=True)
    if tiny_fs.is_mount():
        subprocess.run(["umount", str(tiny_fs)])
    executed = [p.name for p in (work / "pwned_torch", work / "pwned_numpy") if p.exists()]
    if victim.read_text() != "precious":
        executed.append("victim.txt truncated")
    sent = []
    ticks = work / "ctl" / "ticks.csv"
    if ticks.exists():
        import csv

        with open(ticks, newline="") as fh:
            sent = [np.array(r["action"].split(), np.float64) for r in csv.DictReader(fh) if r["action"]]
    totals = {
        "cases": len(rows),
        "tracebacks": sum(r["traceback"] for r in rows),
        "silent_acceptance": sum(r["silent"] for r in rows),
        "wrong_exit_or_message": sum(r["exit"] not in r["expected"] or not r["message_ok"] for r in rows),
        "code_execution": len(executed),
        "nonfinite_actions_sent": int(sum(not np.isfinite(a).all() for a in sent)),
        "actions_sent_by_dp_control": len(sent),
    }
    by_class = {}
    for r in rows:
        c = by_class.setdefault(r["class"], {"cases": 0, "tracebacks": 0, "silent_acceptance": 0})
        c["cases"] += 1
        c["tracebacks"] += r["traceback"]
        c["silent_acceptance"] += r["silent"]
    from dp.results import machine_info

    result = {"totals": totals, "by_class": by_class, "cases": rows, "code_execution": executed,
              "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(totals))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
