"""The output record: one per window, the same through every sink and the Python API.

:func:`build_record` is pure: the window, its level and silence, the assigner's outcome
and the model's name in, a :class:`Record` out. :meth:`Record.to_dict` is the JSON object
``audioclust-stream`` writes (keys in this order; the README documents each field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from audioclust.stream.assign import Assignment
from audioclust.stream.window import Window

__all__ = ["Record", "build_record"]


@dataclass(frozen=True)
class Record:
    """The outcome for one window of one stream."""

    stream: str
    #: Window number on the stream clock.
    seq: int
    #: Seconds on the stream clock.
    start: float
    end: float
    #: None when silent (or not confident enough); ids from K on: discovered on this
    #: stream; from 1,000,000,000 on: enrolled.
    cluster: int | None
    confidence: float | None
    novel: bool
    silent: bool
    #: ``<model file stem>@<first 12 hex of its weights hash>``.
    model: str
    #: Capture time of the first sample (unix seconds), when the source knows it.
    timestamp: float | None
    level_dbfs: float
    top: int | None = None
    nearest: int | None = None
    similarity: float | None = None
    drift: list[str] = field(default_factory=list)
    novelty: float | None = None
    discovered: bool = False
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record, as every sink writes it."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["drift"] = list(self.drift)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """The record of a JSON object written by a sink."""
        return cls(**d)


def build_record(window: Window, level: float, silent: bool, assignment: Assignment | None,
                 model: str, sample_rate: int) -> Record:
    """The record of one window (``assignment`` None: silent, not run through the model)."""
    a = assignment
    confidence = None if a is None else a.confidence
    if confidence is not None and not math.isfinite(confidence):
        confidence = None  # a NaN from a broken model must not break the JSON line
    return Record(
        stream=window.stream,
        seq=window.index,
        start=round(window.start / sample_rate, 6),
        end=round((window.start + len(window.samples)) / sample_rate, 6),
        cluster=None if a is None else a.cluster,
        confidence=confidence,
        novel=False if a is None else bool(a.novel),
        silent=silent,
        model=model,
        timestamp=None if window.timestamp is None else round(window.timestamp, 6),
        level_dbfs=round(level, 2),
        top=None if a is None else a.top,
        nearest=None if a is None else a.nearest,
        similarity=None if a is None else a.similarity,
        drift=[] if a is None else list(a.drift),
        novelty=None if a is None else a.novelty,
        discovered=False if a is None else a.discovered,
        label=None if a is None else a.label,
    )
