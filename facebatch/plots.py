"""Training curves from a run's history (matplotlib, headless): drawn by training at the end of a run
and by evaluation from a model file's stored history."""
from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: str | Path, monitor: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] + 1 for h in history]
    keys = [k for k in history[0] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train loss")
    axes[0].set_xlabel("epoch"), axes[0].set_yscale("log"), axes[0].legend(), axes[0].set_title("loss")
    for k in keys:
        if "pck" not in k and "accuracy" not in k:
            axes[1].plot(ep, [h[k] for h in history], label=k)
    axes[1].set_xlabel("epoch"), axes[1].legend(), axes[1].set_title(f"validation (monitor: {monitor})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
