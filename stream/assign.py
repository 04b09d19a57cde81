"""Online cluster assignment for one stream: prior correction, novelty, drift, state.

Per window the model gives an embedding z and a posterior p(c|x) computed under the
head's training prior π_train. Each stream keeps its own prior π_t and corrects for it,
in the spirit of Saerens et al. (2002) online label-shift adaptation:

    q(c|x) ∝ p(c|x) · w(c),   w(c) = clip(π_t(c) / π_train(c), 1/r, r)
    π_t ← m · π_t + (1 − m) · q(·|x)                       (after each window)

``r`` (``max_prior_ratio``) guards against collapse: a stream that has seen one cluster
for a long time can favour it at most r² over any other, so the others can still win
when the sound changes. π_t starts from π_train (or the restored state).

The confidence is max_c q(c|x). Novelty, when the model carries a novelty reference
(:class:`~audioclust.models.reference.NoveltyReference`, exported with the training
audio): the window's novelty score is the fraction of training windows more typical than
it, and the window is *novel* when that exceeds 1 − α (α = 1 %: audio like the training
data is flagged 1 % of the time), from the first window on, whatever the stream did
before. Novel windows do not move the prior or the centroids; they gather into clusters
discovered on this stream (:class:`~audioclust.stream.openset.OpenSetClusterer` in the
reference's unit space, its radius prior from the reference), reported as cluster
K + j with ``discovered`` set (or under the id a cluster registry gives it in Kafka mode,
:mod:`audioclust.stream.registry`). A model without a reference falls back to the stream's own
statistics: novel when the confidence is below ``min_confidence``, or when the cosine
similarity to the assigned cluster's running centroid (an EMA of the L2-normalised
embeddings assigned to it, used once it has seen ``centroid_warmup`` windows) is below
``min_similarity``; such windows report no cluster. The nearest running centroid is
also reported; with many clusters it is found with a faiss inner-product index.

Drift: river's ADWIN watches the confidence and the novelty indicator; a detected change
is reported on the window where it happened.

Windows are processed one at a time in stream order, so the result does not depend on how
windows were batched for inference (file, Kafka and microphone give the same output).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from river import drift

from audioclust.models.errors import ConfigError, DataError
from audioclust.models.reference import NoveltyReference
from audioclust.stream.enrol import Enrolment
from audioclust.stream.openset import OpenSetClusterer, OpenSetConfig, StreamSpace
from audioclust.stream.registry import REGISTERED_BASE, Registry, StreamLink
from audioclust.stream.state import StateError, read_state_file, write_state_file

__all__ = ["AssignConfig", "Assigner", "Assignment", "StreamAssigner"]

#: Prefix of the discovered clusters' arrays in a stream's state.
_DISCOVERY = "discovery."


@dataclass(frozen=True)
class AssignConfig:
    """Assignment settings; defaults suit a 1 s window with a 0.5 s hop."""

    prior_momentum: float = 0.99
    max_prior_ratio: float = 5.0
    min_confidence: float = 0.3
    min_similarity: float = 0.3
    centroid_momentum: float = 0.98
    centroid_warmup: int = 10
    adwin_delta: float = 0.002
    #: Recent detector inputs kept in the state file, replayed into ADWIN on restore.
    detector_memory: int = 512
    #: From this many clusters on, the nearest centroid is found with faiss.
    faiss_min_clusters: int = 256
    #: Streams whose state is kept (about 44 kB each for 10 clusters of 256-d); beyond it
    #: the least recently used stream's state is dropped (it starts again from the prior).
    max_streams: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.prior_momentum < 1 or not 0 <= self.centroid_momentum < 1:
            raise ConfigError("momenta must be in [0, 1)")
        if not 1 <= self.max_prior_ratio < float("inf"):
            raise ConfigError(f"max_prior_ratio must be >= 1, got {self.max_prior_ratio}")
        if not 0 <= self.min_confidence <= 1 or not -1 <= self.min_similarity <= 1:
            raise ConfigError("min_confidence must be in [0, 1] and min_similarity in [-1, 1]")
        if not 0 < self.adwin_delta < 1:
            raise ConfigError(f"adwin_delta must be in (0, 1), got {self.adwin_delta}")
        if self.centroid_warmup < 0 or not 0 <= self.detector_memory <= 1_000_000 \
                or self.faiss_min_clusters < 1 or self.max_streams < 1:
            raise ConfigError("need centroid_warmup >= 0, 0 <= detector_memory <= 1e6, "
                              "faiss_min_clusters >= 1 and max_streams >= 1")


@dataclass
class Assignment:
    """The outcome for one window."""

    cluster: int | None
    confidence: float
    novel: bool
    similarity: float | None  # to the assigned cluster's centroid, once it has one
    nearest: int | None  # nearest centroid (cosine), whatever the posterior says
    top: int  # argmax of the corrected posterior, even when novel
    drift: list[str] = field(default_factory=list)
    #: Fraction of the training windows more typical than this one (None: no reference).
    novelty: float | None = None
    #: ``cluster`` was discovered on this stream (ids from K on) rather than by the head.
    discovered: bool = False
    #: The name ``cluster`` was enrolled under (:mod:`audioclust.stream.enrol`), if any.
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Detector:
    """ADWIN plus a bounded memory of its inputs, so it can be saved without pickle."""

    def __init__(self, delta: float, memory: int):
        self.delta = delta
        self.adwin = drift.ADWIN(delta=delta)
        self.recent: deque[float] = deque(maxlen=memory)

    def update(self, value: float) -> bool:
        self.recent.append(value)
        self.adwin.update(value)
        return bool(self.adwin.drift_detected)

    def restore(self, values: list[float]) -> None:
        if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values):
            raise ValueError("a detector's recent values are not a list of finite numbers")
        self.adwin = drift.ADWIN(delta=self.delta)
        self.recent.clear()
        for v in values:
            self.update(v)


def restored_count(scalars: dict[str, Any], name: str = "windows") -> int:
    """``scalars[name]`` as a count of a restored state: a whole number >= 0."""
    value = scalars[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} is {str(value)[:20]}, not a whole number >= 0")
    return value


class StreamAssigner:
    """Assignment state of one stream (river style: ``predict_one`` then ``learn_one``)."""

    def __init__(self, train_prior: np.ndarray, dim: int, config: AssignConfig | None = None,
                 reference: NoveltyReference | None = None,
                 openset: OpenSetConfig | None = None, registry: Registry | None = None):
        self.config = config or AssignConfig()
        self.reference = reference
        prior = np.asarray(train_prior, dtype=np.float64)
        if prior.ndim != 1 or prior.size < 2 or (prior <= 0).any():
            raise DataError("the training prior must be a positive vector of >= 2 clusters")
        self.train_prior = prior / prior.sum()
        self.prior = self.train_prior.copy()
        k = prior.size
        self.centroids = np.zeros((k, dim), dtype=np.float64)
        self.counts = np.zeros(k, dtype=np.int64)
        self.windows = 0
        c = self.config
        self._confidence = _Detector(c.adwin_delta, c.detector_memory)
        self._novelty = _Detector(c.adwin_delta, c.detector_memory)
        self._index = None
        #: Clusters of the novel windows (needs a reference that knows the cluster scale).
        self.discovery = self.discovery_space = self.link = None
        if reference is not None and reference.cluster_radius is not None:
            self.discovery = OpenSetClusterer(dim, reference.cluster_radius,
                                              reference.cluster_similarity, openset)
            # standardised by the novel windows' own statistics (the reference's at first)
            self.discovery_space = StreamSpace(reference.mean, reference.std)
            if registry is not None:  # the fleet's registered clusters (Kafka)
                self.link = StreamLink(registry, self.discovery)

    @property
    def n_clusters(self) -> int:
        return self.train_prior.size

    def corrected(self, posterior: np.ndarray) -> np.ndarray:
        """q(c|x) ∝ p(c|x) · clip(π_t/π_train, 1/r, r)."""
        r = self.config.max_prior_ratio
        w = np.clip(self.prior / self.train_prior, 1.0 / r, r)
        q = np.asarray(posterior, dtype=np.float64) * w
        total = q.sum()
        return q / total if total > 0 else np.full_like(q, 1.0 / q.size)

    def _nearest(self, unit: np.ndarray) -> tuple[int | None, np.ndarray]:
        seen = self.counts > 0
        if not seen.any():
            return None, np.zeros(self.n_clusters)
        sims = self.centroids @ unit
        if self.n_clusters >= self.config.faiss_min_clusters:
            import faiss

            if self._index is None:
                self._index = faiss.IndexFlatIP(self.centroids.shape[1])
            self._index.reset()
            self._index.add(np.where(seen[:, None], self.centroids, 0).astype(np.float32))
            _, idx = self._index.search(unit[None].astype(np.float32), 1)
            return int(idx[0, 0]), sims
        sims_seen = np.where(seen, sims, -np.inf)
        return int(np.argmax(sims_seen)), sims

    def predict_one(self, embedding: np.ndarray, posterior: np.ndarray) -> Assignment:
        """The assignment of one window under the current state (no state change)."""
        c = self.config
        q = self.corrected(posterior)
        top = int(np.argmax(q))
        confidence = float(q[top])
        z = np.asarray(embedding, dtype=np.float64)
        norm = np.linalg.norm(z)
        unit = z / norm if norm > 0 else z
        nearest, sims = self._nearest(unit)
        similarity = None
        if self.counts[top] > 0:
            cn = np.linalg.norm(self.centroids[top])
            similarity = float(sims[top] / cn) if cn > 0 else None
        novelty = None
        if self.reference is not None:
            novelty = float(self.reference.novelty(z)[0])
            novel = bool(self.reference.is_novel(novelty))
        else:
            novel = confidence < c.min_confidence or (
                similarity is not None
                and self.counts[top] >= c.centroid_warmup
                and similarity < c.min_similarity
            )
        return Assignment(
            cluster=None if novel else top,
            confidence=round(confidence, 6),
            novel=novel,
            similarity=None if similarity is None else round(similarity, 6),
            nearest=nearest,
            top=top,
            novelty=None if novelty is None else round(novelty, 6),
        )

    def learn_one(self, embedding: np.ndarray, posterior: np.ndarray, a: Assignment,
                  enrolled: bool = False) -> list[str]:
        """Update the prior, centroid and detectors with window ``a``; returns drift events.
        A window of an ``enrolled`` cluster moves only the detectors."""
        c = self.config
        self.windows += 1
        events = []
        if self._confidence.update(a.confidence):
            events.append("confidence")
        if self._novelty.update(1.0 if a.novel else 0.0):
            events.append("novelty")
        if enrolled:
            return events
        if a.novel and self.discovery is not None:
            self._discover(embedding, a)
        if a.novel or a.cluster is None:
            return events
        q = self.corrected(posterior)
        self.prior = c.prior_momentum * self.prior + (1 - c.prior_momentum) * q
        self.prior /= self.prior.sum()
        z = np.asarray(embedding, dtype=np.float64)
        norm = np.linalg.norm(z)
        unit = z / norm if norm > 0 else z
        k = a.cluster
        if self.counts[k] == 0:
            self.centroids[k] = unit
        else:
            m = c.centroid_momentum
            self.centroids[k] = m * self.centroids[k] + (1 - m) * unit
        self.counts[k] += 1
        return events

    def _discover(self, embedding: np.ndarray, a: Assignment) -> None:
        """A novel window joins (or founds) a discovered cluster: ``a`` reports it as K + j
        with the open-set clusterer's confidence and similarity."""
        assert self.discovery is not None and self.discovery_space is not None
        unit = self.discovery_space.learn_transform(embedding)
        if self.link is None:
            j = self.discovery.learn_one(unit)
        else:
            assert self.reference is not None
            j = self.link.learn_one(unit, self.reference.unit(embedding)[0])
        # a registered id means the same sound everywhere: reported as it is
        a.cluster = j if j >= REGISTERED_BASE else self.n_clusters + j
        a.discovered = True
        a.confidence = round(self.discovery.proba_one(unit)[j], 6)
        sim = self.discovery.similarity(unit, j)
        a.similarity = None if sim is None else round(sim, 6)

    def process(self, embedding: np.ndarray, posterior: np.ndarray,
                enrolment: Enrolment | None = None) -> Assignment:
        """``predict_one`` then ``learn_one``; the drift events go into the assignment.
        A window that falls in a cluster of ``enrolment`` is reported in it."""
        a = self.predict_one(embedding, posterior)
        enrolled = None if enrolment is None else enrolment.match(embedding, a.top, a.novel)
        if enrolled is not None:
            a.cluster, a.confidence = enrolled.cluster, enrolled.confidence
            a.similarity = enrolled.similarity
        a.drift = self.learn_one(embedding, posterior, a, enrolled is not None)
        return a

    # --- state ---------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"prior": self.prior, "centroids": self.centroids, "counts": self.counts}
        scalars = {
            "windows": self.windows,
            "confidence_recent": list(self._confidence.recent),
            "novelty_recent": list(self._novelty.recent),
        }
        if self.discovery is not None and self.discovery_space is not None:
            d_arrays, scalars["discovery"] = self.discovery.state()
            d_arrays.update({f"space.{k}": v for k, v in self.discovery_space.state().items()})
            arrays.update({f"{_DISCOVERY}{k}": v for k, v in d_arrays.items()})
            if self.link is not None:
                self.link.save_into(arrays, scalars)
        return arrays, scalars

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        missing = [k for k in ("prior", "centroids", "counts") if k not in arrays]
        if missing:
            raise ValueError(f"not the state of a model with a head (no {', '.join(missing)})")
        prior, centroids, counts = (np.asarray(arrays[k]) for k in ("prior", "centroids",
                                                                      "counts"))
        k = self.n_clusters
        if centroids.shape != self.centroids.shape:
            raise ValueError(f"state has {centroids.shape} centroids, the model "
                             f"needs {self.centroids.shape}")
        if prior.shape != (k,) or counts.shape != (k,):
            raise ValueError(f"state has a prior of shape {prior.shape} and counts of shape "
                             f"{counts.shape}, the model's {k} clusters need ({k},)")
        # the prior may reach 0 by underflow (corrected() clips the ratio), never below
        if not (np.isfinite(prior).all() and (prior >= 0).all() and prior.sum() > 0):
            raise ValueError("state's prior is not a finite distribution")
        if not np.isfinite(centroids).all():
            raise ValueError("state's centroids are not finite")
        if counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError("state's counts are not whole numbers >= 0")
        windows = restored_count(scalars)
        self.prior = prior.astype(np.float64)
        self.centroids = centroids.astype(np.float64)
        self.counts = counts.astype(np.int64)
        self.windows = windows
        self._confidence.restore(scalars["confidence_recent"])
        self._novelty.restore(scalars["novelty_recent"])
        if self.discovery is not None and self.discovery_space is not None and \
                "discovery" in scalars:
            mine = {k[len(_DISCOVERY):]: v for k, v in arrays.items() if k.startswith(_DISCOVERY)}
            self.discovery.load_state(mine, scalars["discovery"])
            self.discovery_space.load_state({k[6:]: v for k, v in mine.items()
                                             if k.startswith("space.")})
            if self.link is not None:
                self.link.load_from(arrays, scalars)


class Assigner:
    """Per-stream :class:`StreamAssigner` objects, and their state file.

    The named clusters (:class:`~audioclust.stream.enrol.Enrolment`, from
    ``audioclust-enrol``) are shared by every stream: a window within an enrolled cluster is
    reported in it, and every assignment carries its cluster's ``label``.

    The state file (format: :mod:`audioclust.stream.state`) holds each stream's
    ``state()``, a JSON document with the model's weight hash and the config, the
    enrolment, and what a subclass adds through ``_extra_state``. It is written to a
    temporary file and renamed, so a crash never leaves a half-written state.
    """

    def __init__(
        self,
        train_prior: np.ndarray,
        dim: int,
        config: AssignConfig | None = None,
        model_id: str = "",
        reference: NoveltyReference | None = None,
        openset: OpenSetConfig | None = None,
        registry: Registry | None = None,
    ):
        self.train_prior = np.asarray(train_prior, dtype=np.float64)
        self.dim = dim
        self.config = config or AssignConfig()
        self.model_id = model_id
        self.reference = reference
        self.openset = openset or OpenSetConfig()
        #: The fleet's cluster registry (Kafka mode), handed to every new stream; None:
        #: each stream's discovered clusters have ids of its own.
        self.registry = registry
        #: Least recently used first; at most ``config.max_streams``.
        self.streams: dict[str, Any] = {}
        #: States dropped so far to stay within ``config.max_streams``.
        self.evicted = 0
        self.enrolment = Enrolment(reference, self.train_prior.size if self._has_head else 0,
                                   self.openset.temperature)

    #: Whether ``train_prior`` is a head's (head-free subclasses say no).
    _has_head = True

    def _new_stream(self) -> Any:
        """The per-stream object: ``process``, ``state`` and ``load_state``."""
        return StreamAssigner(self.train_prior, self.dim, self.config, self.reference,
                              self.openset, self.registry)

    def stream(self, name: str) -> Any:
        s = self.streams.pop(name, None)
        if s is None:
            s = self._new_stream()
        self.streams[name] = s  # to the back: the most recently used
        self._trim()
        return s

    def _trim(self) -> None:
        while len(self.streams) > self.config.max_streams:
            del self.streams[next(iter(self.streams))]
            self.evicted += 1

    def process(self, stream: str, embedding: np.ndarray,
                posterior: np.ndarray | None = None) -> Assignment:
        a = self.stream(stream).process(embedding, posterior, self.enrolment)
        if not a.discovered:  # discovered ids belong to one stream: never named
            a.label = self.enrolment.label(a.cluster)
        return a

    # --- one stream's state (what a Kafka changelog carries) ----------------------------

    def stream_state(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, scalars)`` of stream ``name``; None when it has no state here."""
        s = self.streams.get(name)
        return None if s is None else s.state()

    def load_stream(self, name: str, arrays: dict[str, np.ndarray], scalars: dict[str, Any],
                    where: str = "") -> None:
        """Replace the state of ``name`` with ``(arrays, scalars)``; a state that does not
        fit the model raises one StateError line, prefixed by ``where``, and changes
        nothing."""
        s = self._new_stream()
        with _naming_the_file(where or "stream state", f"stream {name[:60]!r}: "):
            s.load_state(arrays, scalars)
        self.streams.pop(name, None)
        self.streams[name] = s
        self._trim()

    def drop_streams(self, names: Iterable[str]) -> None:
        """Forget the states of ``names``."""
        for name in names:
            self.streams.pop(name, None)

    def save(self, path: str | os.PathLike) -> Path:
        extra_arrays, extra_doc = self._extra_state()
        names, entry = self.enrolment.state()
        extra_arrays, extra_doc = {**extra_arrays, **names}, {**extra_doc, **entry}
        doc = {"model": self.model_id, "config": asdict(self.config), **extra_doc}
        return write_state_file(path, doc, {name: s.state() for name, s in self.streams.items()},
                                extra_arrays)

    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON entries a subclass adds to the state file (none here)."""
        return {}, {}

    def _load_extra(self, arrays: dict[str, np.ndarray], doc: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` wrote (called by :meth:`load`; nothing here)."""

    def load(self, path: str | os.PathLike) -> int:
        """Restore streams from ``path``; returns how many. Refuses another model's state;
        a file that is not a readable state raises one line (StateError) naming it, and then
        nothing has been restored."""
        p = Path(path)
        state = read_state_file(p)
        model = state.doc.get("model")
        if self.model_id and model and model != self.model_id:
            raise StateError(f"{p}: state belongs to another model ({str(model)[:12]}…); "
                             "move it away to start fresh")
        restored: dict[str, StreamAssigner] = {}
        for name, (arrays, scalars) in state.streams.items():
            s = self._new_stream()
            with _naming_the_file(p, f"stream {name[:60]!r}: "):
                s.load_state(arrays, scalars)
            restored[name] = s
        with _naming_the_file(p, ""):
            self._load_extra(state.arrays, state.doc)
            self.enrolment.load(state.arrays, state.doc)
        for name, s in restored.items():
            self.streams.pop(name, None)
            self.streams[name] = s
        self._trim()
        return min(len(restored), self.config.max_streams)


@contextmanager
def _naming_the_file(path: Path | str, what: str) -> Iterator[None]:
    """A state that does not fit the model becomes one StateError line naming the file."""
    try:
        yield
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        text = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StateError(f"{path}: {what}{' '.join(text.split())[:200]}") from exc
