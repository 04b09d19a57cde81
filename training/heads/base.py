"""What every clustering-head trainer shares: the estimator contract, typed settings and
the end of a fit.

The contract (scikit-learn's): hyperparameters are given to the constructor only, as a
method's settings dataclass and/or keyword overrides of its fields; ``fit(embeddings)``
trains on (n, d) embeddings and returns the estimator; ``predict_proba`` / ``predict``
apply the fitted ``head_`` (a :class:`~audioclust.models.heads.ClusterHead`) to
embeddings. Fitting touches no global state: random numbers come from generators seeded
by ``seed``, and the thread count is the caller's (the CLI sets one thread).

The end of a fit (:func:`finish_heads`) is the same for every method: score every head on
the training embeddings, select one, give it a prior that is positive everywhere, and
record usage and labels.

Rules the heads share, so that one default works from a few hundred to 100,000 points of
any width (docs/benchmarks.md has the measurements behind each):

- length (:func:`plan_steps`): batches of the power of two nearest n / 10, within
  [64, 512] (about ten steps an epoch, so TEMI's prior EMA, momentum 0.9, spans about
  one pass); 30 epochs, but at least 500 and at most 2,000 optimisation steps: a
  400-point set gets ~70 epochs instead of 60 steps, a 100,000-point one 10 epochs;
- neighbours (:func:`neighbour_count`): k = clip(round(n / (20 K)), 5, 50), about 5 % of
  an average cluster;
- start (:func:`kmeans_warm_start`, TEMI and SPICE): every head first learns its own
  k-means partition (best of a few restarts, its own seed) of the head's input space, so the
  method's objective refines a partition instead of starting from a random head, whose
  first clusters merge well-separated groups on small sets;
- selection (:func:`select_head`): the lowest loss among the heads that use the most
  clusters; a collapsed head, whose few clusters make its loss easy, is never kept over
  one that uses more;
- empty clusters: k-means re-seeds an empty cluster by splitting a full one, batches are
  drawn uniformly over the (pseudo-)clusters where there are any, and the saved prior is
  add-one smoothed (or floored), never zero.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from audioclust.models.config import build_config
from audioclust.models.errors import ConfigError
from audioclust.models.heads import ClusterHead

__all__ = [
    "FinishedHeads",
    "HeadEstimator",
    "HeadPredictor",
    "HeadSettings",
    "Plan",
    "batch_for",
    "finish_heads",
    "neighbour_count",
    "plan_steps",
    "select_head",
    "settings_from_table",
    "smoothed_prior",
]

S = TypeVar("S", bound="HeadSettings")


@dataclass(frozen=True)
class HeadSettings:
    """Base of the per-method settings dataclasses (validated in ``__post_init__``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_from_table(cls: type[S], table: Mapping[str, Any], where: str) -> S:
    """``cls`` from a config table (``[head.temi]``...), types checked; an unknown key
    raises one line naming it and the known ones."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; {cls.__name__} takes "
                          f"{known}")
    return build_config(cls, overrides=dict(table))


def neighbour_count(n: int, n_clusters: int, given: int | None = None) -> int:
    """k nearest neighbours for ``n`` points and K clusters: ``given``, else
    ``clip(round(n / (20 K)), 5, 50)``; never more than n - 1."""
    k = given or int(np.clip(round(n / (20 * n_clusters)), 5, 50))
    return min(k, n - 1)


def batch_for(n: int, low: int = 64, high: int = 512) -> int:
    """Points per step for ``n`` points: the power of two nearest n / 10, within
    [``low``, ``high``] (and at most n), so an epoch is about ten steps until the batch
    reaches ``high``."""
    b = 2 ** round(math.log2(max(n, 1) / 10)) if n > 10 else low
    return int(min(max(b, low), high, n))


@dataclass(frozen=True)
class Plan:
    """A run's length: ``epochs`` passes of ``steps_per_epoch`` batches of ``batch_size``."""

    batch_size: int
    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan_steps(
    n: int,
    batch_size: int | None = None,
    epochs: int | None = None,
    base_epochs: int = 30,
    min_steps: int = 500,
    max_steps: int = 2000,
) -> Plan:
    """Batch size and epochs for ``n`` points (given values win): batch :func:`batch_for`,
    and ``base_epochs`` epochs unless that is fewer than ``min_steps`` optimisation
    steps (small sets: more epochs) or more than ``max_steps`` (large sets: fewer)."""
    b = min(batch_size or batch_for(n), n)
    spe = math.ceil(n / b)
    if epochs is None:
        target = min(max(base_epochs * spe, min_steps), max_steps)
        epochs = max(1, round(target / spe))
    return Plan(b, epochs, spe)


def kmeans_warm_start(
    head: ClusterHead, x: torch.Tensor, seed: int, steps: int, batch: int, lr: float,
    rng: np.random.Generator, restarts: int = 3,
) -> dict[str, Any]:
    """Train every head of ``head`` to predict its own k-means partition (best of
    ``restarts``, seeded per head) of the head's input space, by cross-entropy (label smoothing 0.1:
    a start, not saturated logits) on batches drawn uniformly over the k-means clusters."""
    from torch.nn import functional as F

    from audioclust.training.heads.deepcluster import balanced_indices
    from audioclust.training.kmeans import KMeans

    k = head.config.n_clusters
    with torch.no_grad():
        prepared = head.prepare(x)
    z = prepared.numpy().astype(np.float64)
    labels = [KMeans(k, n_init=restarts, max_iter=100, random_state=seed * 1009 + h).fit_predict(z)
              for h in range(head.config.n_heads)]
    targets = torch.from_numpy(np.stack(labels))
    order = torch.from_numpy(np.stack([balanced_indices(lab, steps * batch, rng)
                                       for lab in labels]))
    opt = torch.optim.AdamW(head.heads.parameters(), lr=lr, fused=True)
    loss = torch.zeros(())
    for s in range(steps):
        idx = order[:, s * batch : (s + 1) * batch]
        loss = torch.stack([F.cross_entropy(mlp(prepared[idx[h]]), targets[h, idx[h]],
                                            label_smoothing=0.1)
                            for h, mlp in enumerate(head.heads)]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"steps": steps, "final_loss": round(float(loss.detach()) / head.config.n_heads, 4)}


def smoothed_prior(counts: torch.Tensor) -> torch.Tensor:
    """Add-one smoothed cluster frequencies, (counts + 1) / (n + K): never zero (the
    streaming assigner divides by the prior)."""
    counts = counts.double()
    return ((counts + 1) / (counts.sum() + counts.numel())).float()


@dataclass(frozen=True)
class FinishedHeads:
    """What :func:`finish_heads` found: the selected head, every head's clusters of the
    training points (H, n) and cluster sizes (H, K), and the fraction of clusters each
    head uses."""

    selected: int
    assignments: np.ndarray
    counts: np.ndarray
    usage: np.ndarray


def select_head(losses: Sequence[float], usage: Sequence[float]) -> int:
    """The head to keep: the lowest loss among the heads that use the most clusters. A
    head that merged clusters makes its loss easy; it is never kept over one that uses
    more of them."""
    loss = np.asarray(losses, dtype=np.float64)
    used = np.asarray(usage, dtype=np.float64)
    ok = used >= used.max() - 1e-9
    return int(np.flatnonzero(ok)[np.argmin(loss[ok])])


@torch.no_grad()
def finish_heads(
    head: ClusterHead,
    x: torch.Tensor,
    losses: Sequence[float],
    prior: torch.Tensor | None = None,
) -> FinishedHeads:
    """The end of every fit, on the training embeddings ``x`` (n, d).

    Selects a head by :func:`select_head` and gives the saved head its prior:
    ``prior[selected]`` when the method learns one (TEMI's EMA prior; floored at
    1 / (n + K) and renormalised, a no-op unless a cluster died), else the selected
    head's add-one smoothed cluster frequencies. ``head`` is left in eval mode.
    """
    head.eval()
    assign = head.all_logits(x).argmax(-1)  # (H, n)
    k = head.config.n_clusters
    counts = torch.stack([torch.bincount(a, minlength=k) for a in assign])  # (H, K)
    usage = (counts > 0).double().mean(dim=1).numpy()
    best = select_head(losses, usage)
    head.select(best)
    if prior is None:
        head.prior.copy_(smoothed_prior(counts[best]))
    else:
        p = prior[best].double().clamp_min(1.0 / (x.shape[0] + k))
        head.prior.copy_((p / p.sum()).float())
    return FinishedHeads(best, assign.numpy(), counts.numpy(), usage)


class HeadPredictor:
    """``predict_proba`` / ``predict`` from a fitted ``head_``."""

    head_: ClusterHead

    def _check_fitted(self) -> ClusterHead:
        head = getattr(self, "head_", None)
        if head is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")
        return head

    @torch.no_grad()
    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """The selected head's posterior (n, K)."""
        head = self._check_fitted().eval()
        return head(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))).numpy()

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """The selected head's cluster of each row."""
        return self.predict_proba(embeddings).argmax(1)


class HeadEstimator(HeadPredictor):
    """Base of TEMI, SPICE and DeepCluster: constructor, inference and the end of a fit.

    ``Estimator(n_clusters, settings=None, *, seed=0, progress=False, log=None,
    **overrides)``: ``settings`` is the method's :attr:`Settings` dataclass (its
    defaults when None); keyword ``overrides`` replace single fields of it.

    After ``fit``: ``head_``, ``labels_`` (the selected head's clusters of the training
    points), ``head_losses_`` (H,), ``cluster_usage_`` (H,) and ``history_``.
    """

    #: The method's settings dataclass.
    Settings: ClassVar[type[HeadSettings]] = HeadSettings
    #: The method's name in checkpoints and histories.
    method: ClassVar[str] = ""
    #: How the one-line summary after a fit starts.
    label: ClassVar[str] = ""

    labels_: np.ndarray

    def __init__(
        self,
        n_clusters: int,
        settings: HeadSettings | None = None,
        *,
        seed: int = 0,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ):
        if n_clusters < 2:
            raise ConfigError(f"n_clusters: need at least 2 clusters, got {n_clusters}")
        if settings is None:
            settings = self.Settings()
        elif not isinstance(settings, self.Settings):
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__}, got "
                            f"{type(settings).__name__}")
        if overrides:
            known = {f.name for f in dataclasses.fields(settings)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"{type(self).__name__}: unknown setting(s) {unknown}; "
                                f"known: {sorted(known)}")
            settings = dataclasses.replace(settings, **overrides)
        self.n_clusters = n_clusters
        self.settings = settings
        self.seed = seed
        self.progress = progress
        self.log = log

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def _generator(self) -> torch.Generator:
        """A torch generator seeded by ``seed``: fitting never draws from the global RNG."""
        return torch.Generator().manual_seed(self.seed)

    def get_params(self) -> dict[str, Any]:
        """``n_clusters``, ``seed`` and every setting (not the progress/log hooks)."""
        return {"n_clusters": self.n_clusters, "seed": self.seed, **self.settings.to_dict()}

    def fit(self, embeddings: np.ndarray) -> HeadEstimator:
        raise NotImplementedError

    def fit_predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self.fit(embeddings).labels_

    def _finish(
        self,
        head: ClusterHead,
        x: torch.Tensor,
        losses: Sequence[float],
        history: dict[str, Any],
        t_start: float,
        prior: torch.Tensor | None = None,
    ) -> None:
        """Set the fitted attributes from the trained heads (see :func:`finish_heads`)."""
        done = finish_heads(head, x, losses, prior)
        best = done.selected
        self.head_ = head
        self.head_losses_ = np.asarray(losses, dtype=np.float64)
        self.labels_ = done.assignments[best]
        self.cluster_usage_ = done.usage
        seconds = time.perf_counter() - t_start
        history.update({
            "method": self.method,
            "selected": best,
            "head_losses": [float(v) for v in losses],
            "cluster_usage": done.usage.tolist(),
            "n_points": int(x.shape[0]),
            "seconds": round(seconds, 3),
            "params": self.get_params(),
        })
        self.history_ = history
        self._say(f"{self.label}: {head.config.n_heads} heads in {seconds:.1f} s; head {best} "
                  f"selected (loss {losses[best]:.4f}, uses {done.usage[best]:.0%} of "
                  f"{self.n_clusters} clusters)")
