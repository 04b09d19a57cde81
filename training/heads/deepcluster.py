"""DeepCluster on frozen embeddings: k-means pseudo-labels, a head trained on them.

Caron et al. 2018 ("Deep clustering for unsupervised learning of visual features")
alternate clustering the network's features with k-means and training the network to
predict the cluster indices of augmented views. Here the encoder is frozen, so the part
that learns is the clustering head's MLP; each *round* (``epochs``) is:

1. features: round 0 clusters the head's input (standardised with the floored std,
   L2-normalised: spherical k-means); later rounds cluster the head's penultimate
   activations, L2-normalised (not PCA-whitened, which gives noise directions the
   weight of real ones: docs/heads.md);
2. k-means (:class:`~audioclust.training.kmeans.KMeans`, ``kmeans_n_init`` restarts,
   empty clusters re-seeded by splitting a non-empty one) gives pseudo-labels;
3. the last layer is re-initialised (cluster indices are arbitrary from one round to the
   next) and the head is trained with cross-entropy on batches drawn uniformly over the
   pseudo-labels (:func:`balanced_indices`: DeepCluster's remedy against a few large
   clusters). The input is a *view* of each point: with ``views="neighbours"`` one of
   its k cosine nearest neighbours in the head's input space (k by the shared rule),
   the frozen-embedding counterpart of DeepCluster's augmentations, so the head learns
   a partition that is constant over neighbourhoods rather than k-means' Voronoi cells;
   ``views="points"`` trains on the points themselves.

Length: 2 balanced passes of batches of the shared size per round, but at least 500 and
at most 2,000 steps in all (``passes`` overrides it per round).

The head trained on class-balanced batches estimates the posterior under a uniform
cluster prior; at the end each head's last bias gets the log of its pseudo-label
frequencies (add-one smoothed), which turns it into the posterior under the data's
cluster sizes (logit adjustment, Menon et al. 2021), so its argmax does not move points
into small clusters. Selection (lowest last-round cross-entropy, here on neighbour views:
the partition most consistent with the neighbourhoods, among the heads using the most
clusters) and the add-one smoothed prior are the shared end of a fit.

Defaults: 4 heads of width 256, AdamW at 1e-3, one round, k-means with 10 restarts per
head (docs/heads.md records why one round: on frozen embeddings later rounds mostly
re-find the previous round's labels).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.errors import ConfigError, DataError
from audioclust.models.heads import ClusterHead, HeadConfig, init_linear
from audioclust.training.heads.base import (
    HeadEstimator,
    HeadSettings,
    batch_for,
    neighbour_count,
)
from audioclust.training.heads.neighbors import knn
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


@dataclass(frozen=True)
class DeepClusterSettings(HeadSettings):
    """DeepCluster's hyperparameters (defaults: see the module docstring). None means
    "from the data": ``batch_size`` by :func:`batch_for`, ``passes`` (balanced passes
    over the data per round) by the shared length rule."""

    n_heads: int = 4
    hidden_dim: int = 256
    n_layers: int = 2
    epochs: int = 1
    passes: float | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    kmeans_n_init: int = 10
    k_neighbors: int | None = None
    views: Literal["neighbours", "points"] = "neighbours"

    def __post_init__(self) -> None:
        if (min(self.n_heads, self.epochs, self.kmeans_n_init) < 1
                or (self.batch_size is not None and self.batch_size < 2)
                or (self.passes is not None and self.passes <= 0)):
            raise ConfigError("n_heads, epochs, kmeans_n_init >= 1, passes > 0 and "
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
        hidden = F.normalize(head.heads[h][:-1](prepared), dim=1)  # all but the last Linear
        return hidden.numpy().astype(np.float64)

    def fit(self, embeddings: np.ndarray) -> DeepCluster:
        t_start = time.perf_counter()
        c = self.settings
        x_np = np.asarray(embeddings, dtype=np.float32)
        n = x_np.shape[0]
        if x_np.ndim != 2 or n < self.n_clusters:
            raise DataError(f"need (n >= n_clusters = {self.n_clusters}, d) embeddings, got "
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
        batch = min(c.batch_size or batch_for(n), n)
        if c.passes is None:
            steps = int(np.clip(2 * math.ceil(n / batch), math.ceil(500 / c.epochs),
                                math.ceil(2000 / c.epochs)))
        else:
            steps = max(1, round(c.passes * n / batch))
        nbrs = None
        if c.views == "neighbours":
            k_nb = neighbour_count(n, self.n_clusters, c.k_neighbors)
            nbrs = torch.from_numpy(knn(prepared.numpy(), k_nb, seed=self.seed)[0])
            history["k_neighbors"] = k_nb
        history["plan"] = {"batch_size": batch, "steps_per_round": steps,
                           "steps": steps * c.epochs}
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
            opt = torch.optim.AdamW(head.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                    fused=True)
            total = torch.zeros(c.n_heads, dtype=torch.float64)
            order = torch.from_numpy(np.stack(
                [balanced_indices(p, steps * batch, rng) for p in pseudo]))  # (H, S B)
            for s in range(steps):
                idx = order[:, s * batch : (s + 1) * batch]
                src = idx
                if nbrs is not None:
                    pick = torch.randint(nbrs.shape[1], idx.shape, generator=gen)
                    src = nbrs[idx, pick]
                losses = torch.stack([
                    F.cross_entropy(mlp(prepared[src[h]]), targets[h, idx[h]])
                    for h, mlp in enumerate(head.heads)
                ])
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                total += losses.detach().double()
            per_head = (total / steps).tolist()
            history["loss"].append([round(v, 6) for v in per_head])
            history["loss_mean"].append(round(float(np.mean(per_head)), 6))
            history["kmeans_reseeds"].append(reseeds)
            bar.set_postfix(loss=f"{np.mean(per_head):.4f}")

        with torch.no_grad():
            for h, mlp in enumerate(head.heads):
                freq = np.bincount(pseudo[h], minlength=self.n_clusters) + 1.0
                mlp[-1].bias += torch.from_numpy(np.log(freq / freq.sum())).float()
        self._finish(head, x, history["loss"][-1], history, t_start)
        return self
