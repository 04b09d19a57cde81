"""Open-set online clustering: clusters that appear, merge and fade as the sound changes.

One notion says how far apart two clusters must be, and it is used both here (online:
when to create a cluster, when to merge two) and offline by ``--clusters auto``
(:mod:`audioclust.training.nclusters`: how many clusters the training data holds). On unit
vectors (the heads' input space: standardised, then L2-normalised), every cluster c has

- a centroid direction μ_c and its members' similarities s = cos(x, μ_c), each measured
  against the centroid of the *other* members (leave-one-out; online: before the member
  is added), whose mean is m_c;
- a **radius** ρ_c: the similarity that all but ``MEMBER_QUANTILE`` (5 %) of its members
  reach. A window x **belongs** to c when cos(x, μ_c) ≥ ρ_c.

Two clusters a and b are **distinct** unless most (half or more) of a's members belong to
b, or the other way round. Offline that share is counted. Online the members are gone:
a member of a is m_a·u_a plus a part nearly orthogonal (in many dimensions) to everything
else, so its similarity to b's centre is m_a·cos(u_a, u_b), and a and b merge when
m_a·cos(u_a, u_b) ≥ ρ_b or m_b·cos(u_a, u_b) ≥ ρ_a. Here u, m and ρ are on the scale of
an exact centroid: a centroid of n members is itself noisy, and under the same model
cos(x, centroid of n) = m·g(n, m) with g = 1/√(1 + (1/m² − 1)/n)
(:func:`centroid_factor`; g = m for one member). So similarities measured against young
centroids are divided by g before they enter a cluster's statistics, a young cluster's
radius is ρ·g(n), and two centroids' cosine is divided by g(n_a)·g(n_b) before the merge
test (two halves of one sound do not have cosine 1 until both are large).

Online, per window x (unit vector), :meth:`OpenSetClusterer.learn_one`:

1. x joins the most similar cluster whose radius it is within; if it is within none, it
   founds a new cluster with the next id (ids only grow: an id always means one cluster).
   By the definition of the radius about 5 % of a known sound's windows found clusters of
   their own; they stay small and are the first to go under the cap;
2. the cluster's statistics (EMA mean and variance of s, giving ρ̂ = mean − z₀.₉₅·std)
   and its centroid (μ ← μ + η(x − μ), renormalised, η = max(1/n, 1 − ``momentum``: the
   running mean at first, then an EMA that follows a slowly changing sound) move to x;
3. the cluster is merged with its most similar neighbour if the two are not distinct;
   the older (smaller) id survives, centroids, counts and statistics are pooled.

The radius and mean similarity of a young cluster are shrunk towards the priors ρ₀ and m₀
(its own estimate counts as many similarities as it has measured, the prior as
:data:`PRIOR_WEIGHT` = 1/``MEMBER_QUANTILE`` = 20: the members it takes to see the 5 %
tail once). ρ₀ and m₀ come from the model's novelty reference (the clusters of the
training windows, :class:`~audioclust.models.reference.NoveltyReference`) or, for
embeddings without a model, from the same rule applied to them (:func:`prior_from_data`):
never a fixed number. At most ``max_clusters`` live at once; a new one beyond the cap
evicts the cluster not seen for longest. :class:`StreamSpace` is the unit space a stream's
clusters live in.

State (:meth:`~OpenSetClusterer.state` / :meth:`~OpenSetClusterer.load_state`): arrays
and JSON scalars only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from audioclust.models.errors import ConfigError, DataError
from audioclust.models.reference import floored_std

__all__ = [
    "MEMBER_QUANTILE", "PRIOR_WEIGHT", "OpenSetClusterer", "OpenSetConfig", "StreamSpace",
    "belongs_fraction", "centroid_factor", "cluster_summary", "loo_similarities",
    "prior_from_data",
]

#: Fraction of a cluster's own members allowed outside its radius.
MEMBER_QUANTILE = 0.05
#: The standard normal quantile of 1 − MEMBER_QUANTILE (radius = mean − Z·std online).
_Z = 1.6448536269514722
#: Share of one cluster's members that must belong to another for the two to be one.
MAJORITY = 0.5
#: Weight of a prior (the radius, the mean similarity, the stream statistics) against the
#: stream's own estimate, in windows: the 1/β it takes to see the β tail once.
PRIOR_WEIGHT = 1.0 / MEMBER_QUANTILE


def _unit_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


# --- the notion, on a labelled set of unit vectors (offline) ---------------------------------

def loo_similarities(x: np.ndarray) -> np.ndarray:
    """cos(x_i, Σ_{j≠i} x_j) for the members x (n, d) of one cluster; n < 2 gives []."""
    if x.shape[0] < 2:
        return np.zeros(0)
    others = x.sum(0)[None, :] - x
    norms = np.linalg.norm(others, axis=1)
    return (x * others).sum(1) / np.where(norms > 0, norms, 1.0)


def cluster_summary(x: np.ndarray, labels: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster 0..k-1 of unit vectors ``x``: centroid directions (k, d), radii (k,),
    mean member similarities (k,), and all members' similarities pooled (for ρ₀, m₀).
    A cluster of fewer than two members has radius and mean 1 (it accepts only itself)."""
    centroids = np.zeros((k, x.shape[1]))
    radii, means, pooled = np.ones(k), np.ones(k), []
    for c in range(k):
        members = x[labels == c]
        if members.shape[0]:
            centroids[c] = members.sum(0)
        s = loo_similarities(members)
        if s.size:
            radii[c] = np.quantile(s, MEMBER_QUANTILE)
            means[c] = s.mean()
            pooled.append(s)
    return _unit_rows(centroids), radii, means, \
        (np.concatenate(pooled) if pooled else np.zeros(0))


def belongs_fraction(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray,
                     radii: np.ndarray) -> np.ndarray:
    """(k, k): entry (a, b) is the fraction of a's members within b's radius (diagonal 0).
    Clusters a and b are distinct while both (a, b) and (b, a) are below one half."""
    k = centroids.shape[0]
    out = np.zeros((k, k))
    sims = x @ centroids.T
    for a in range(k):
        mine = sims[labels == a]
        if mine.shape[0]:
            out[a] = (mine >= radii[None, :]).mean(0)
    np.fill_diagonal(out, 0.0)
    return out


def prior_from_data(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """(ρ₀, m₀) of a clustering: the radius and the mean of all members' similarities."""
    *_, pooled = cluster_summary(x, labels, k)
    if pooled.size == 0:
        raise DataError("no cluster of two or more members to measure a radius on")
    return float(np.quantile(pooled, MEMBER_QUANTILE)), float(pooled.mean())


def _factor(n: float, m: float) -> float:
    """:func:`centroid_factor` for one cluster, in plain floats (the per-window path)."""
    m = min(max(m, 0.05), 1.0)
    return 1.0 / math.sqrt(1.0 + (1.0 / (m * m) - 1.0) / max(n, 1.0))


def centroid_factor(n: np.ndarray | float, m: np.ndarray | float) -> np.ndarray:
    """Expected cos(x, centroid of n members) over cos(x, exact centroid) = m.

    With members x = m·u + √(1 − m²)·e (u the cluster's direction, e nearly orthogonal
    noise in many dimensions), the centroid of n of them is m·u + √(1 − m²)·ē with
    ‖ē‖² ≈ 1/n, so cos(x, centroid) = m / √(1 + (1/m² − 1)/n): m² for one member.
    """
    m = np.clip(np.asarray(m, dtype=np.float64), 0.05, 1.0)
    return 1.0 / np.sqrt(1.0 + (1.0 / (m * m) - 1.0) / np.maximum(n, 1.0))


# --- the space the clusters live in ------------------------------------------------------------

class StreamSpace:
    """The heads' unit space, standardised by the stream's own running statistics.

    x = (z − mean) / std, then x/‖x‖, with mean and variance those of the stream's
    embeddings so far pooled with the training audio's (``prior_mean``, ``prior_std``: the
    model's reference) counted as :data:`PRIOR_WEIGHT` windows, and the std floored like
    the heads' (:func:`~audioclust.models.reference.floored_std`). Audio like the training
    data keeps the training space; audio unlike it (novel windows of a speech model fed
    music) is re-centred on itself, where it has structure, instead of sharing one offset
    from the training mean that would make every such window look alike.
    """

    def __init__(self, prior_mean: np.ndarray, prior_std: np.ndarray):
        self.prior_mean = np.asarray(prior_mean, dtype=np.float64)
        self.prior_var = np.asarray(prior_std, dtype=np.float64) ** 2
        self.count = 0
        self.mean = np.zeros_like(self.prior_mean)
        self.m2 = np.zeros_like(self.prior_mean)  # sum of squared deviations (Welford)

    def learn_transform(self, z: np.ndarray) -> np.ndarray:
        """Take ``z`` into the statistics, then return it in the current unit space."""
        z = np.asarray(z, dtype=np.float64).ravel()
        self.count += 1
        d = z - self.mean
        self.mean += d / self.count
        self.m2 += d * (z - self.mean)
        n = float(self.count)
        a, b = PRIOR_WEIGHT / (PRIOR_WEIGHT + n), n / (PRIOR_WEIGHT + n)
        shift = self.mean - self.prior_mean
        mean = self.prior_mean + b * shift
        var = a * self.prior_var + self.m2 / (PRIOR_WEIGHT + n) + a * b * shift * shift
        x = (z - mean) / floored_std(np.sqrt(var))
        norm = math.sqrt(float(x @ x))
        return x / norm if norm > 0 else x

    def state(self) -> dict[str, np.ndarray]:
        return {"count": np.array(self.count), "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays["mean"].shape != self.mean.shape:
            raise ValueError(f"state holds {arrays['mean'].shape[0]}-d stream statistics, the "
                             f"model gives {self.mean.shape[0]}-d embeddings")
        mean, m2 = arrays["mean"], arrays["m2"]
        count = np.asarray(arrays["count"])
        if (m2.shape != mean.shape or count.size != 1 or not np.isfinite(mean).all()
                or not np.isfinite(m2).all() or (m2 < 0).any() or not count.item() >= 0):
            raise ValueError("state's stream statistics do not fit together or are not "
                             "finite")
        self.count = int(count.item())
        self.mean = mean.astype(np.float64)
        self.m2 = m2.astype(np.float64)


# --- the online clusterer ------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenSetConfig:
    """Settings of the open-set clusterer (``[openset]`` in the stream's settings)."""

    #: Clusters alive at once per stream; a new one beyond this evicts the stalest.
    max_clusters: int = 64
    #: Floor of the centroids' EMA: they average about the last 1/(1 − m) members.
    momentum: float = 0.98
    #: p(c|x) ∝ exp(cos(x, μ_c) / τ): the confidence reported with a cluster.
    temperature: float = 0.1

    def __post_init__(self) -> None:
        # written so that NaN fails every test
        if (not 2 <= self.max_clusters <= 100_000 or not 0 <= self.momentum < 1
                or not 0 < self.temperature <= 1e6):
            raise ConfigError("openset needs max_clusters in [2, 100000], momentum in [0, 1) "
                              "and temperature in (0, 1e6]")


class OpenSetClusterer:
    """Online clusters of unit vectors (river style: ``predict_one``, ``learn_one``)."""

    _ARRAYS = ("centroids", "ids", "counts", "sim_mean", "sim_var", "last_seen")
    # per row, derived from the arrays above (kept so a window costs two mat-vecs)
    _DERIVED = ("_mean", "_exact", "_factor", "_radius")

    def __init__(self, dim: int, radius: float, similarity: float,
                 config: OpenSetConfig | None = None):
        if not -1.0 <= radius <= 1.0 or not -1.0 <= similarity <= 1.0:
            raise DataError(f"the prior radius and similarity are cosines in [-1, 1], got "
                            f"{radius}, {similarity}")
        self.dim = dim
        self.prior_radius, self.prior_similarity = float(radius), float(similarity)
        self.config = config = config or OpenSetConfig()
        cap = config.max_clusters
        self.centroids = np.zeros((cap, dim))
        self.ids = np.full(cap, -1, dtype=np.int64)
        self.counts = np.zeros(cap, dtype=np.int64)
        self.sim_mean = np.zeros(cap)
        self.sim_var = np.zeros(cap)
        self.last_seen = np.zeros(cap, dtype=np.int64)
        for name in self._DERIVED:
            setattr(self, name, np.zeros(cap))
        # cosines between the live centroids, kept up to date exactly by the same linear
        # updates as the centroids: the merge test then needs no second mat-vec
        self._gram = np.zeros((cap, cap))
        lam = 1.0 - config.momentum
        self._ema_members = math.inf if lam == 0 else (2.0 - lam) / lam
        self.size = 0  # live clusters: rows 0..size-1
        self.next_id = 0
        self.seen = 0  # windows learnt
        self.created = self.merged = self.evicted = 0

    # --- reading --------------------------------------------------------------------------

    @property
    def live_ids(self) -> list[int]:
        return [int(i) for i in self.ids[: self.size]]

    def _refresh(self, row: int) -> None:
        """Recompute the derived statistics of ``row``:

        m (exact-centroid mean similarity) and ρ∞ (exact-centroid radius), each its own
        estimate shrunk towards the prior (m₀, ρ₀) with :data:`PRIOR_WEIGHT`; the factor
        g(n_eff, m) of its centroid (n_eff: its members, at most the EMA's (2 − λ)/λ);
        and the radius it applies to windows, ρ∞·g.
        """
        n = int(self.counts[row])
        sim_mean, sim_var = float(self.sim_mean[row]), float(self.sim_var[row])
        w = float(n - 1) if n > 1 else 0.0  # similarities measured so far
        total = PRIOR_WEIGHT + w
        mean = (PRIOR_WEIGHT * self.prior_similarity + w * sim_mean) / total
        own = sim_mean - _Z * math.sqrt(sim_var if sim_var > 0 else 0.0)
        exact = (PRIOR_WEIGHT * self.prior_radius + w * own) / total
        factor = _factor(min(float(n), self._ema_members), mean)
        self._mean[row], self._exact[row] = mean, exact
        self._factor[row], self._radius[row] = factor, exact * factor

    def radii(self) -> np.ndarray:
        """ρ_c of the live clusters for their centroids as they are: the exact-centroid
        radius times the :func:`centroid_factor` of their member count."""
        return self._radius[: self.size].copy()

    def _joinable(self, x: np.ndarray) -> tuple[int | None, np.ndarray]:
        """Row of the most similar cluster whose radius holds x (None: none), and sims."""
        if self.size == 0:
            return None, np.zeros(0)
        sims = self.centroids[: self.size] @ x
        outside = sims < self._radius[: self.size]
        masked = sims - 4.0 * outside  # cosines lie in [-1, 1]: outside ones drop below -2
        best = int(np.argmax(masked))
        return (None if masked[best] < -2.0 else best), sims

    def predict_one(self, x: np.ndarray) -> int:
        """The id ``x`` would get: its cluster's, or the id a new cluster would take."""
        row, _ = self._joinable(np.asarray(x, dtype=np.float64))
        return self.next_id if row is None else int(self.ids[row])

    def proba_one(self, x: np.ndarray) -> dict[int, float]:
        """p(c|x) ∝ exp(cos(x, μ_c)/τ) over the live clusters."""
        if self.size == 0:
            return {}
        logits = self.centroids[: self.size] @ np.asarray(x, dtype=np.float64)
        logits = logits / self.config.temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return dict(zip(self.ids[: self.size].tolist(), p.tolist(), strict=True))

    def similarity(self, x: np.ndarray, cluster: int) -> float | None:
        rows = np.flatnonzero(self.ids[: self.size] == cluster)
        return None if rows.size == 0 else float(self.centroids[rows[0]] @ x)

    # --- learning -------------------------------------------------------------------------

    def learn_one(self, x: np.ndarray) -> int:
        """Learn unit vector ``x``; returns the id of the cluster it ends up in (after any
        merge). River's ``learn_one`` returns nothing: the stream needs this id."""
        x = np.asarray(x, dtype=np.float64).ravel()
        self.seen += 1
        row, sims = self._joinable(x)
        if row is None:
            row = self._create(x, sims)
        else:
            self._absorb(row, x, sims)
        self.last_seen[row] = self.seen
        return self._merge_neighbour(row)

    def _create(self, x: np.ndarray, sims: np.ndarray) -> int:
        if self.size == self.config.max_clusters:
            evict = int(np.argmin(self.last_seen[: self.size]))
            sims = sims.copy()
            sims[evict] = sims[self.size - 1]  # the last row moves into the gap
            sims = sims[: self.size - 1]
            self._remove(evict)
            self.evicted += 1
        row = self.size
        self.centroids[row] = x
        self._gram[row, :row] = self._gram[:row, row] = sims[:row]
        self._gram[row, row] = 1.0
        self.ids[row] = self.next_id
        self.counts[row] = 1
        self.sim_mean[row] = self.sim_var[row] = 0.0
        self._refresh(row)
        self.size += 1
        self.next_id += 1
        self.created += 1
        return row

    def _absorb(self, row: int, x: np.ndarray, sims: np.ndarray) -> None:
        m = self.config.momentum
        n = int(self.counts[row])  # members before x: s is measured against them
        s = float(sims[row]) / float(self._factor[row])  # on the exact-centroid scale
        if n == 1:  # first similarity of this cluster
            self.sim_mean[row], self.sim_var[row] = s, 0.0
        else:
            rate = max(1.0 / n, 1.0 - m)
            mean, var = float(self.sim_mean[row]), float(self.sim_var[row])
            d = s - mean
            self.sim_mean[row] = mean + rate * d
            self.sim_var[row] = (1 - rate) * (var + rate * d * d)
        self.counts[row] = n + 1
        eta = max(1.0 / (n + 1), 1.0 - m)
        c = self.centroids[row]
        c *= 1.0 - eta
        c += eta * x
        norm = max(math.sqrt(float(c @ c)), 1e-12)
        c /= norm
        size = self.size
        g = ((1.0 - eta) * self._gram[row, :size] + eta * sims) / norm
        g[row] = 1.0
        self._gram[row, :size] = self._gram[:size, row] = g
        self._refresh(row)

    def _merge_neighbour(self, row: int) -> int:
        if self.size < 2:
            return int(self.ids[row])
        cos = self._gram[row, : self.size].copy()
        cos[row] = -np.inf
        other = int(np.argmax(cos))
        # the cosine of the exact centroids: two centroids of n_a and n_b members of one
        # cluster have cos g(n_a)·g(n_b), not 1
        c = min(1.0, float(cos[other]) / (self._factor[row] * self._factor[other]))
        if self._mean[row] * c < self._exact[other] and self._mean[other] * c < self._exact[row]:
            return int(self.ids[row])
        keep, drop = (row, other) if self._older(int(self.ids[row]), int(self.ids[other])) \
            else (other, row)
        self._pool(keep, drop)
        survivor = int(self.ids[keep])
        self._remove(drop)
        self.merged += 1
        return survivor

    # --- the hook of a shared registry (:mod:`audioclust.stream.registry`) ---------------

    #: Ids from this one on are a fleet-wide registry's; None: no registry.
    shared_from: int | None = None

    def _older(self, a: int, b: int) -> bool:
        """Whether id ``a`` survives a merge with ``b``: the smaller, but a registry's ids
        (known to the whole fleet) before the stream's own."""
        s = self.shared_from
        if s is not None and (a >= s) != (b >= s):
            return a >= s
        return a < b

    def rename(self, old: int, new: int) -> int:
        """Give live cluster ``old`` the registry's id ``new`` for the same sound; if ``new``
        is live already, ``old`` is pooled into it (counted as a merge). Returns ``new``."""
        rows = np.flatnonzero(self.ids[: self.size] == old)
        if rows.size == 0:
            raise KeyError(f"no live cluster {old}")
        row = int(rows[0])
        there = np.flatnonzero(self.ids[: self.size] == new)
        if there.size:
            self._pool(int(there[0]), row)
            self._remove(row)
            self.merged += 1
        else:
            self.ids[row] = new
        return new

    def _pool(self, keep: int, drop: int) -> None:
        nk, nd = float(self.counts[keep]), float(self.counts[drop])
        w = nk + nd
        c = nk * self.centroids[keep] + nd * self.centroids[drop]
        norm = max(float(np.linalg.norm(c)), 1e-12)
        self.centroids[keep] = c / norm
        size = self.size
        g = (nk * self._gram[keep, :size] + nd * self._gram[drop, :size]) / norm
        g[keep] = 1.0
        self._gram[keep, :size] = self._gram[:size, keep] = g
        # each side's similarity statistics weighed by how many similarities it measured
        ak, ad = max(nk - 1, 0.0), max(nd - 1, 0.0)
        if ak + ad > 0:
            mean = (ak * self.sim_mean[keep] + ad * self.sim_mean[drop]) / (ak + ad)
            var = (ak * (self.sim_var[keep] + (self.sim_mean[keep] - mean) ** 2)
                   + ad * (self.sim_var[drop] + (self.sim_mean[drop] - mean) ** 2)) / (ak + ad)
            self.sim_mean[keep], self.sim_var[keep] = mean, var
        self.counts[keep] = int(w)
        self.last_seen[keep] = max(self.last_seen[keep], self.last_seen[drop])
        self._refresh(keep)

    def _remove(self, row: int) -> None:
        last = self.size - 1
        if row != last:
            for name in self._ARRAYS + self._DERIVED:
                arr = getattr(self, name)
                arr[row] = arr[last]
            self._gram[row, :] = self._gram[last, :]
            self._gram[:, row] = self._gram[:, last]
            self._gram[row, row] = 1.0
        self.size = last

    # --- state ----------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {name: getattr(self, name)[: self.size].copy() for name in self._ARRAYS}
        scalars = {"next_id": self.next_id, "seen": self.seen, "created": self.created,
                   "merged": self.merged, "evicted": self.evicted, "radius": self.prior_radius,
                   "similarity": self.prior_similarity, "config": asdict(self.config)}
        return arrays, scalars

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        missing = [k for k in self._ARRAYS if k not in arrays]
        if missing or "next_id" not in scalars:
            raise ValueError(f"not an open-set clusterer state (missing {missing or 'next_id'})")
        size = int(arrays["ids"].shape[0])
        if arrays["centroids"].shape != (size, self.dim):
            raise ValueError(f"state holds {arrays['centroids'].shape} open-set centroids, "
                             f"this model needs {self.dim}-d ones")
        if size > self.config.max_clusters:
            raise ValueError(f"state holds {size} clusters, more than max_clusters "
                             f"{self.config.max_clusters}")
        if any(arrays[n].shape[:1] != (size,) or not np.isfinite(arrays[n]).all()
               for n in self._ARRAYS):
            raise ValueError("state's open-set clusters do not fit together or are not finite")
        for name in self._ARRAYS:
            getattr(self, name)[:size] = arrays[name]
        self.size = size
        for row in range(size):
            self._refresh(row)
        live = self.centroids[:size]
        self._gram[:size, :size] = live @ live.T
        self.next_id = int(scalars["next_id"])
        self.seen = int(scalars["seen"])
        self.created = int(scalars.get("created", 0))
        self.merged = int(scalars.get("merged", 0))
        self.evicted = int(scalars.get("evicted", 0))
