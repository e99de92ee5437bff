"""Pictures people would rather see than read: training curves and latency histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(history: dict, path: str | Path, title: str = "") -> Path:
    """history: {"step": [...], "loss": [...], "val_step", "val_loss", "eval_step", "eval_success"}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, loss = np.asarray(history.get("step", [])), np.asarray(history.get("loss", []))
    if len(loss):
        ax.plot(steps, loss, alpha=0.3, color="C0", label="train loss")
        k = max(1, len(loss) // 50)
        if k > 1:
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="C0", label=f"train loss ({k}-step mean)")
    if history.get("val_loss"):
        ax.plot(history["val_step"], history["val_loss"], "o-", color="C1", label="val loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history.get("eval_success"):
        ax2 = ax.twinx()
        ax2.plot(history["eval_step"], history["eval_success"], "s-", color="C2", label="eval success")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("success rate")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if history.get("eval_success") else "best")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_histogram(latencies_ms, path: str | Path, title: str = "", deadline_ms: float | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lat = np.asarray(latencies_ms)
    ax.hist(lat, bins=50, color="C0")
    if len(lat):
        for q, style in ((50, "--"), (99, ":")):
            v = np.percentile(lat, q)
            ax.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.1f} ms")
    if deadline_ms:
        ax.axvline(deadline_ms, color="C3", label=f"deadline {deadline_ms:.0f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
