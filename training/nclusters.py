"""How many clusters a set of embeddings holds, without labels (``--clusters auto``).

The rule rests on the notion of distinct clusters that the open-set online clusterer uses
(:mod:`audioclust.stream.openset`): in the heads' input space (standardised with the
floored std of :meth:`ClusterHead.set_input_stats`, then L2-normalised: exactly
:meth:`ClusterHead.prepare`), a cluster's *radius* is the similarity to its centroid that
95 % of its own members reach (leave-one-out), and two clusters are distinct unless half
or more of one's members lie within the other's radius.

For K = 2, 3, ... k-means (scikit-learn's: 3 restarts of greedy k-means++) splits the
embeddings into K clusters, and the criterion is the largest share of one cluster's
members within another's radius. While the data holds at least K clusters, k-means finds
distinct ones and the share stays below one half; one split too many cuts a cluster into
halves that mostly fall within each other's radius. K is the last value before the first
split that the notion rejects (the largest K tried if none is). On mixtures of
well-separated Gaussians the share jumps from about 0 to 1/2 or more exactly one step past
the true K (tests). On real embeddings the answer is the scale at which the embedding's
groups stop being distinct, which need not be the scale of a given labelling (FSDD
speakers and digits share one embedding): ``docs/benchmarks.md`` has the measurements.
The curve is saved as a picture by :func:`plot_n_clusters`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audioclust.models.errors import DataError
from audioclust.stream.openset import MAJORITY, belongs_fraction, cluster_summary

__all__ = ["auto_clusters", "choose_n_clusters", "heads_space", "plot_n_clusters"]

#: k-means restarts per K (scikit-learn's greedy k-means++ seeding).
N_INIT = 3


def heads_space(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as the heads see them: :meth:`ClusterHead.prepare` after
    :meth:`ClusterHead.set_input_stats` with the embeddings' mean and std."""
    import torch

    from audioclust.models.heads import ClusterHead, HeadConfig

    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    head = ClusterHead(HeadConfig(in_dim=x.shape[1], n_clusters=2, n_layers=0)).double()
    head.set_input_stats(x.mean(0), x.std(0))  # as the heads do (unbiased std)
    with torch.no_grad():
        return head.prepare(x).numpy()


def auto_clusters(
    embeddings: np.ndarray,
    k_max: int = 50,
    k_min: int = 2,
    seed: int = 0,
    fit_points: int = 5000,
    beyond: int = 3,
) -> tuple[int, dict[int, float], np.ndarray, np.ndarray]:
    """(K, {K: criterion}, rows, labels): the module's rule, with the k-means labels of
    the chosen K for the embeddings at ``rows`` (all of them, or ``fit_points`` drawn
    with ``seed``). The criterion is the largest share of one cluster's members within
    another's radius; K is the last value before it reaches one half. The curve goes on
    ``beyond`` steps past that (for the picture), no further."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise DataError("choosing K needs a finite (n, d) array of embeddings")
    n = x.shape[0]
    k_max = min(k_max, n // 2)
    if k_min < 2 or k_max < k_min:
        raise DataError(f"cannot choose K in [{k_min}, {k_max}] for {n} clips")
    z = heads_space(x)
    rows = np.arange(n)
    if n > fit_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, fit_points, replace=False))
        z = z[rows]
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    chosen = None
    for k in range(k_min, k_max + 1):
        labels = KMeans(k, n_init=N_INIT, random_state=seed).fit_predict(z)
        fits[k] = labels
        centroids, radii, _, _ = cluster_summary(z, labels, k)
        scores[k] = round(float(belongs_fraction(z, labels, centroids, radii).max()), 5)
        if chosen is None and scores[k] >= MAJORITY:
            chosen = max(k - 1, k_min)
        if chosen is not None and k >= chosen + 1 + beyond:
            break
    chosen = k_max if chosen is None else chosen
    return chosen, scores, rows, fits[chosen]


def choose_n_clusters(embeddings: np.ndarray, k_max: int = 50, k_min: int = 2,
                      seed: int = 0) -> tuple[int, dict[int, float]]:
    """(K, {K: criterion}) by the module's rule (:func:`auto_clusters`)."""
    k, scores, _, _ = auto_clusters(embeddings, k_max, k_min, seed)
    return k, scores


def plot_n_clusters(scores: dict[int, float], chosen: int, path: str | os.PathLike,
                    title: str = "") -> Path:
    """The criterion against K, the one-half line and the chosen K, as a PNG."""
    from audioclust.training.report import plt, save_figure

    ks = sorted(scores)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(ks, [scores[k] for k in ks], marker="o", markersize=3, label="largest share of "
            "a cluster's members within another's radius")
    ax.axhline(MAJORITY, color="grey", linestyle="--", linewidth=1, label="one half: the same "
               "cluster")
    ax.axvline(chosen, color="C3", linewidth=1.2, label=f"chosen K = {chosen}")
    ax.set(xlabel="K (k-means clusters)", ylabel="share", ylim=(-0.02, 1.02))
    ax.set_title(title or f"--clusters auto: K = {chosen}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
