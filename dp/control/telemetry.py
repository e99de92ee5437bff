"""What a control run leaves in its output_dir: ticks.csv, summary.json, latency_hist.png.

ticks.csv has one row per scheduled tick (skipped ones included), columns ``COLUMNS``:
    tick          index i; the tick is scheduled at t0 + i / hz
    scheduled_s   t0 + i / hz, seconds since t0
    start_s       when the tick actually started (empty for a skipped tick)
    obs_age_ms    age at send time of the observation the sent action was predicted from
                  (empty for a hold)
    inference_ms  latency of a prediction that completed during this tick (else empty)
    deadline_met  the action came from the policy and was sent before the tick's end
    source        policy | hold (watchdog: no fresh action) | skip (an overrun tick, not run)
    episode       the robot's episode index
    action        the action sent, space-separated env units (empty for a skipped tick)
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from dp.eval.metrics import percentiles

COLUMNS = ("tick", "scheduled_s", "start_s", "obs_age_ms", "inference_ms", "deadline_met", "source", "episode",
           "action")
SOURCES = ("policy", "hold", "skip")


def _fmt(v, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


class Telemetry:
    """Writes ticks.csv as the run goes (flushed about once a second) and the summary at ``close``."""

    def __init__(self, output_dir: str | Path, hz: float):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hz = float(hz)
        self._file = open(self.dir / "ticks.csv", "w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)
        self._flush_every = max(1, int(round(self.hz)))
        self.ticks = 0
        self.misses = 0
        self.sources = {s: 0 for s in SOURCES}
        self.jitter_ms: list[float] = []
        self.inference_ms: list[float] = []

    def row(self, tick: int, scheduled_s: float, start_s: float | None, obs_age_ms: float | None,
            inference_ms: float | None, deadline_met: bool, source: str, episode: int,
            action: np.ndarray | None = None) -> None:
        sent = "" if action is None else " ".join(f"{v:.6g}" for v in np.asarray(action).reshape(-1))
        self._csv.writerow([tick, _fmt(scheduled_s, 6), _fmt(start_s, 6), _fmt(obs_age_ms), _fmt(inference_ms),
                            str(bool(deadline_met)).lower(), source, episode, sent])
        self.ticks += 1
        self.misses += not deadline_met
        self.sources[source] += 1
        if start_s is not None:
            self.jitter_ms.append((start_s - scheduled_s) * 1000)
        if self.ticks % self._flush_every == 0:
            self._file.flush()

    def inference(self, ms: float) -> None:
        """Every completed prediction, including ones discarded at an episode change."""
        self.inference_ms.append(ms)

    def close(self, info: dict) -> dict:
        """Close the CSV; write summary.json (tick statistics + ``info``) and latency_hist.png."""
        if not self._file.closed:
            self._file.close()
        jit, inf = percentiles(self.jitter_ms), percentiles(self.inference_ms)
        summary = {
            "ticks": self.ticks,
            "deadline_misses": self.misses,
            "holds": self.sources["hold"],
            "skipped": self.sources["skip"],
            "jitter_ms_p50": jit["p50"], "jitter_ms_p99": jit["p99"],
            "inference_ms_p50": inf["p50"], "inference_ms_p99": inf["p99"],
            "predictions": len(self.inference_ms),
            **info,
        }
        summary["latency_histogram"] = str(latency_histograms(self.inference_ms, self.jitter_ms,
                                                              self.dir / "latency_hist.png", 1000 / self.hz))
        # json has no NaN: statistics of nothing are written as null
        clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in summary.items()}
        (self.dir / "summary.json").write_text(json.dumps(clean, indent=2))
        return clean


def latency_histograms(inference_ms, jitter_ms, path: str | Path, period_ms: float) -> Path:
    """Two panels: predict latency against the tick period, and tick start jitter."""
    from dp.eval.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, values, name in ((axes[0], inference_ms, "inference"), (axes[1], jitter_ms, "tick jitter")):
        v = np.asarray(values, dtype=np.float64)
        if len(v):
            ax.hist(v, bins=50, color="C0")
            for q, style in ((50, "--"), (99, ":")):
                ax.axvline(np.percentile(v, q), color="k", linestyle=style, label=f"p{q} {np.percentile(v, q):.2f} ms")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("count")
        ax.set_title(f"{name}, {len(v)} samples")
    axes[0].axvline(period_ms, color="C3", label=f"period {period_ms:.1f} ms")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
