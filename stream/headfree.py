"""Head-free mode: clustering the embeddings online when the model has no clustering head.

The clusterer is river's :class:`~river.cluster.STREAMKMeans`, on L2-normalised
embeddings, shared by all streams (cluster 3 means the same sound whichever stream it
came from, as with a trained head). Why STREAMKMeans rather than DBSTREAM:

- its cluster ids are stable: each id is one centre that moves a little per chunk,
  whereas DBSTREAM re-derives its macro-clusters from the micro-cluster graph at every
  request and renumbers them, so an id in the output would not keep its meaning;
- its state is K centres (plus the partly filled chunk): plain arrays in the state file,
  no pickle; DBSTREAM's is micro-clusters, weights, timestamps and a shared-density graph;
- it costs O(K·d) per window in pure Python; DBSTREAM's cleanup and reclustering cost more.

The price is a fixed K (``headfree.n_clusters``); novel sounds are still flagged by the
novelty test below. river initialises centres with Gaussian values: we use σ = 0.01 so
they start near the origin with random directions; centres of a chunk's k-means that got
no point stay there, and feeding them to the global k-means then only shrinks a centre
without turning it, which leaves cosine assignments unchanged.

Per window (predict, then learn, like river): z ← z/‖z‖; with the centres' directions μ̂_c,

    p(c|z) ∝ exp(cos(z, μ̂_c) / τ) = exp(−‖z − μ̂_c‖² / 2τ) · const

(a softmax over the negative squared distances to the unit centres, temperature τ =
``headfree.temperature``). That posterior goes through the same per-stream
:class:`~audioclust.stream.assign.StreamAssigner` as a head's, with a uniform training
prior: prior correction, confidence = max corrected posterior, novelty (low confidence or
low similarity to the stream's running centroid), ADWIN drift. Then the clusterer learns z.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

import numpy as np
from river import cluster

from audioclust.stream.assign import AssignConfig, Assigner, Assignment
from audioclust.stream.config import HeadFreeConfig

__all__ = ["HeadFreeAssigner", "OnlineClusterer"]

#: Prefix of the clusterer's arrays in the state file (stream states are "stream.<i>").
_KEY = "__headfree__."


def _unit(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64).ravel()
    n = np.linalg.norm(z)
    return z / n if n > 0 else z


class OnlineClusterer:
    """river STREAMKMeans over unit vectors, with array access to its centres."""

    def __init__(self, dim: int, config: HeadFreeConfig | None = None):
        self.dim = dim
        self.config = c = config or HeadFreeConfig()
        self.model = cluster.STREAMKMeans(chunk_size=c.chunk_size, n_clusters=c.n_clusters,
                                          halflife=c.halflife, mu=0.0, sigma=0.01, seed=c.seed)

    def _features(self, unit: np.ndarray) -> dict[int, float]:
        return {i: float(v) for i, v in enumerate(unit)}

    def centres(self) -> np.ndarray:
        """(K, d) centres of the global k-means (river fills unseen dimensions lazily)."""
        cs = self.model._kmeans.centers
        return np.array([[cs[k][j] for j in range(self.dim)] for k in sorted(cs)])

    def posterior(self, unit: np.ndarray) -> np.ndarray:
        """p(c|z) ∝ exp(cos(z, μ_c)/τ) for a unit vector z."""
        mu = self.centres()
        norms = np.linalg.norm(mu, axis=1)
        cos = (mu @ unit) / np.where(norms > 0, norms, 1.0)
        logits = cos / self.config.temperature
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def learn(self, unit: np.ndarray) -> None:
        self.model.learn_one(self._features(unit))

    # --- state (arrays only) --------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        m = self.model
        chunk = [[x[j] for j in range(self.dim)] for _, x in sorted(m._temp_chunk.items())]
        arrays = {"centres": self.centres(),
                  "chunk": np.array(chunk, dtype=np.float64).reshape(-1, self.dim)}
        return arrays, {"time_stamp": m.time_stamp, "config": asdict(self.config)}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        centres = arrays["centres"]
        if centres.shape != (self.config.n_clusters, self.dim):
            raise ValueError(f"state holds {centres.shape} head-free centres, this run needs "
                             f"{(self.config.n_clusters, self.dim)}")
        m = self.model
        km = m._kmeans
        # river's centres are defaultdicts that draw unseen dimensions from its RNG
        factory = next(iter(km.centers.values())).default_factory
        km.centers = {k: defaultdict(factory, {j: float(v) for j, v in enumerate(row)})
                      for k, row in enumerate(centres)}
        m.centers = km.centers
        m.time_stamp = int(scalars["time_stamp"])
        m._temp_chunk = {i: self._features(row) for i, row in enumerate(arrays["chunk"])}


class HeadFreeAssigner(Assigner):
    """:class:`Assigner` whose posteriors come from the :class:`OnlineClusterer`."""

    def __init__(self, dim: int, config: HeadFreeConfig | None = None,
                 assign: AssignConfig | None = None, model_id: str = ""):
        self.headfree = config or HeadFreeConfig()
        k = self.headfree.n_clusters
        super().__init__(np.full(k, 1.0 / k), dim, assign, model_id)
        self.clusterer = OnlineClusterer(dim, self.headfree)

    def process(self, stream: str, embedding: np.ndarray,
                posterior: np.ndarray | None = None) -> Assignment:
        unit = _unit(embedding)
        a = self.stream(stream).process(unit, self.clusterer.posterior(unit))
        self.clusterer.learn(unit)
        return a

    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The clusterer's centres go into the same atomic npz as the streams."""
        c_arrays, c_scalars = self.clusterer.state()
        return {f"{_KEY}{key}": value for key, value in c_arrays.items()}, {"headfree": c_scalars}

    def _load_extra(self, arrays: dict[str, np.ndarray], doc: dict[str, Any]) -> None:
        if "headfree" not in doc:
            raise ValueError("state of a model with a head, not head-free")
        self.clusterer.load_state({k[len(_KEY):]: v for k, v in arrays.items()
                                   if k.startswith(_KEY)}, doc["headfree"])
