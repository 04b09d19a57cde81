"""Which offsets of the assigned partitions are done, and what may be committed.

Offsets are handed out in fetch order; a chunk's :class:`Ack` (called by the pipeline once
every window the chunk contributes to has been written) marks its offset done, and per
partition only the contiguous done prefix is committable, so a crash replays the
uncommitted tail and never skips audio. Acks may come from any thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Ack", "Offsets", "PartitionOffsets"]


class PartitionOffsets:
    """Offsets handed out from one assigned partition, in fetch order, and which are done."""

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None  # one past the done prefix: what to commit
        self.committed: int | None = None  # what the broker last confirmed
        self.streams: set[str] = set()
        self.alive = True  # False once revoked: late acks are ignored
        self.next_fetch: int | None = None  # one past the last offset fetched (for lag)

    def add(self, offset: int) -> None:
        self.order.append(offset)
        self.next_fetch = offset + 1

    def mark(self, offset: int) -> None:
        self.done.add(offset)
        while self.order and self.order[0] in self.done:
            off = self.order.popleft()
            self.done.discard(off)
            self.committable = off + 1

    @property
    def in_flight(self) -> int:
        return len(self.order)


class Offsets:
    """The :class:`PartitionOffsets` of every assigned partition, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[Any, PartitionOffsets] = {}
        #: Bumps on every ack: progress while fetching is paused.
        self.acks = 0

    def assign(self, tps: Iterable[Any]) -> None:
        with self._lock:
            for tp in tps:
                self._parts.setdefault(tp, PartitionOffsets())

    def partition(self, tp: Any) -> PartitionOffsets:
        """The partition's offsets (new ones when fetched before the assignment was seen)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                part = self._parts[tp] = PartitionOffsets()
            return part

    def items(self, tps: Iterable[Any] | None = None) -> list[tuple[Any, PartitionOffsets]]:
        """(partition, offsets) of ``tps`` that are assigned (None: all)."""
        with self._lock:
            if tps is None:
                return list(self._parts.items())
            return [(tp, self._parts[tp]) for tp in tps if tp in self._parts]

    def fetched(self, part: PartitionOffsets, offset: int) -> None:
        with self._lock:
            part.add(offset)

    def ack(self, part: PartitionOffsets, offset: int) -> None:
        with self._lock:
            if part.alive:
                part.mark(offset)
            self.acks += 1

    def in_flight(self) -> int:
        """Offsets handed out (or dead-lettered) that are not done yet."""
        with self._lock:
            return sum(p.in_flight for p in self._parts.values())

    def to_commit(self, parts: Iterable[tuple[Any, PartitionOffsets]]) -> dict[Any, int]:
        """The committable offset of each of ``parts`` that moved since its last commit."""
        with self._lock:
            return {tp: p.committable for tp, p in parts
                    if p.committable is not None and p.committable != p.committed}

    def committed(self, offsets: Mapping[Any, int]) -> None:
        """The broker confirmed these commits."""
        with self._lock:
            for tp, off in offsets.items():
                p = self._parts.get(tp)
                if p is not None and (p.committed is None or off > p.committed):
                    p.committed = off

    def partitions_of(self, streams: Iterable[str]) -> dict[str, int]:
        """The partition number each of ``streams`` was read from (those still assigned)."""
        wanted = set(streams)
        with self._lock:
            return {s: tp.partition for tp, p in self._parts.items() for s in wanted & p.streams}

    def revoke(self, parts: Iterable[tuple[Any, PartitionOffsets]]) -> set[str]:
        """Give ``parts`` up (their late acks are ignored); returns the streams they held."""
        streams: set[str] = set()
        with self._lock:
            for tp, p in parts:
                p.alive = False
                streams |= p.streams
                self._parts.pop(tp, None)
        return streams


class Ack:
    """A chunk's ack: marks its offset done (idempotent, thread-safe through ``offsets``)."""

    __slots__ = ("offset", "offsets", "part")

    def __init__(self, offsets: Offsets, part: PartitionOffsets, offset: int):
        self.offsets, self.part, self.offset = offsets, part, offset

    def __call__(self) -> None:
        self.offsets.ack(self.part, self.offset)
