"""SPICE's clustering head (its stage 2) on frozen embeddings.

SPICE (Niu, Shan and Wang, 2022) has three stages: self-supervised encoder training
(``audioclust-train ssl``), clustering heads on the frozen encoder (:class:`SPICE`, this
module) and joint tuning of encoder and head on reliable pseudo-labels
(:class:`~audioclust.training.heads.spice_finetune.SPICEFineTuner`).

Stage 2, EM over batches of M points (M = ``batch_size`` capped at the data; the
reference implementation's 5,000):

- views: the E-step ranks points by the *weak* view's probabilities, the M-step trains
  on the *strong* view. Given audio views (:func:`~audioclust.training.heads.
  spice_finetune.audio_views`: embeddings of augmented crops), each E-step draws one
  weak and one strong set; without them the weak view is the embedding itself and the
  strong view a random one of its ``k_neighbors`` cosine nearest neighbours in the
  head's input space (TEMI's pairs);
- E-step, per head (:func:`proto_pseudo_labels`): for each cluster, the mean original
  feature of the top ``center_ratio`` of M/K points by probability is the centre; the
  M/K points most cosine-similar to a centre get that cluster as proto-pseudo-label;
- M-step: ``repeats`` shuffled passes over those points in steps of ``sub_batch``,
  cross-entropy of the labels on the *double softmax* of the strong view's logits
  (:func:`double_softmax_cross_entropy`);
- ``n_heads`` heads, each with its own labels, each first trained on its own k-means
  partition (:func:`~audioclust.training.heads.base.kmeans_warm_start`), so the first
  E-step's centres are already spread over the data; selection and prior as every
  head's (:func:`~audioclust.training.heads.base.finish_heads`);
- length: ``epochs`` None gives :data:`ROUNDS` E-steps in all (30 epochs of a set that
  fits one E-step, fewer epochs of larger ones); ``repeats`` None gives the reference's
  8 M-step passes, fewer where the run would pass :data:`MAX_STEPS` steps;
- neighbour views: k = clip(round(n / (20 K)), 5, 50) (the shared rule).

Features for centres and similarities are the head's input space (standardised with the
std floored at the median live std, then L2-normalised; see
:meth:`ClusterHead.set_input_stats`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.errors import ConfigError, DataError
from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.training.heads.base import (
    HeadEstimator,
    HeadSettings,
    batch_for,
    kmeans_warm_start,
    neighbour_count,
)
from audioclust.training.heads.neighbors import knn

__all__ = [
    "SPICE",
    "SPICESettings",
    "SPICEViews",
    "double_softmax_cross_entropy",
    "fixmatch_mask",
    "proto_pseudo_labels",
    "reliable_mask",
]


# --- the pure pieces ---------------------------------------------------------------------


def proto_pseudo_labels(
    probs: torch.Tensor, feats: torch.Tensor, per_cluster: int, n_centre: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPICE's E-step on one batch: (indices, labels) of the proto-pseudo-labelled clips.

    ``probs`` (M, K) are cluster probabilities, ``feats`` (M, d) the clips' features. For
    each cluster k: the ``n_centre`` clips (default ``per_cluster``) with the highest
    ``probs[:, k]`` give the centre (the mean of their features); the ``per_cluster``
    clips with the highest cosine similarity to that centre are labelled k. Results are
    grouped by cluster (cluster 0's clips first), most similar first within a cluster. A
    clip close to two centres is returned once per cluster, as in SPICE's union of
    per-cluster sets.
    """
    if probs.dim() != 2 or feats.dim() != 2 or probs.shape[0] != feats.shape[0]:
        raise ValueError(f"need probs (M, K) and feats (M, d), got {tuple(probs.shape)} "
                         f"and {tuple(feats.shape)}")
    m, k = probs.shape
    n_centre = per_cluster if n_centre is None else n_centre
    for name, value in (("per_cluster", per_cluster), ("n_centre", n_centre)):
        if not 1 <= value <= m:
            raise ValueError(f"{name} must be in [1, {m}], got {value}")
    top = probs.topk(n_centre, dim=0).indices  # (n_centre, K)
    centres = feats[top].mean(dim=0)  # (K, d)
    sims = F.normalize(feats, dim=1) @ F.normalize(centres, dim=1).T  # (M, K)
    nearest = sims.topk(per_cluster, dim=0).indices  # (per_cluster, K)
    indices = nearest.T.reshape(-1)
    labels = torch.arange(k, device=probs.device).repeat_interleave(per_cluster)
    return indices, labels


def reliable_mask(labels: torch.Tensor, neighbours: torch.Tensor, lam: float) -> torch.Tensor:
    """(n,) bool: True where *more than* a fraction ``lam`` of a clip's neighbours share
    its label. ``neighbours`` (n, N_s) holds each clip's neighbour indices, itself
    excluded (as :func:`audioclust.training.heads.neighbors.knn` gives them)."""
    labels = torch.as_tensor(labels)
    neighbours = torch.as_tensor(neighbours, dtype=torch.long)
    if neighbours.dim() != 2 or neighbours.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbours must be (n, N_s) with n = {labels.shape[0]}, "
                         f"got {tuple(neighbours.shape)}")
    agree = (labels[neighbours] == labels[:, None]).double().mean(dim=1)
    return agree > lam


def fixmatch_mask(probs: torch.Tensor, tau: float = 0.75) -> torch.Tensor:
    """(B,) bool: FixMatch's confidence mask, max probability >= ``tau``."""
    return probs.max(dim=-1).values >= tau


def double_softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SPICE's stage-2 loss: cross-entropy of softmax(softmax(logits)) against ``target``.

    Its minimum is log(1 + (K - 1) / e) > 0, not 0: it never asks for more than a mild
    preference, which keeps noisy proto-pseudo-labels from being fitted hard.
    """
    return F.cross_entropy(torch.softmax(logits, dim=-1), target)


# --- the estimator -----------------------------------------------------------------------


@dataclass(frozen=True)
class SPICEViews:
    """Augmented embeddings of the training points: ``weak`` and ``strong`` view sets,
    each (n, d), in the points' order."""

    weak: tuple[torch.Tensor, ...] = field(default_factory=tuple)
    strong: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.weak or not self.strong:
            raise DataError("SPICEViews needs at least one weak and one strong set")


@dataclass(frozen=True)
class SPICESettings(HeadSettings):
    """SPICE stage 2's hyperparameters.

    ``n_heads`` parallel heads, ``hidden_dim`` / ``n_layers`` (1 hidden layer = SPICE's
    two-layer MLP); ``epochs`` (None: :data:`ROUNDS` E-steps in all); ``batch_size`` (M,
    points per E-step, capped at the data; M / K pseudo-labelled points per cluster);
    ``center_ratio`` (the fraction of those M / K, by probability, whose mean is the
    centre); ``sub_batch`` and ``repeats`` (the M-step: that many passes of that many
    points per step; None: see the module docstring); ``lr`` (Adam); ``k_neighbors``
    (neighbour views without audio views; None: the shared rule); ``init`` ("kmeans" or
    "random") and ``init_steps``.
    """

    n_heads: int = 10
    hidden_dim: int = 512
    n_layers: int = 1
    epochs: int | None = None
    batch_size: int = 5000
    center_ratio: float = 0.2
    sub_batch: int = 128
    repeats: int | None = None
    lr: float = 5e-3
    k_neighbors: int | None = None
    init: Literal["kmeans", "random"] = "kmeans"
    init_steps: int = 100

    def __post_init__(self) -> None:
        for name in ("n_heads", "epochs", "batch_size", "sub_batch", "repeats"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.center_ratio <= 1.0:
            raise ConfigError(f"center_ratio must be in (0, 1], got {self.center_ratio}")
        if self.k_neighbors is not None and self.k_neighbors < 1:
            raise ConfigError(f"k_neighbors must be >= 1, got {self.k_neighbors}")


#: EM rounds (E-step + M-step on M points) of a default run: 30 epochs of a data set that
#: fits one E-step, as in the reference implementation; fewer epochs of larger ones.
ROUNDS = 30
#: Most M-step optimisation steps of a default run (the shared cap of the heads).
MAX_STEPS = 2000


class _ViewSource:
    """(weak, strong) embeddings of a batch: from the given view sets (one random set of
    each per call), or the points themselves and one random neighbour of each."""

    def __init__(self, x: torch.Tensor, views: SPICEViews | None, neighbours: np.ndarray | None,
                 rng: np.random.Generator):
        self.x, self.views, self.rng = x, views, rng
        self.neighbours = None if neighbours is None else torch.from_numpy(neighbours)

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.views is not None:
            weak = self.views.weak[int(self.rng.integers(len(self.views.weak)))][idx]
            strong = self.views.strong[int(self.rng.integers(len(self.views.strong)))][idx]
            return weak, strong
        assert self.neighbours is not None
        pick = torch.from_numpy(self.rng.integers(self.neighbours.shape[1], size=len(idx)))
        return self.x[idx], self.x[self.neighbours[idx, pick]]


class SPICE(HeadEstimator):
    """SPICE's stage 2 on frozen embeddings, in the scikit-learn estimator style.

    ``SPICE(n_clusters, settings=None, *, seed=0, progress=False, log=None, **overrides)``
    (settings: :class:`SPICESettings`).

    After :meth:`fit`: ``head_`` (:class:`ClusterHead` with every head, one selected,
    smoothed empirical prior), ``labels_``, ``head_losses_`` (last-epoch loss per head),
    ``cluster_usage_`` (H,), ``history_`` (``loss`` per epoch and head, the E-step sizes).
    """

    Settings = SPICESettings
    method = "spice"
    label = "SPICE stage 2"
    settings: SPICESettings

    def neighbors_for(self, n: int) -> int:
        """k of the neighbour views for ``n`` points."""
        return neighbour_count(n, self.n_clusters, self.settings.k_neighbors)

    def fit(self, embeddings: np.ndarray, views: SPICEViews | None = None) -> SPICE:
        """Train on (n, d) embeddings; ``views`` (augmented embeddings of the same points)
        replace the neighbour views."""
        t_start = time.perf_counter()
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if x.ndim != 2:
            raise DataError(f"need (n, d) embeddings, got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n < 2 * self.n_clusters:
            raise DataError(f"{n} clips are too few for {self.n_clusters} clusters")
        if views is not None:
            for v in (*views.weak, *views.strong):
                if tuple(v.shape) != tuple(x.shape):
                    raise DataError(f"views must be {tuple(x.shape)} like the embeddings, "
                                    f"got {tuple(v.shape)}")
        c = self.settings
        heads = ClusterHead(HeadConfig(
            in_dim=x.shape[1], n_clusters=self.n_clusters, n_heads=c.n_heads,
            hidden_dim=c.hidden_dim, n_layers=c.n_layers,
        ), generator=self._generator())
        heads.set_input_stats(x.mean(dim=0), x.std(dim=0))
        with torch.no_grad():
            feats = heads.prepare(x)  # the space cosine similarities are taken in
        rng = np.random.default_rng(self.seed)
        if c.init == "kmeans":
            kmeans_warm_start(heads, x, self.seed, c.init_steps, batch_for(n), 1e-3, rng)
        neighbours = None
        if views is None:
            neighbours = knn(feats.numpy(), self.neighbors_for(n), seed=self.seed)[0]
        source = _ViewSource(x, views, neighbours, rng)
        history = self._train_heads(heads, feats, source, rng)
        history["views"] = "given" if views is not None else "neighbours"
        if neighbours is not None:
            history["k_neighbors"] = int(neighbours.shape[1])
        self._finish(heads, x, history["last_epoch_per_head"], history, t_start)
        return self

    def _train_heads(
        self, heads: ClusterHead, feats: torch.Tensor, views: _ViewSource,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """Stage 2: EM over batches of M clips; every head gets its own pseudo-labels.

        Per batch, one E-step per head, then ``repeats`` shuffled passes of
        ``sub_batch``-point steps over the labelled points' strong views (SPICE's
        M-step: the head fits one set of pseudo-labels before the next E-step).
        """
        c = self.settings
        n = feats.shape[0]
        m = min(c.batch_size, n)
        per_cluster = max(1, m // self.n_clusters)
        n_centre = max(1, round(c.center_ratio * per_cluster))
        n_labelled = per_cluster * self.n_clusters
        sub = min(c.sub_batch, n_labelled)
        batches = max(1, n // m)
        epochs = c.epochs or max(1, round(ROUNDS / batches))
        # The reference's 8 passes per E-step, fewer where that would pass MAX_STEPS in all.
        per_pass = len(range(0, n_labelled - sub + 1, sub))
        repeats = c.repeats or int(np.clip(MAX_STEPS // (epochs * batches * per_pass), 1, 8))
        opt = torch.optim.Adam(heads.heads.parameters(), lr=c.lr, fused=True)
        heads.train()
        epoch_losses: list[list[float]] = []
        for _ in tqdm(range(epochs), desc="spice stage 2", unit="epoch",
                      disable=not self.progress):
            order = torch.from_numpy(rng.permutation(n))
            sums = torch.zeros(c.n_heads, dtype=torch.float64)
            steps = 0
            # Only full batches: a short tail would change M / K.
            for b in range(batches):
                idx = order[b * m : (b + 1) * m]
                weak, strong = views(idx)
                with torch.no_grad():
                    probs = torch.softmax(heads.all_logits(weak), dim=-1)  # (H, M, K)
                    inputs = heads.prepare(strong)
                picks = [proto_pseudo_labels(probs[h], feats[idx], per_cluster, n_centre)
                         for h in range(c.n_heads)]
                rows = torch.stack([p[0] for p in picks])  # (H, n_labelled), into the batch
                targets = torch.stack([p[1] for p in picks])
                for _ in range(repeats):
                    perm = torch.stack([torch.from_numpy(rng.permutation(n_labelled))
                                        for _ in range(c.n_heads)])
                    for s in range(0, n_labelled - sub + 1, sub):
                        j = perm[:, s : s + sub]
                        x_rows, y = rows.gather(1, j), targets.gather(1, j)
                        loss = torch.stack([
                            double_softmax_cross_entropy(head(inputs[x_rows[h]]), y[h])
                            for h, head in enumerate(heads.heads)
                        ])
                        opt.zero_grad(set_to_none=True)
                        loss.sum().backward()  # heads share no parameters: one step trains each
                        opt.step()
                        sums += loss.detach().double()
                        steps += 1
            epoch_losses.append((sums / steps).tolist())
        return {"loss": epoch_losses, "last_epoch_per_head": epoch_losses[-1],
                "per_cluster": per_cluster, "centre_clips": n_centre, "batch_size": m,
                "epochs": epochs, "rounds": epochs * batches, "repeats": repeats,
                "steps": steps * epochs}
