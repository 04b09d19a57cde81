"""Head-free mode: clusters discovered online when the model has no clustering head.

Every stream runs its own :class:`~audioclust.stream.openset.OpenSetClusterer` over the
window embeddings in a unit space standardised by the stream's running statistics, which
start from the model reference's (:class:`~audioclust.stream.openset.StreamSpace`): a
window far from every cluster founds a new one, clusters that converge merge, the stalest
is forgotten beyond ``openset.max_clusters``, ids never change meaning. How far is far
comes from the training audio: the prior radius of the reference
(:class:`~audioclust.models.reference.NoveltyReference`, computed at export by the rule of
``--clusters auto``), which is why a head-free model needs one (``audioclust-export --data
DIR``).

Per stream, not shared: a stream's records then depend only on its own windows in order,
so a file, a microphone and a Kafka topic (whose streams move between consumer instances
with their state) give the same records. The price: cluster 3 of one stream and cluster 3
of another are unrelated (with a head, ids below K mean the same sound everywhere), unless
a cluster registry (Kafka mode, :mod:`audioclust.stream.registry`) gives them ids the whole
group shares, from ``REGISTERED_BASE`` on.

Per window (in stream order): novelty from the reference, as with a head; the cluster the
clusterer puts the window in (every window gets one; ``discovered`` is always true);
confidence p(c|x) ∝ exp(cos(x, μ_c)/τ) for that cluster after learning; ``top`` and
``nearest`` the most similar live cluster; ``similarity`` the cosine to the cluster's
centroid; ADWIN drift on the confidence and the novelty flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audioclust.models.errors import DataError
from audioclust.models.reference import NoveltyReference
from audioclust.stream.assign import (
    AssignConfig,
    Assigner,
    Assignment,
    _Detector,
    restored_count,
)
from audioclust.stream.enrol import Enrolment
from audioclust.stream.openset import OpenSetClusterer, OpenSetConfig, StreamSpace
from audioclust.stream.registry import Registry, StreamLink

__all__ = ["HeadFreeAssigner", "HeadFreeStream"]

#: Prefix of the clusterer's arrays in a stream's state.
_KEY = "openset."


class HeadFreeStream:
    """One stream's open-set clusters and drift detectors (``process``, state)."""

    def __init__(self, reference: NoveltyReference, openset: OpenSetConfig | None = None,
                 config: AssignConfig | None = None, registry: Registry | None = None):
        if reference.cluster_radius is None or reference.cluster_similarity is None:
            raise DataError("the model's novelty reference has no cluster scale; re-export "
                            "it with this version's audioclust-export --data DIR")
        self.reference = reference
        self.config = c = config or AssignConfig()
        self.clusterer = OpenSetClusterer(reference.dim, reference.cluster_radius,
                                          reference.cluster_similarity, openset)
        self.space = StreamSpace(reference.mean, reference.std)
        #: The fleet's registered clusters (Kafka), or None: ids of this stream's own.
        self.link = None if registry is None else StreamLink(registry, self.clusterer)
        self.windows = 0
        self._confidence = _Detector(c.adwin_delta, c.detector_memory)
        self._novelty = _Detector(c.adwin_delta, c.detector_memory)

    def process(self, embedding: np.ndarray, posterior: np.ndarray | None = None,
                enrolment: Enrolment | None = None) -> Assignment:
        """The window's assignment. A window that falls in a cluster of ``enrolment`` is
        reported in it (the stream's own clusters and statistics do not see it)."""
        ref = self.reference
        novelty = float(ref.novelty(embedding)[0])
        novel = bool(ref.is_novel(novelty))
        self.windows += 1
        enrolled = None if enrolment is None else enrolment.match(embedding)
        if enrolled is not None:
            e = enrolled.cluster
            a = Assignment(cluster=e, confidence=enrolled.confidence, novel=novel,
                           similarity=enrolled.similarity, nearest=e, top=e,
                           novelty=round(novelty, 6))
        else:
            unit = self.space.learn_transform(embedding)
            cluster = self.clusterer.learn_one(unit) if self.link is None else \
                self.link.learn_one(unit, ref.unit(embedding)[0])
            proba = self.clusterer.proba_one(unit)
            top = max(proba, key=proba.__getitem__)
            similarity = self.clusterer.similarity(unit, cluster)
            a = Assignment(cluster=cluster, confidence=round(proba[cluster], 6), novel=novel,
                           similarity=None if similarity is None else round(similarity, 6),
                           nearest=top, top=top, novelty=round(novelty, 6), discovered=True)
        if self._confidence.update(a.confidence):
            a.drift.append("confidence")
        if self._novelty.update(1.0 if novel else 0.0):
            a.drift.append("novelty")
        return a

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, clusterer = self.clusterer.state()
        arrays.update({f"space.{k}": v for k, v in self.space.state().items()})
        scalars = {"windows": self.windows, "openset": clusterer,
                   "confidence_recent": list(self._confidence.recent),
                   "novelty_recent": list(self._novelty.recent)}
        out = {f"{_KEY}{k}": v for k, v in arrays.items()}
        if self.link is not None:
            self.link.save_into(out, scalars)
        return out, scalars

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        if "openset" not in scalars:
            raise ValueError("state of a model with a head, not of a head-free one")
        mine = {k[len(_KEY):]: v for k, v in arrays.items() if k.startswith(_KEY)}
        self.clusterer.load_state(mine, scalars["openset"])
        self.space.load_state({k[6:]: v for k, v in mine.items() if k.startswith("space.")})
        self.windows = restored_count(scalars)
        self._confidence.restore(scalars["confidence_recent"])
        self._novelty.restore(scalars["novelty_recent"])
        if self.link is not None:
            self.link.load_from(arrays, scalars)


class HeadFreeAssigner(Assigner):
    """:class:`Assigner` whose streams are :class:`HeadFreeStream` objects."""

    def __init__(self, reference: NoveltyReference | None, openset: OpenSetConfig | None = None,
                 assign: AssignConfig | None = None, model_id: str = "",
                 registry: Registry | None = None):
        if reference is None:
            raise DataError("a head-free model needs a novelty reference (its clusters' scale "
                            "comes from the training audio): re-export it with "
                            "audioclust-export --data DIR")
        super().__init__(np.full(2, 0.5), reference.dim, assign, model_id, reference, openset,
                         registry)
        HeadFreeStream(reference, openset, assign)  # a reference without a scale fails here

    _has_head = False

    def _new_stream(self) -> HeadFreeStream:
        assert self.reference is not None
        return HeadFreeStream(self.reference, self.openset, self.config, self.registry)
