"""The pictures a run leaves beside its numbers: each head's curves, a sweep's heads side by side.
Matplotlib loads only when a picture is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Loss and evaluation metrics per epoch, one PNG per head."""
    if not history:
        return
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title=title)
    for key in [k for k in history[0] if k not in ("epoch", "loss", "seconds", "examples_per_s")]:
        right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set(xlabel="epoch", title="evaluation")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_sweep(report: dict, path: Path) -> None:
    """The selection metric of every head over the grid, the winner in another colour."""
    plt = _pyplot()
    heads = report["heads"]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.28 * len(heads)))
    colours = ["tab:orange" if h["name"] == report["winner"] else "tab:blue" for h in heads]
    ax.barh(range(len(heads)), [h["selection"] for h in heads], color=colours)
    ax.set_yticks(range(len(heads)), [h["name"] for h in heads], fontsize=7)
    ax.invert_yaxis()
    lo = min(h["selection"] for h in heads)
    ax.set_xlim(left=lo - 0.1 * (max(h["selection"] for h in heads) - lo + 1e-3))
    ax.set(xlabel=f"{report['metric']} on {report['selected_on']}", title="sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
