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

A source whose streams move between processes (Kafka) also carries their state:
``changed()`` gives the :class:`StreamSnapshot` of every stream whose state moved since the
last call (taken between two batches, so it covers exactly the windows already written),
``restore(snapshots)`` puts states read back in place before their streams' audio is
handed over, and ``drop(streams)`` lets go of the states of streams given up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from audioclust.models.errors import UserError
from audioclust.stream.window import Chunk

__all__ = ["MAX_STREAM_ID_BYTES", "EndOfStream", "PipelineHooks", "Source", "SourceError",
           "StreamSnapshot", "check_stream_id"]

#: Longest stream id, in bytes of UTF-8 (longer ids are ``bad_stream_id``). Every record
#: carries the id, and the service holds it per stream; any id within it is fine (a NUL, a
#: slash, any character).
MAX_STREAM_ID_BYTES = 1024


def check_stream_id(stream: str) -> str | None:
    """Why ``stream`` cannot be a stream id (empty, or over :data:`MAX_STREAM_ID_BYTES`), or
    None when it can."""
    if not stream:
        return "the stream id is empty"
    n = len(stream.encode("utf-8", "surrogatepass"))
    if n > MAX_STREAM_ID_BYTES:
        return f"the stream id is {n} bytes long, more than the limit of {MAX_STREAM_ID_BYTES}"
    return None


class SourceError(UserError, RuntimeError):
    """A source that cannot start or continue (no device, unreadable path, bad settings)."""


@dataclass(frozen=True)
class EndOfStream:
    """The named stream has ended: its tail window may be emitted and its state dropped."""

    stream: str


@dataclass(frozen=True)
class StreamSnapshot:
    """One stream's state as it travels between processes.

    ``state`` is the assigner's state in the codec of :mod:`audioclust.stream.state`
    (empty arrays and scalars: no window reached the assigner yet); ``window`` the index of
    the last window written for the stream (None: none yet); ``ended`` whether the stream
    ended after it (a later chunk then starts a new recording on a new clock).
    """

    state: bytes
    window: int | None = None
    ended: bool = False


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
    #: Snapshots of the streams whose state changed since the last call (and forget that);
    #: None while a batch failed half-way (its states are ahead of what was written, so
    #: nothing may be saved or committed any more).
    changed: Callable[[], dict[str, StreamSnapshot] | None] = lambda: {}
    #: Put these states in place of what is held; windows up to ``window`` are then
    #: acknowledged without being assigned or written again; a state that does not fit the
    #: model is one StateError line starting with the second argument (where it was read).
    #: Returns how many were taken.
    restore: Callable[[Mapping[str, StreamSnapshot], str], int] = lambda snapshots, where: 0
    #: Drop the states of these streams (given up, their snapshots saved elsewhere).
    drop: Callable[[Iterable[str]], None] = lambda streams: None
    #: Weights hash of the pipeline's model: saved states carry it, others' are refused.
    model: str = ""


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
