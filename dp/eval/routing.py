"""Routing analysis of a noise-routed policy (MoDE's experts, Switch-DiT's gates) against noise level.

    python -m dp.eval.routing runs/mt10_mode/checkpoints/latest [--out DIR]

The router reads only the level embedding, so its distribution over experts is a function
of the level alone. This evaluates it on 101 levels from 0 to 1, per layer, and writes
``routing.png`` (one heatmap per layer: router probability of each expert against level,
with the top-k chosen at inference outlined) and ``routing.json`` (the probabilities, and
per layer the specialisation: the total-variation distance between the mean routing of
the low-noise half (level < 0.5) and the high-noise half; 0 when routing ignores the
level, 1 when the halves use disjoint experts).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dp.errors import ConfigError
from dp.policies import Policy


@torch.no_grad()
def routing_table(policy, n_levels: int = 101) -> dict:
    routed = policy.routes.routed() if hasattr(policy, "routes") else []
    if not routed:
        raise ConfigError(f"{type(policy).__name__} routes nothing by level (policy=mode and policy=switch_dit do).")
    levels = torch.linspace(0, 1, n_levels, device=policy.device)
    emb = policy.dit.level_emb(levels[None])[0]  # [L, D]
    layers = []
    for f in routed:  # MoDE's ffns and Switch-DiT's masks both route(level_emb) -> (gates, probs)
        probs = f.route(emb)[1].float()  # [L, E]
        top = torch.zeros_like(probs).scatter(-1, probs.topk(f.top_k, -1).indices, 1.0)
        low, high = probs[levels < 0.5].mean(0), probs[levels >= 0.5].mean(0)
        layers.append({"probs": probs.cpu().tolist(), "chosen": top.cpu().tolist(),
                       "specialisation_tv": float(0.5 * (low - high).abs().sum())})
    out = {"levels": levels.cpu().tolist(), "layers": layers}
    if policy.process.schedule == "edm":
        out["sigmas"] = policy.process.edm_sigma(levels).cpu().tolist()
    return out


def plot_routing(table: dict, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = table["layers"]
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 1.3 + 1.1 * len(layers)), sharex=True, squeeze=False)
    levels = np.asarray(table["levels"])
    for i, (ax, layer) in enumerate(zip(axes[:, 0], layers)):
        probs = np.asarray(layer["probs"]).T  # [E, L]
        im = ax.imshow(probs, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                       extent=(levels[0], levels[-1], -0.5, probs.shape[0] - 0.5))
        chosen = np.asarray(layer["chosen"]).T
        ax.contour(np.linspace(levels[0], levels[-1], chosen.shape[1]), np.arange(chosen.shape[0]), chosen,
                   levels=[0.5], colors="white", linewidths=0.8)
        ax.set_ylabel(f"layer {i}\nexpert")
        ax.set_yticks(range(probs.shape[0]))
        ax.set_title(f"specialisation (TV low vs high noise) {layer['specialisation_tv']:.2f}", fontsize=8, loc="right")
    axes[-1, 0].set_xlabel("noise level (0 clean, 1 pure noise)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="router probability", shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dp.eval.routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default=None, help="output directory (default: the checkpoint's run dir)")
    args = parser.parse_args(argv)
    ckpt = Path(args.checkpoint)
    policy = Policy.from_checkpoint(ckpt).eval()
    out = Path(args.out) if args.out else ckpt.resolve().parents[1]
    out.mkdir(parents=True, exist_ok=True)
    table = routing_table(policy)
    (out / "routing.json").write_text(json.dumps(table) + "\n")
    png = plot_routing(table, out / "routing.png", title=str(ckpt))
    spec = [round(layer["specialisation_tv"], 3) for layer in table["layers"]]
    print(json.dumps({"routing_png": str(png), "specialisation_tv_per_layer": spec}))


if __name__ == "__main__":
    from dp.cli_errors import user_errors_exit

    with user_errors_exit():
        main()
