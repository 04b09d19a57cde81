"""Reading the records of ``audioclust-stream`` back: per-stream columns and per-cluster totals.

A records file is JSON lines, one record per window (README's record table). A line that
is not a record (not JSON, not an object, a required field missing or of the wrong type)
is skipped and reported with its line number; the caller decides whether that is fatal.
Only ``stream``, ``start``, ``end`` and ``cluster`` are required; ``confidence``,
``novel``, ``silent``, ``drift``, ``model``, ``timestamp``, ``level_dbfs``, and the
open-set and enrolment fields ``label`` (the cluster's enrolled name), ``discovered`` (a
cluster created online, id beyond the head's K) and ``novelty`` (a score, higher is more
novel) are used when present.

A window seen twice on a stream (the same ``seq``, e.g. re-processed after a restart) is
counted once, the later record winning, as a consumer of an at-least-once sink would.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audioclust.models.errors import UserError

__all__ = ["NO_CLUSTER", "Cluster", "Records", "RecordsError", "StreamRecords", "read_records"]

#: ``cluster`` column value of a window without a cluster (silent or novel).
NO_CLUSTER = -1


class RecordsError(UserError, ValueError):
    """A records file that cannot be used at all."""


@dataclass
class StreamRecords:
    """One stream's windows in stream-clock order, as columns."""

    name: str
    start: np.ndarray  # seconds, float64
    end: np.ndarray
    cluster: np.ndarray  # int64, NO_CLUSTER when none
    confidence: np.ndarray  # float64, NaN when absent
    novelty: np.ndarray  # float64, NaN when absent
    novel: np.ndarray  # bool
    silent: np.ndarray  # bool
    timestamp: np.ndarray  # unix seconds of the window's first sample, NaN when unknown
    drift: list[tuple[int, tuple[str, ...]]]  # (window index, signals) for each detection

    def __len__(self) -> int:
        return int(self.start.size)

    @property
    def duration(self) -> float:
        return float(self.end.max()) if len(self) else 0.0

    @property
    def window_seconds(self) -> float:
        """The typical window length (the median; a stream's last window may be shorter)."""
        return float(np.median(self.end - self.start)) if len(self) else 0.0


@dataclass
class Cluster:
    """Totals of one cluster id over every stream."""

    id: int
    windows: int = 0
    label: str | None = None
    discovered: bool = False
    confidence_sum: float = 0.0
    confidence_n: int = 0
    streams: Counter = field(default_factory=Counter)

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.confidence_n if self.confidence_n else None

    @property
    def name(self) -> str:
        return self.label or f"cluster {self.id}"


@dataclass
class Records:
    """Everything read from one records file."""

    path: Path
    streams: dict[str, StreamRecords]
    clusters: dict[int, Cluster]  # by id; sizes in windows
    models: Counter  # model id -> records
    skipped: list[tuple[int, str]]  # (line number, reason) of lines that are not records
    lines: int

    @property
    def windows(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def by_size(self) -> list[Cluster]:
        """Clusters, largest first (ties: lower id first)."""
        return sorted(self.clusters.values(), key=lambda c: (-c.windows, c.id))


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "confidence": (int, float), "novelty": (int, float), "timestamp": (int, float),
    "novel": (bool,), "silent": (bool,), "discovered": (bool,), "label": (str,),
    "seq": (int,), "model": (str,), "drift": (list,),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(rec: Any) -> str | None:
    """Why ``rec`` is not a record, or None when it is one."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    missing = [k for k in ("stream", "start", "end", "cluster") if k not in rec]
    if missing:
        return f"no {', '.join(missing)} field"
    if not isinstance(rec["stream"], str) or not rec["stream"]:
        return "stream is not a non-empty string"
    for key in ("start", "end"):
        if not _number(rec[key]) or not math.isfinite(rec[key]) or rec[key] < 0:
            return f"{key} is not a non-negative number"
    if rec["end"] < rec["start"]:
        return "end is before start"
    c = rec["cluster"]
    if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 0):
        return "cluster is neither null nor a non-negative integer"
    for key, types in _OPTIONAL_TYPES.items():
        v = rec.get(key)
        if v is None:
            continue
        if (bool not in types and isinstance(v, bool)) or not isinstance(v, types):
            return f"{key} has the wrong type ({type(v).__name__})"
    return None


def _float(value: Any) -> float:
    return float(value) if _number(value) and math.isfinite(value) else math.nan


class _Columns:
    """One stream's windows as compact columns while reading (a day of 0.5 s hops is
    172,800 windows per stream: no dict per record is kept)."""

    def __init__(self) -> None:
        self.f = {k: array("d") for k in ("start", "end", "confidence", "novelty", "timestamp")}
        self.i = {k: array("q") for k in ("cluster", "seq", "line")}
        self.b = {k: array("b") for k in ("novel", "silent")}
        self.drift: dict[int, tuple[str, ...]] = {}  # row -> signals

    def add(self, rec: dict[str, Any], line: int) -> None:
        row = len(self.i["line"])
        for k in ("start", "end", "confidence", "novelty", "timestamp"):
            self.f[k].append(_float(rec.get(k)))
        self.i["cluster"].append(NO_CLUSTER if rec["cluster"] is None else rec["cluster"])
        self.i["seq"].append(rec["seq"] if rec.get("seq") is not None else -1)
        self.i["line"].append(line)
        self.b["novel"].append(bool(rec.get("novel")))
        self.b["silent"].append(bool(rec.get("silent")))
        if rec.get("drift"):
            self.drift[row] = tuple(str(s) for s in rec["drift"])

    def build(self, name: str) -> StreamRecords:
        seq = np.frombuffer(self.i["seq"], dtype=np.int64)
        rows = np.arange(seq.size)
        # a seq seen again replaces the earlier record (rows are in line order)
        keep = np.ones(seq.size, dtype=bool)
        has = seq >= 0
        if has.any():
            s = seq[has][::-1]
            _, first_of_reversed = np.unique(s, return_index=True)
            last = rows[has][::-1][first_of_reversed]
            keep[has] = False
            keep[last] = True
        rows = rows[keep]
        start = np.frombuffer(self.f["start"], dtype=np.float64)
        end = np.frombuffer(self.f["end"], dtype=np.float64)
        rows = rows[np.lexsort((end[rows], start[rows]))]
        col = {k: np.frombuffer(v, dtype=np.float64)[rows] for k, v in self.f.items()}
        pos = {int(r): j for j, r in enumerate(rows)}
        return StreamRecords(
            name=name, start=col["start"], end=col["end"],
            cluster=np.frombuffer(self.i["cluster"], dtype=np.int64)[rows],
            confidence=col["confidence"], novelty=col["novelty"], timestamp=col["timestamp"],
            novel=np.frombuffer(self.b["novel"], dtype=np.int8)[rows].astype(bool),
            silent=np.frombuffer(self.b["silent"], dtype=np.int8)[rows].astype(bool),
            drift=sorted((pos[r], sig) for r, sig in self.drift.items() if r in pos),
        )


def read_records(path: str | os.PathLike,
                 progress: Callable[[int], None] | None = None) -> Records:
    """Read a records file. Raises :class:`RecordsError` when it cannot be read at all.

    ``progress`` is called with the number of lines read every 250,000 lines."""
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8")
    except FileNotFoundError as exc:
        raise RecordsError(f"{p}: no such file") from exc
    except IsADirectoryError as exc:
        raise RecordsError(f"{p}: is a folder, not a records file") from exc
    except OSError as exc:
        raise RecordsError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    columns: dict[str, _Columns] = {}
    labels: dict[int, str] = {}
    discovered: set[int] = set()
    skipped: list[tuple[int, str]] = []
    models: Counter = Counter()
    n = 0
    try:
        with fh:
            for n, line in enumerate(fh, 1):
                if progress is not None and n % 250_000 == 0:
                    progress(n)
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    skipped.append((n, f"not JSON ({exc.msg})"))
                    continue
                why = _check(rec)
                if why is not None:
                    skipped.append((n, why))
                    continue
                cols = columns.get(rec["stream"])
                if cols is None:
                    cols = columns[rec["stream"]] = _Columns()
                cols.add(rec, n)
                if rec.get("model"):
                    models[rec["model"]] += 1
                cid = rec["cluster"]
                if cid is not None:
                    if rec.get("label"):  # the latest name wins: clusters can be named later
                        labels[cid] = rec["label"]
                    if rec.get("discovered"):
                        discovered.add(cid)
    except UnicodeDecodeError as exc:
        raise RecordsError(f"{p}: not a text file of JSON lines (line {n + 1} is not UTF-8)") \
            from exc
    except OSError as exc:
        raise RecordsError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    streams = {name: cols.build(name) for name, cols in columns.items()}
    return Records(p, streams, _clusters(streams, labels, discovered), models, skipped, n)


def _clusters(streams: dict[str, StreamRecords], labels: dict[int, str],
              discovered: set[int]) -> dict[int, Cluster]:
    out: dict[int, Cluster] = {}
    for s in streams.values():
        counted = (s.cluster != NO_CLUSTER) & ~s.silent
        for cid in np.unique(s.cluster[counted]):
            mine = counted & (s.cluster == cid)
            c = out.get(int(cid))
            if c is None:
                c = out[int(cid)] = Cluster(int(cid), label=labels.get(int(cid)),
                                            discovered=int(cid) in discovered)
            k = int(mine.sum())
            c.windows += k
            c.streams[s.name] += k
            conf = s.confidence[mine]
            conf = conf[~np.isnan(conf)]
            c.confidence_sum += float(conf.sum())
            c.confidence_n += int(conf.size)
    return out
