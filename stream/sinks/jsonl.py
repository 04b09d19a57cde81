"""JSON-lines sinks: ``stdout`` and ``jsonl:FILE`` (one JSON object per window per line)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from audioclust.stream.sinks import Sink, SinkError

__all__ = ["JsonlSink", "StdoutSink"]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy scalars from the model or the assigner
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _line(record: dict[str, Any]) -> str:
    # allow_nan=False: a NaN would make the line invalid JSON for every reader downstream
    return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_plain) + "\n"


class StdoutSink(Sink):
    """Records on standard output; ``flush`` flushes the stream (progress goes to stderr)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def write(self, records: list[dict[str, Any]]) -> None:
        try:
            self.stream.write("".join(_line(r) for r in records))
        except (OSError, ValueError) as exc:  # closed pipe, closed file
            raise SinkError(f"stdout: cannot write ({exc})") from exc

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"stdout: cannot flush ({exc})") from exc

    def close(self) -> None:
        self.flush()


def _torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline."""
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class JsonlSink(Sink):
    """Appends records to a file; ``flush`` writes and fsyncs, so acked records survive a crash.
    A path that is not a regular file (``/dev/null``, a device) is written and flushed but
    not fsynced: it has nothing to keep, and fsync refuses it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            self._durable = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
            # a run killed mid-write: end its half line, not ours
            if self._durable and _torn(self.path):
                self._file.write("\n")
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open for appending "
                            f"({exc.strerror or exc})") from exc

    def write(self, records: list[dict[str, Any]]) -> None:
        try:
            self._file.write("".join(_line(r) for r in records))
        except (OSError, ValueError) as exc:
            raise SinkError(f"{self.path}: cannot write ({exc})") from exc

    def flush(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
            if self._durable:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot flush ({exc.strerror or exc})") from exc

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
