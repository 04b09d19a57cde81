"""The fleet's shared clusters: a registry that gives a sound discovered on any stream of
any instance one id that every instance of the deployment knows.

Each stream's open-set clusterer (:mod:`audioclust.stream.openset`) finds clusters in a
space of its own (:class:`~audioclust.stream.openset.StreamSpace`, standardised by the
stream's statistics) under ids of its own. With a registry (Kafka mode,
:mod:`audioclust.stream.kafka.registry`), a stream's cluster also gets a **registered**
id, from :data:`REGISTERED_BASE` on, that means the same sound on every stream:

- the registry is a log of **proposals**, read in log order by every instance. A proposal
  is one stream cluster in the one space all streams share, the unit space of the
  model's novelty reference (``reference.unit``, where enrolled clusters live too): its
  centroid direction, its member count n, and its members' mean similarity m and radius
  ρ on the scale of an exact centroid, measured as the clusterer measures them but in
  that space: each window's cosine to the centroid of those before it, divided by
  g(n − 1, m₀) (:func:`~audioclust.stream.openset.centroid_factor`), gives the mean and
  mean − z₀.₉₅·std, each shrunk towards the training audio's m₀ and ρ₀ with
  :data:`~audioclust.stream.openset.PRIOR_WEIGHT`;
- **the rule** (:meth:`ClusterRegistry.apply`), the clusterer's own test of distinct
  clusters: a proposal that is not distinct from a registered cluster r (m_p·c ≥ ρ_r or
  m_r·c ≥ ρ_p, c the cosine of the two centroids on the exact scale) is an **alias** of
  the most similar such r (r pools it: centroid, members, m and ρ weighted by members);
  any other takes the next id, ``REGISTERED_BASE + k`` for the k clusters registered
  before it. The first proposal of an origin decides it (a resent one gets
  the same answer). Ids depend on the log's order alone, so every instance that replays
  it assigns the same ones;
- **concurrent creations**: two instances that hear a new sound at once each propose
  their own cluster of it; the log puts one first, and that one is registered, the other
  is its alias. A proposer uses no answer before it has read the log up to its own
  proposal (:meth:`~audioclust.stream.kafka.registry.KafkaClusterRegistry.propose`), so
  both end up with the first one's id;
- per stream (:class:`StreamLink`): a cluster the stream founds takes the id of the
  registered cluster its founding window belongs to (cos ≥ ρ_r·g(n_r, m_r), the radius
  rule of enrolled clusters), so a sound already known to the fleet keeps its id on every
  new stream; a cluster of its own is proposed once it has
  :data:`~audioclust.stream.openset.PRIOR_WEIGHT` members (the clusterer's "enough to see
  its 5 % tail once": the clusters that 5 % of a sound's windows found on their own stay
  smaller and are never proposed), and from the answer on it carries the registered id
  (:meth:`~audioclust.stream.openset.OpenSetClusterer.rename`; records before it carry the
  stream's own id, as with a merge). In a merge a registered id survives a stream's own.

Registered clusters keep the centroid their proposals pooled; they do not follow the
streams' clusters afterwards (as enrolled ones, they are a fixed reference).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from audioclust.models.errors import UserError
from audioclust.models.reference import NoveltyReference
from audioclust.stream.openset import (
    MEMBER_QUANTILE,
    PRIOR_WEIGHT,
    OpenSetClusterer,
    centroid_factor,
)

__all__ = ["REGISTERED_BASE", "ClusterRegistry", "Proposal", "Registry", "RegistryError",
           "StreamLink"]

#: First registered id. A stream's own clusters count up from 0 (head-free) or K by at
#: most one per window: they would need 5·10⁸ windows (about 8 years of one stream at two
#: windows a second) to reach it; enrolled clusters start at 10⁹
#: (:data:`~audioclust.stream.enrol.ENROLLED_BASE`), 5·10⁸ registrations later.
REGISTERED_BASE = 500_000_000
#: Prefix of a stream link's arrays in the stream's state.
_KEY = "registry."
#: z of the radius: the members' similarities' 1 − MEMBER_QUANTILE quantile (as the clusterer).
_Z = NormalDist().inv_cdf(1.0 - MEMBER_QUANTILE)


class RegistryError(UserError, ValueError):
    """A registry that cannot be used (another model's, another format): one line."""


@dataclass(frozen=True)
class Proposal:
    """One stream cluster offered to the registry, in the reference's unit space."""

    origin: str  # unique per proposing cluster (a resend repeats it)
    centroid: np.ndarray  # unit vector (d,)
    members: int
    similarity: float  # m, on the scale of an exact centroid
    radius: float  # ρ, on the same scale

    @classmethod
    def of(cls, origin: str, total: np.ndarray, n: int, s_sum: float, s_sq: float,
           prior_radius: float, prior_similarity: float) -> Proposal:
        """The proposal of ``n`` unit vectors summing to ``total``, whose n − 1 similarities
        (see the module) sum to ``s_sum`` and their squares to ``s_sq``."""
        w = float(n - 1)
        mean = s_sum / w if w > 0 else prior_similarity
        std = math.sqrt(max(s_sq / w - mean * mean, 0.0)) if w > 0 else 0.0
        m = (PRIOR_WEIGHT * prior_similarity + w * mean) / (PRIOR_WEIGHT + w)
        rho = (PRIOR_WEIGHT * prior_radius + w * (mean - _Z * std)) / (PRIOR_WEIGHT + w)
        norm = max(float(np.linalg.norm(total)), 1e-12)
        return cls(origin, np.asarray(total, dtype=np.float64) / norm, n,
                   min(max(m, -1.0), 1.0), min(max(rho, -1.0), 1.0))


class Registry(Protocol):
    """What a stream needs of a registry (in-process: :class:`ClusterRegistry`; Kafka:
    :class:`~audioclust.stream.kafka.registry.KafkaClusterRegistry`)."""

    prior_radius: float
    prior_similarity: float

    def find(self, unit: np.ndarray) -> int | None:
        """The registered cluster whose radius holds the window (reference unit space)."""

    def propose(self, proposal: Proposal) -> int | None:
        """The registered id the proposal resolves to; None: no answer yet (try later)."""


class ClusterRegistry:
    """The registered clusters, built by :meth:`apply` of proposals in log order."""

    def __init__(self, reference: NoveltyReference):
        if reference.cluster_radius is None or reference.cluster_similarity is None:
            raise ValueError("a cluster registry needs a novelty reference with a cluster "
                             "scale (audioclust-export --data DIR)")
        self.dim = reference.dim
        self.prior_radius = float(reference.cluster_radius)
        self.prior_similarity = float(reference.cluster_similarity)
        self._sums = np.zeros((0, self.dim))  # members-weighted centroid sums
        self.centroids = np.zeros((0, self.dim))
        self.members = np.zeros(0)
        self.similarity = np.zeros(0)
        self.radius = np.zeros(0)  # exact scale
        self._window_radius = np.zeros(0)
        #: Every origin seen, with the registered id it resolved to.
        self.resolved: dict[str, int] = {}
        self.aliases = 0

    def __len__(self) -> int:
        return int(self.members.size)

    def find(self, unit: np.ndarray) -> int | None:
        if not len(self):
            return None
        sims = self.centroids @ np.asarray(unit, dtype=np.float64)
        inside = sims >= self._window_radius
        if not inside.any():
            return None
        return REGISTERED_BASE + int(np.argmax(np.where(inside, sims, -np.inf)))

    def apply(self, p: Proposal) -> int:
        """The registered id of proposal ``p``, the next in log order (see the module)."""
        known = self.resolved.get(p.origin)
        if known is not None:
            return known
        if p.centroid.shape != (self.dim,) or not np.isfinite(p.centroid).all() \
                or p.members < 2 or not (-1.0 <= p.similarity <= 1.0
                                         and -1.0 <= p.radius <= 1.0):
            raise ValueError("a proposal of another model or malformed")
        k = self._alias_of(p)
        if k is None:
            k = len(self)
            self._sums = np.vstack([self._sums, p.members * p.centroid])
            self.centroids = np.vstack([self.centroids, p.centroid])
            self.members = np.append(self.members, float(p.members))
            self.similarity = np.append(self.similarity, p.similarity)
            self.radius = np.append(self.radius, p.radius)
            self._window_radius = np.append(self._window_radius, 0.0)
        else:
            self.aliases += 1
            n, w = self.members[k], float(p.members)
            self._sums[k] += w * p.centroid
            self.centroids[k] = self._sums[k] / max(float(np.linalg.norm(self._sums[k])), 1e-12)
            self.similarity[k] = (n * self.similarity[k] + w * p.similarity) / (n + w)
            self.radius[k] = (n * self.radius[k] + w * p.radius) / (n + w)
            self.members[k] = n + w
        self._window_radius[k] = self.radius[k] * float(
            centroid_factor(self.members[k], self.similarity[k]))
        rid = REGISTERED_BASE + k
        self.resolved[p.origin] = rid
        return rid

    def propose(self, proposal: Proposal) -> int:
        return self.apply(proposal)  # in one process the log is the call order

    def _alias_of(self, p: Proposal) -> int | None:
        """The most similar registered cluster that ``p`` is not distinct from."""
        if not len(self):
            return None
        cos = self.centroids @ p.centroid
        g = centroid_factor(self.members, self.similarity) \
            * float(centroid_factor(p.members, p.similarity))
        exact = np.minimum(1.0, cos / g)
        same = (p.similarity * exact >= self.radius) | (self.similarity * exact >= p.radius)
        if not same.any():
            return None
        return int(np.argmax(np.where(same, cos, -np.inf)))


class StreamLink:
    """One stream's side of the registry: learns each window with the stream's clusterer
    and gives its clusters their registered ids (see the module for the rule).

    Keeps, per cluster of the stream's own not yet registered, what its proposal needs in
    the reference's unit space (the sum of its windows; their count and the sum and sum of
    squares of their similarities) and the origin of a proposal sent but not answered: all
    in the stream's state, so it moves with the stream. Of two of them that merge, the
    survivor keeps only its own part (the other's is dropped).
    """

    def __init__(self, registry: Registry, clusterer: OpenSetClusterer):
        self.registry = registry
        self.clusterer = clusterer
        clusterer.shared_from = REGISTERED_BASE
        self.sums: dict[int, np.ndarray] = {}
        self.stats: dict[int, np.ndarray] = {}  # [windows, Σs, Σs²]
        self.origins: dict[int, str] = {}

    def learn_one(self, x: np.ndarray, shared: np.ndarray) -> int:
        """``clusterer.learn_one(x)`` and the registry's part; ``shared`` is the window in
        the reference's unit space. Returns the id the window ends up under."""
        c = self.clusterer
        created, gone = c.created, c.merged + c.evicted
        cluster = c.learn_one(x)
        if c.merged + c.evicted != gone:
            self._forget(set(c.live_ids))
        if cluster >= REGISTERED_BASE:
            return cluster
        if c.created > created and cluster == c.next_id - 1:  # founded by this window
            known = self.registry.find(shared)
            if known is not None:
                return c.rename(cluster, known)
        shared = np.asarray(shared, dtype=np.float64)
        total, stats = self.sums.get(cluster), self.stats.get(cluster)
        if total is None or stats is None:
            self.sums[cluster], self.stats[cluster] = shared.copy(), np.array([1.0, 0.0, 0.0])
            return cluster
        n = int(stats[0])  # windows before this one: its similarity is to their centroid
        m0 = self.registry.prior_similarity
        sim = float(shared @ total) / max(float(np.linalg.norm(total)), 1e-12) \
            / float(centroid_factor(n, m0))
        stats += (1.0, sim, sim * sim)
        total += shared
        if n + 1 < PRIOR_WEIGHT:
            return cluster
        origin = self.origins.setdefault(cluster, uuid.uuid4().hex)
        rid = self.registry.propose(Proposal.of(origin, total, n + 1, float(stats[1]),
                                                float(stats[2]), self.registry.prior_radius,
                                                m0))
        if rid is None:
            return cluster
        self._forget({i for i in self.stats if i != cluster})
        return c.rename(cluster, rid)

    def _forget(self, keep: set[int]) -> None:
        for i in [i for i in self.stats if i not in keep]:
            del self.stats[i]
            self.sums.pop(i, None)
            self.origins.pop(i, None)

    # --- state (in the stream's, under ``registry.``) ---------------------------------

    def save_into(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        ids = sorted(self.stats)
        arrays[f"{_KEY}ids"] = np.array(ids, dtype=np.int64)
        arrays[f"{_KEY}stats"] = np.array([self.stats[i] for i in ids]).reshape(len(ids), 3)
        arrays[f"{_KEY}sums"] = np.array([self.sums[i] for i in ids]).reshape(
            len(ids), self.clusterer.dim)
        scalars["registry"] = {"origins": {str(i): o for i, o in self.origins.items()}}

    def load_from(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        """Restore what :meth:`save_into` wrote; a state saved without a registry leaves
        the link empty (its clusters are proposed once they grow again)."""
        self.sums, self.stats, self.origins = {}, {}, {}
        if f"{_KEY}ids" not in arrays:
            return
        ids = [int(i) for i in arrays[f"{_KEY}ids"]]
        sums, stats = arrays[f"{_KEY}sums"], arrays[f"{_KEY}stats"]
        if sums.shape != (len(ids), self.clusterer.dim) or stats.shape != (len(ids), 3):
            raise ValueError("registry link: its arrays do not fit together or the model")
        self.sums = {i: sums[j].astype(np.float64) for j, i in enumerate(ids)}
        self.stats = {i: stats[j].astype(np.float64) for j, i in enumerate(ids)}
        origins = scalars.get("registry", {}).get("origins", {})
        self.origins = {int(k): str(v) for k, v in origins.items()}
