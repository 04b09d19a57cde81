"""In-process sinks: records as :class:`~audioclust.stream.records.Record` objects, kept in
a list or handed to a function (the Python API's ``ac.sinks.List`` and ``ac.sinks.Callback``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from audioclust.stream.records import Record
from audioclust.stream.sinks import Sink

__all__ = ["CallbackSink", "ListSink"]


class ListSink(Sink):
    """Keeps every record in :attr:`records`, in the order written."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(Record.from_dict(r) for r in records)

    def flush(self) -> None:
        pass


class CallbackSink(Sink):
    """Calls ``fn(record)`` for every record, in order, as each batch is written; an
    exception from ``fn`` stops the stream and reaches the caller unchanged."""

    def __init__(self, fn: Callable[[Record], Any]):
        if not callable(fn):
            raise TypeError(f"Callback needs a function, got {type(fn).__name__}")
        self.fn = fn

    def write(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self.fn(Record.from_dict(r))

    def flush(self) -> None:
        pass
