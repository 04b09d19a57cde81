"""The one gap/duplicate rule, on a sample clock (the windower) and on sequence numbers
(the Kafka source), and the bounded per-stream memory of the latter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audioclust.stream.continuity import Clocks, step


@pytest.mark.parametrize(("end", "start", "size", "kind", "missing", "seen"), [
    (100, 100, 20, "contiguous", 0, 0),
    (100, 130, 20, "gap", 30, 0),
    (100, 60, 40, "duplicate", 0, 40),  # ends exactly at the end: nothing new
    (100, 10, 20, "duplicate", 0, 20),
    (100, 90, 20, "overlap", 0, 10),
    (100, 100, 0, "contiguous", 0, 0),
    (100, 40, 0, "overlap", 0, 60),  # an empty span never counts as a duplicate
])
def test_sample_spans(end, start, size, kind, missing, seen) -> None:
    s = step(end, start, size)
    assert (s.kind, s.missing, s.seen, s.expected) == (kind, missing, seen, end)


def test_sequence_numbers_are_spans_of_one() -> None:
    clocks = Clocks()
    kinds = [(seq, clocks.advance("s", seq)) for seq in (0, 1, 2, 5, 6, 6, 3, 7)]
    assert [(seq, s.kind) for seq, s in kinds] == [
        (0, "contiguous"), (1, "contiguous"), (2, "contiguous"), (5, "gap"),
        (6, "contiguous"), (6, "duplicate"), (3, "duplicate"), (7, "contiguous")]
    gap = kinds[3][1]
    assert gap.expected - 1 == 2 and gap.missing == 2  # last was 2; 3 and 4 missing
    assert kinds[6][1].expected - 1 == 6  # a late 3: the last seen is still 6


def test_first_sight_and_forget_start_a_stream_afresh() -> None:
    clocks = Clocks()
    assert clocks.advance("s", 41).kind == "contiguous"  # anywhere: a consumer restarts
    assert clocks.advance("s", 44).kind == "gap"
    clocks.forget("s")
    assert clocks.advance("s", 0).kind == "contiguous"
    assert clocks.advance("other", 9).kind == "contiguous"  # streams are independent
    assert clocks.advance("s", 1).kind == "contiguous"


def test_memory_forgets_the_least_recently_seen() -> None:
    clocks = Clocks(memory=2)
    clocks.advance("a", 0)
    clocks.advance("b", 0)
    clocks.advance("a", 1)  # a is now the most recent
    clocks.advance("c", 0)  # over the bound: b goes
    assert len(clocks) == 2
    assert clocks.advance("b", 5).kind == "contiguous"  # forgotten: no gap reported
    assert clocks.advance("c", 3).kind == "gap"
    with pytest.raises(ValueError, match="memory"):
        Clocks(memory=0)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10)), min_size=1, max_size=30))
def test_kinds_partition_what_was_seen(spans) -> None:
    """Against a set of positions seen: a duplicate adds nothing, a gap starts past all
    of them, an overlap repeats exactly ``seen`` of them."""
    clocks = Clocks()
    seen: set[int] = set()
    end = None
    for start, size in spans:
        s = clocks.advance("s", start, size)
        new = set(range(start, start + size))
        if end is None:
            assert s.kind == "contiguous"
        elif s.kind == "duplicate":
            assert start + size <= end
        elif s.kind == "gap":
            assert start > end and s.missing == start - end and not new & seen
        elif s.kind == "overlap":
            assert start < end < start + size and s.seen == end - start
        else:
            assert start == end
        end = max(end if end is not None else start, start + size)
        seen |= new
