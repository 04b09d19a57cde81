"""Cutting streams of audio chunks into fixed windows, one ring buffer per stream.

Windows are aligned to the stream's own sample clock: window ``w`` covers samples
``[w·hop, w·hop + window)`` counted from the stream's first sample. A chunk says where its
first sample sits on that clock (``offset``), so windows keep the same numbers whatever
the chunking, and a consumer restarted from any chunk continues with the same numbering
(the first window it emits is the first that starts at or after that chunk's offset).

Per stream the windower also detects duplicates (a chunk that ends at or before what was
already taken in) and gaps (a chunk that starts after the end of the previous one), by the
rule of :mod:`audioclust.stream.continuity`: the windows that would span a gap are
skipped, never filled with invented silence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audioclust.models.errors import ConfigError
from audioclust.stream.continuity import step

__all__ = ["AckOnly", "Chunk", "StreamEvent", "Window", "Windower", "check_geometry",
           "recording_windows"]


def check_geometry(window: float, hop: float, unit: str = "") -> None:
    """ConfigError unless ``0 < hop <= window`` (in seconds or samples; ``unit`` names it
    in the message)."""
    if not 0 < hop <= window:
        raise ConfigError(f"need 0 < hop <= window, got hop {hop:g}{unit}, window "
                          f"{window:g}{unit}")


@dataclass
class Chunk:
    """A piece of one stream's audio: float32 mono at the model's sample rate."""

    stream: str
    samples: np.ndarray
    offset: int | None = None  # first sample's index on the stream clock; None: contiguous
    timestamp: float | None = None  # wall-clock time of the first sample, if known
    seq: int | None = None  # the source's sequence number (Kafka header), if any
    #: Called once every window overlapping this chunk has been written by the sink.
    ack: Callable[[], None] | None = None


@dataclass
class Window:
    stream: str
    index: int  # window number on the stream clock (= start // hop)
    start: int  # first sample on the stream clock
    samples: np.ndarray
    timestamp: float | None = None  # wall-clock time of the first sample, if known
    #: Acks of chunks whose last overlapping window this is.
    acks: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class AckOnly:
    """Acks of chunks that end no window (duplicates, audio before a gap, a short tail).

    They travel in order with the windows so that a source never learns a chunk is done
    before the windows ahead of it have been written.
    """

    stream: str
    acks: list[Callable[[], None]]


Item = Window | AckOnly


@dataclass
class StreamEvent:
    stream: str
    kind: str  # "gap" | "duplicate" | "overlap"
    detail: str


class _StreamBuffer:
    def __init__(self, window: int, hop: int):
        self.window, self.hop = window, hop
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0  # stream-clock index of buffer[0]
        self.next_index: int | None = None  # next window to emit
        self.end = 0  # stream-clock index one past the last sample taken in
        self.clock_anchor: tuple[int, float] | None = None  # (sample, wall time)
        # (last sample index of the chunk, ack) waiting for their last window
        self.pending: list[tuple[int, Callable[[], None]]] = []


class Windower:
    """Feed chunks with :meth:`push`; get complete windows back, in stream order."""

    def __init__(self, window: int, hop: int, sample_rate: int):
        check_geometry(window / sample_rate, hop / sample_rate, " s")
        self.window, self.hop, self.sample_rate = window, hop, sample_rate
        self.streams: dict[str, _StreamBuffer] = {}

    def push(self, chunk: Chunk) -> tuple[list[Item], list[StreamEvent]]:
        s = self.streams.setdefault(chunk.stream, _StreamBuffer(self.window, self.hop))
        x = np.asarray(chunk.samples, dtype=np.float32).ravel()
        offset = s.end if chunk.offset is None else int(chunk.offset)
        events: list[StreamEvent] = []
        if s.next_index is None:  # first chunk seen: start at the first aligned window
            s.next_index = -(-offset // self.hop)
            s.buffer_start = offset
            s.end = offset
        where = step(s.end, offset, x.size)
        if where.kind == "duplicate":
            events.append(StreamEvent(chunk.stream, "duplicate",
                                      f"samples {offset}..{offset + x.size} already seen"))
            # Its windows were produced before: nothing is lost, only acknowledge it.
            return ([AckOnly(chunk.stream, [chunk.ack])] if chunk.ack else []), events
        if where.kind == "overlap":  # partly new: keep only the part not yet seen
            events.append(StreamEvent(chunk.stream, "overlap",
                                      f"{where.seen} samples already seen"))
            x = x[where.seen :]
            offset = s.end
        released: list[Item] = []
        if where.kind == "gap":
            events.append(StreamEvent(chunk.stream, "gap",
                                      f"{where.missing} samples missing before {offset}"))
            # Windows spanning the gap cannot be built: restart alignment after it, and
            # release the chunks that were waiting for them.
            if s.pending:
                released.append(AckOnly(chunk.stream, [ack for _, ack in s.pending]))
                s.pending = []
            s.buffer = np.zeros(0, dtype=np.float32)
            s.buffer_start = offset
            s.next_index = max(s.next_index, -(-offset // self.hop))
        if chunk.timestamp is not None:
            s.clock_anchor = (offset, float(chunk.timestamp))
        s.buffer = np.concatenate([s.buffer, x]) if s.buffer.size else x.copy()
        s.end = offset + x.size
        if chunk.ack is not None:
            s.pending.append((s.end - 1, chunk.ack))
        return released + self._drain(chunk.stream, s), events

    def finish(self, stream: str, min_samples: int) -> list[Item]:
        """End of ``stream``: a last, shorter window over the audio no full window took in.

        The tail window starts where the next full window would and runs to the end of the
        stream; it is emitted when it holds at least ``min_samples`` samples (so a clip
        shorter than one window still gets one). Every pending ack is released.
        """
        s = self.streams.pop(stream, None)
        if s is None or s.next_index is None:
            return []
        items: list[Item] = []
        start = s.next_index * self.hop
        covered = (s.next_index - 1) * self.hop + self.window if s.next_index else 0
        if s.end - start >= min_samples and s.end > covered:
            w = Window(stream, s.next_index, start, s.buffer[start - s.buffer_start :].copy())
            if s.clock_anchor is not None:
                w.timestamp = s.clock_anchor[1] + (start - s.clock_anchor[0]) / self.sample_rate
            w.acks = [ack for _, ack in s.pending]
            items.append(w)
        elif s.pending:
            items.append(AckOnly(stream, [ack for _, ack in s.pending]))
        return items

    def _drain(self, name: str, s: _StreamBuffer) -> list[Item]:
        out: list[Item] = []
        assert s.next_index is not None
        while s.next_index * self.hop + self.window <= s.end:
            start = s.next_index * self.hop
            lo = start - s.buffer_start
            w = Window(name, s.next_index, start, s.buffer[lo : lo + self.window].copy())
            if s.clock_anchor is not None:
                anchor_sample, anchor_time = s.clock_anchor
                w.timestamp = anchor_time + (start - anchor_sample) / self.sample_rate
            s.next_index += 1
            # a chunk is done when no later window can contain its last sample
            next_start = s.next_index * self.hop
            done = [ack for last, ack in s.pending if last < next_start]
            s.pending = [(last, ack) for last, ack in s.pending if last >= next_start]
            w.acks = done
            out.append(w)
        keep_from = s.next_index * self.hop
        if keep_from > s.buffer_start:
            s.buffer = s.buffer[keep_from - s.buffer_start :]
            s.buffer_start = keep_from
        return out

    def buffered(self, stream: str) -> int:
        """Samples of ``stream`` taken in and not yet past its last window."""
        s = self.streams.get(stream)
        return 0 if s is None else s.end - s.buffer_start

    def pending_acks(self, stream: str) -> int:
        """Acks of ``stream``'s chunks waiting for their last window."""
        s = self.streams.get(stream)
        return 0 if s is None else len(s.pending)

    def drop(self, stream: str) -> None:
        """Forget ``stream``'s buffered audio; its pending acks are never called."""
        self.streams.pop(stream, None)


def recording_windows(audio: np.ndarray, window: int, hop: int, sample_rate: int,
                      min_samples: int) -> list[np.ndarray]:
    """The windows a stream of this one recording gets: the full ones, then its tail
    window (:meth:`Windower.finish`), as ``audioclust-stream --source file`` cuts a file."""
    w = Windower(window, hop, sample_rate)
    items, _ = w.push(Chunk("recording", audio))
    items += w.finish("recording", min_samples)
    return [i.samples for i in items if isinstance(i, Window)]
