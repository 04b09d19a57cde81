"""Pictures and tables for evaluation reports: confusion matrices, 2-D cluster maps, tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are files; never open a window
import matplotlib.pyplot as plt
import numpy as np

from audioclust.training.metrics import contingency, hungarian_mapping

__all__ = ["markdown_table", "plot_cluster_map", "plot_confusion", "plot_curves", "save_figure"]


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` restricted to ``columns``."""

    def fmt(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_confusion(
    labels_true: np.ndarray,
    labels_pred: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Classes x clusters counts, clusters ordered by their Hungarian-matched class."""
    n = contingency(labels_true, labels_pred)
    clusters = np.unique(labels_pred)
    mapping = hungarian_mapping(labels_true, labels_pred)
    classes = np.unique(labels_true)
    class_pos = {c: i for i, c in enumerate(classes)}
    order = sorted(
        range(len(clusters)),
        key=lambda j: (class_pos.get(mapping.get(clusters[j].item()), len(classes)), j),
    )
    n = n[:, order]
    size = (max(4.5, 1.2 + 0.45 * n.shape[1]), max(3.5, 1.2 + 0.45 * n.shape[0]))
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(n, cmap="Blues")
    for (i, j), v in np.ndenumerate(n):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > n.max() / 2 else "black")
    ax.set_xticks(range(n.shape[1]), [str(clusters[j]) for j in order], fontsize=7)
    ax.set_yticks(range(n.shape[0]), [class_names[int(c)] for c in classes], fontsize=7)
    ax.set_xlabel("cluster (ordered by matched class)")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_cluster_map(
    xy: np.ndarray,
    labels_pred: np.ndarray,
    labels_true: np.ndarray | None,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """2-D scatter of clips coloured by cluster (and, beside it, by true class)."""
    panels = [("clusters", labels_pred)] + ([("classes", labels_true)] if labels_true is not None
                                            else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels, strict=True):
        ax.scatter(xy[:, 0], xy[:, 1], c=lab, cmap="tab20", s=4, linewidths=0)
        ax.set_title(f"{title} — coloured by {name}" if title else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_curves(
    curves: dict[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "step",
    smooth: int = 1,
) -> Path:
    """Training curves, raw (faint) and as a moving average over ``smooth`` points."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, values) in enumerate(curves.items()):
        y = np.asarray(values, dtype=np.float64)
        if y.size == 0:
            continue
        colour = f"C{i}"
        ax.plot(np.arange(1, y.size + 1), y, color=colour, alpha=0.25, linewidth=0.8)
        if smooth > 1 and y.size >= smooth:
            avg = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth, y.size + 1), avg, color=colour, label=name)
        else:
            ax.plot([], [], color=colour, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out, write as an image at ``path`` and close ``fig``."""
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
