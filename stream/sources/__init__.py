"""Where audio comes from: the contract every source (file, mic, Kafka) follows.

A source turns its input into :class:`~audioclust.stream.window.Chunk` objects: float32
mono audio at the model's sample rate, tagged with the stream it belongs to. The pipeline
polls the source, windows the chunks, runs the model, writes results to the sink and only
then calls each chunk's ``ack`` (so a Kafka source commits an offset only after everything
that message produced has been written: at-least-once).

The pipeline hands the source a :class:`PipelineHooks` at :meth:`Source.open`; a source
calls ``flush()`` when it must know that every chunk it has handed over so far is done
(before committing on a Kafka rebalance, before shutting down) and ``forget(streams)``
when it gives streams up (revoked partitions), so that their half-filled windows are
dropped rather than glued to audio from a later owner; and ``release(n)`` when all it may
hand out is held by streams waiting for more audio (see the Kafka source's bound).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from audioclust.stream.window import Chunk

__all__ = ["EndOfStream", "PipelineHooks", "Source", "SourceError"]


class SourceError(RuntimeError):
    """A source that cannot start or continue (no device, unreadable path, bad settings)."""


@dataclass(frozen=True)
class EndOfStream:
    """The named stream has ended: its tail window may be emitted and its state dropped."""

    stream: str


@dataclass(frozen=True)
class PipelineHooks:
    """What a source may ask of the pipeline that feeds on it."""

    #: Process and write everything handed over so far; every ack has fired on return.
    flush: Callable[[], None]
    #: Drop the buffered audio of these streams (their pending acks are never called).
    forget: Callable[[Iterable[str]], None]
    #: Finish the least recently fed streams until at least this many chunks are acked;
    #: returns how many were (for a source at its bound of un-acked messages).
    release: Callable[[int], int] = lambda chunks: 0


class Source(ABC):
    """Base of all sources. Use as a context manager or call open/close."""

    #: Short name used in metrics labels and logs ("file", "mic", "kafka").
    kind: str = "source"

    def open(self, hooks: PipelineHooks) -> None:  # noqa: B027 - optional for sources
        """Connect; called once before the first poll."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Chunk | EndOfStream]:
        """Return what arrived within ``timeout`` seconds (possibly nothing)."""

    @property
    @abstractmethod
    def exhausted(self) -> bool:
        """True when no more input will ever come (end of the files); never for live input."""

    @property
    def connected(self) -> bool:
        """Whether the input can be reached right now (``/readyz``); read from any thread."""
        return True

    def close(self) -> None:  # noqa: B027 - optional for sources
        """Release the input; called once after the pipeline has flushed."""
