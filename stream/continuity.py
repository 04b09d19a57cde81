"""Gaps and duplicates on a stream's clock: one rule for sample offsets and sequence numbers.

A stream advances along a clock: the windower's sample clock (a chunk covers samples
``[offset, offset + n)``) and the Kafka source's sequence numbers (message ``seq`` covers
``[seq, seq + 1)``). Given the end of what the stream took in so far (one past its last
position), :func:`step` says what a new span is:

- ``contiguous``: it starts at the end;
- ``gap``: it starts after the end (``missing`` positions never arrived);
- ``duplicate``: it ends at or before the end (all of it was seen; an empty span never is);
- ``overlap``: it starts before the end and reaches past it (``seen`` positions again).

Either way the stream's end becomes ``max(end, start + size)``. :class:`Clocks` keeps that
end per stream for a source that has no buffer of its own to keep it in.
"""

from __future__ import annotations

from dataclasses import dataclass

from audioclust.models.errors import ConfigError

__all__ = ["Clocks", "Step", "step"]


@dataclass(frozen=True)
class Step:
    """Where a span sits against what its stream took in before."""

    kind: str  # "contiguous" | "gap" | "duplicate" | "overlap"
    #: The end before this span: the position that was expected next.
    expected: int
    #: gap: positions that never arrived before the span.
    missing: int = 0
    #: overlap: positions of the span already taken in.
    seen: int = 0


def step(end: int, start: int, size: int) -> Step:
    """The span ``[start, start + size)`` of a stream that took in everything before ``end``."""
    if size and start + size <= end:
        return Step("duplicate", end, seen=size)
    if start < end:
        return Step("overlap", end, seen=end - start)
    if start > end:
        return Step("gap", end, missing=start - end)
    return Step("contiguous", end)


class Clocks:
    """Each stream's end on one clock; at most ``memory`` streams, the least recently seen
    forgotten first (streams that never end must not pile up)."""

    def __init__(self, memory: int | None = None):
        if memory is not None and memory < 1:
            raise ConfigError(f"memory must be >= 1, got {memory}")
        self.memory = memory
        self._end: dict[str, int] = {}

    def advance(self, stream: str, start: int, size: int = 1) -> Step:
        """:func:`step` of the span, then the stream's end moves past it; a stream not seen
        before (or forgotten) starts contiguous at ``start``."""
        end = self._end.pop(stream, start)  # popped: back in at the end, most recent
        result = step(end, start, size)
        self._end[stream] = max(end, start + size)
        if self.memory is not None and len(self._end) > self.memory:
            del self._end[next(iter(self._end))]
        return result

    def forget(self, stream: str) -> None:
        """Drop the stream's end: its next span starts it afresh."""
        self._end.pop(stream, None)

    def __len__(self) -> int:
        return len(self._end)
