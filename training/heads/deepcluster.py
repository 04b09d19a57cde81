"""DeepCluster-style baseline: alternate k-means pseudo-labels and head training.

Caron et al. 2018 ("Deep clustering for unsupervised learning of visual features")
alternate clustering the network's features with k-means and training the network to
predict the cluster indices. Here the encoder is frozen, so the part that learns is the
clustering head's MLP; each *epoch* (a round, as in DeepCluster) is:

1. features: round 0 clusters the head's input (standardised, L2-normalised embeddings);
   later rounds cluster the head's penultimate activations, PCA-whitened to ``pca_dim``
   and L2-normalised (DeepCluster's preprocessing), so the pseudo-labels follow what the
   MLP learned;
2. k-means (:class:`~audioclust.training.kmeans.KMeans`, whose empty clusters are
   re-seeded by splitting a non-empty one) gives pseudo-labels;
3. the last layer is re-initialised (cluster indices are arbitrary from one round to the
   next) and the head is trained with cross-entropy for ``passes`` passes of n samples
   drawn uniformly over the pseudo-labels (:func:`balanced_indices`), so a few large
   clusters cannot make "always predict them" a cheap solution.

Each of the ``n_heads`` heads runs its own k-means (its own seed and features); the head
with the lowest cross-entropy in the last round is selected. The saved prior is the
selected head's cluster frequencies on the training points (add-one smoothed, so no
cluster has prior zero).

Defaults: 4 heads of width 256, 15 epochs of 2 balanced passes, AdamW at 1e-3 (an MLP
head, not DeepCluster's SGD-trained convnet), k-means with 2 restarts per head and epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.heads import ClusterHead, HeadConfig, init_linear
from audioclust.training.heads.base import HeadEstimator, HeadSettings
from audioclust.training.kmeans import KMeans
from audioclust.training.metrics import nmi

__all__ = ["DeepCluster", "DeepClusterSettings", "balanced_indices"]


def balanced_indices(labels: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` indices drawn uniformly over the non-empty labels, shuffled.

    Every non-empty label gets ``n_samples // C`` or one more draws (C = number of
    non-empty labels; the extra ones go to randomly chosen labels); within a label,
    members are drawn without replacement while there are enough of them.
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    share = np.full(present.size, n_samples // present.size)
    share[rng.choice(present.size, n_samples % present.size, replace=False)] += 1
    parts = []
    for lab, count in zip(present, share, strict=True):
        members = np.flatnonzero(labels == lab)
        parts.append(rng.choice(members, count, replace=count > members.size))
    out = np.concatenate(parts)
    rng.shuffle(out)
    return out


def _whiten(f: np.ndarray, dim: int) -> np.ndarray:
    """PCA to ``dim`` components, whitened, then L2-normalised rows."""
    f = f - f.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    dim = min(dim, int((s > s[0] * 1e-6).sum()))
    z = u[:, :dim] * math.sqrt(f.shape[0])  # whitened scores: unit variance per component
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class DeepClusterSettings(HeadSettings):
    """DeepCluster's hyperparameters (defaults: see the module docstring)."""

    n_heads: int = 4
    hidden_dim: int = 256
    n_layers: int = 2
    epochs: int = 15
    passes: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    pca_dim: int = 64
    kmeans_n_init: int = 2

    def __post_init__(self) -> None:
        if (min(self.n_heads, self.epochs, self.passes, self.pca_dim, self.kmeans_n_init) < 1
                or self.batch_size < 2):
            raise ValueError("n_heads, epochs, passes, pca_dim, kmeans_n_init >= 1 and "
                             "batch_size >= 2 needed")


class DeepCluster(HeadEstimator):
    """DeepCluster on frozen embeddings, as a scikit-learn style estimator.

    ``DeepCluster(n_clusters, settings=None, *, seed=0, progress=False, log=None,
    **overrides)`` (settings: :class:`DeepClusterSettings`).

    After :meth:`fit`: ``head_`` (:class:`ClusterHead`, best head selected, smoothed
    empirical prior), ``history_`` (per-epoch loss of every head, pseudo-label NMI
    between rounds, k-means re-seeds), ``head_losses_``, ``labels_`` (the selected head's
    clusters), ``cluster_usage_``.
    """

    Settings = DeepClusterSettings
    method = "deepcluster"
    label = "DeepCluster"
    settings: DeepClusterSettings

    @torch.no_grad()
    def _features(self, head: ClusterHead, h: int, prepared: torch.Tensor, epoch: int):
        if epoch == 0 or self.settings.n_layers == 0:
            return prepared.numpy().astype(np.float64)
        hidden = head.heads[h][:-1](prepared)  # everything but the last Linear
        return _whiten(hidden.numpy().astype(np.float64), self.settings.pca_dim)

    def fit(self, embeddings: np.ndarray) -> DeepCluster:
        t_start = time.perf_counter()
        c = self.settings
        x_np = np.asarray(embeddings, dtype=np.float32)
        n = x_np.shape[0]
        if x_np.ndim != 2 or n < self.n_clusters:
            raise ValueError(f"need (n >= n_clusters = {self.n_clusters}, d) embeddings, got "
                             f"shape {x_np.shape}")
        gen = self._generator()
        rng = np.random.default_rng(self.seed)
        x = torch.from_numpy(x_np)
        head = ClusterHead(HeadConfig(in_dim=x.shape[1], n_clusters=self.n_clusters,
                                      n_heads=c.n_heads, hidden_dim=c.hidden_dim,
                                      n_layers=c.n_layers), generator=gen)
        head.set_input_stats(x.mean(0), x.std(0))
        with torch.no_grad():
            prepared = head.prepare(x)

        history: dict[str, Any] = {"loss": [], "loss_mean": [], "label_nmi": [],
                                   "kmeans_reseeds": []}
        previous: list[np.ndarray] | None = None
        steps = math.ceil(n / c.batch_size)
        bar = tqdm(range(c.epochs), desc="DeepCluster", unit="epoch",
                   disable=not self.progress)
        for epoch in bar:
            pseudo, reseeds = [], []
            for h in range(c.n_heads):
                km = KMeans(self.n_clusters, n_init=c.kmeans_n_init,
                            random_state=int(rng.integers(2**31)))
                pseudo.append(km.fit_predict(self._features(head, h, prepared, epoch)))
                reseeds.append(int(km.n_reseeds_))
            if previous is not None:
                history["label_nmi"].append(
                    [round(nmi(a, b), 4) for a, b in zip(previous, pseudo, strict=True)])
            previous = pseudo
            targets = torch.from_numpy(np.stack(pseudo))  # (H, n)
            for mlp in head.heads:
                init_linear(mlp[-1], gen)
            # A fresh optimiser each round: the re-initialised layer's Adam moments belong
            # to the previous round's labelling.
            opt = torch.optim.AdamW(head.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            total = torch.zeros(c.n_heads, dtype=torch.float64)
            for _ in range(c.passes):
                order = torch.from_numpy(np.stack(
                    [balanced_indices(p, n, rng) for p in pseudo]))  # (H, n)
                for s in range(steps):
                    idx = order[:, s * c.batch_size : (s + 1) * c.batch_size]
                    losses = torch.stack([
                        F.cross_entropy(mlp(prepared[idx[h]]), targets[h, idx[h]])
                        for h, mlp in enumerate(head.heads)
                    ])
                    opt.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    opt.step()
                    total += losses.detach().double() * idx.shape[1]
            per_head = (total / (n * c.passes)).tolist()
            history["loss"].append([round(v, 6) for v in per_head])
            history["loss_mean"].append(round(float(np.mean(per_head)), 6))
            history["kmeans_reseeds"].append(reseeds)
            bar.set_postfix(loss=f"{np.mean(per_head):.4f}")

        self._finish(head, x, history["loss"][-1], history, t_start)
        return self
