"""DeepCluster-style baseline: alternate k-means pseudo-labels and head training.

Caron et al. 2018 ("Deep clustering for unsupervised learning of visual features")
alternate clustering the network's features with k-means and training the network to
predict the cluster indices. Here the encoder is frozen, so the part that learns is the
clustering head's MLP; each *epoch* (a round, as in DeepCluster) is:

1. features: round 0 clusters the head's input (standardised, L2-normalised embeddings);
   later rounds cluster the head's penultimate activations, L2-normalised, so the
   pseudo-labels follow what the MLP learned (DeepCluster PCA-whitens them; on frozen
   audio embeddings whitening gave every noise direction the weight of a real one and
   the pseudo-labels drifted away from the data's clusters, docs/benchmarks.md);
2. k-means (:class:`~audioclust.training.kmeans.KMeans`, whose empty clusters are
   re-seeded by splitting a non-empty one) gives pseudo-labels;
3. the last layer is re-initialised (cluster indices are arbitrary from one round to the
   next) and the head is trained with cross-entropy on batches drawn uniformly over the
   pseudo-labels (:func:`balanced_indices`), so a few large clusters cannot make
   "always predict them" a cheap solution: 2 passes of batches of the shared size per
   round, but at least 500 and at most 2,000 steps in all (the shared length rule).

Each of the ``n_heads`` heads runs its own k-means (its own seed and features); selection
(lowest last-round cross-entropy among the heads using the most clusters) and the
add-one smoothed prior are the shared end of a fit.

Defaults: 4 heads of width 256, 15 rounds, AdamW at 1e-3 (an MLP head, not DeepCluster's
SGD-trained convnet), k-means with 2 restarts per head and round.
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
from audioclust.training.heads.base import HeadEstimator, HeadSettings, batch_for
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
    epochs: int = 15
    passes: float | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    kmeans_n_init: int = 2

    def __post_init__(self) -> None:
        if (min(self.n_heads, self.epochs, self.kmeans_n_init) < 1
                or (self.batch_size is not None and self.batch_size < 2)
                or (self.passes is not None and self.passes <= 0)):
            raise ValueError("n_heads, epochs, kmeans_n_init >= 1, passes > 0 and "
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
        return F.normalize(hidden, dim=1).numpy().astype(np.float64)

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
        batch = min(c.batch_size or batch_for(n), n)
        if c.passes is None:
            steps = int(np.clip(2 * math.ceil(n / batch), math.ceil(500 / c.epochs),
                                math.ceil(2000 / c.epochs)))
        else:
            steps = max(1, round(c.passes * n / batch))
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
                losses = torch.stack([
                    F.cross_entropy(mlp(prepared[idx[h]]), targets[h, idx[h]])
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

        self._finish(head, x, history["loss"][-1], history, t_start)
        return self
