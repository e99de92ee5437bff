"""Machine facts, timing and result writing: what every benchmark and measured report shares."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(os.environ.get("DP_BENCH_RESULTS", Path(__file__).resolve().parents[1] / "bench" / "results"))


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` in seconds, and every sample."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def result_name(name: str, device: str) -> str:
    """Results measured on CUDA live beside the CPU ones: latency.json, latency_cuda.json."""
    return name if device == "cpu" else f"{name}_cuda"


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer around it measures the work."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def write_result(name: str, rows: list[dict], columns: list[str], extra: dict | None = None,
                 device: str = "cpu") -> Path:
    """bench/results/<name>.json (rows + machine) and <name>.md (a table)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info(device)
    payload = {"name": name, "machine": machine, "rows": rows, **(extra or {})}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    md = f"{name} on {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, {machine['device']})\n\n"
    (RESULTS_DIR / f"{name}.md").write_text(md + "\n".join(lines) + "\n")
    print(md + "\n".join(lines))
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)
