"""Where results go: the contract every sink (stdout, JSON lines, Kafka) follows.

The pipeline calls :meth:`Sink.write` with one dict per window (the output record,
documented in the README) and then :meth:`Sink.flush`; when ``flush`` returns, the
records are durable as far as the sink can tell (written and flushed to the file
descriptor, or acknowledged by the Kafka broker), and only then are the source's chunks
acknowledged. A sink that cannot deliver raises :class:`SinkError`, which stops the
pipeline without acknowledging anything it did not deliver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from audioclust.models.errors import UserError

__all__ = ["Sink", "SinkError"]


class SinkError(UserError, RuntimeError):
    """A sink that cannot deliver its records."""


class Sink(ABC):
    @abstractmethod
    def write(self, records: list[dict[str, Any]]) -> None:
        """Queue records for delivery (may deliver at once)."""

    @abstractmethod
    def flush(self) -> None:
        """Block until every record written so far is delivered."""

    def close(self) -> None:
        self.flush()
