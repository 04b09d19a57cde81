"""Windowing: chunking-independent windows, restart alignment, gaps, duplicates, acks."""

from __future__ import annotations

import numpy as np
import pytest

from audioclust.stream.window import AckOnly, Chunk, Window, Windower

SR, WIN, HOP = 100, 40, 20


def _chunks(x: np.ndarray, sizes, stream="s", start=0, acks=None):
    pos = 0
    for i, n in enumerate(sizes):
        ack = None if acks is None else (lambda i=i: acks.append(i))
        yield Chunk(stream, x[pos : pos + n], offset=start + pos, seq=i, ack=ack)
        pos += n


def _windows(items):
    return [it for it in items if isinstance(it, Window)]


def _run(w: Windower, chunks):
    out, events = [], []
    for c in chunks:
        items, ev = w.push(c)
        out += items
        events += ev
    return out, events


def test_windows_do_not_depend_on_chunking():
    x = np.arange(300, dtype=np.float32)
    rng = np.random.default_rng(0)
    reference = None
    for _ in range(5):
        sizes = []
        while sum(sizes) < 300:
            sizes.append(int(rng.integers(1, 70)))
        items, events = _run(Windower(WIN, HOP, SR), _chunks(x, sizes))
        ws = _windows(items)
        assert not events
        got = [(w.index, w.start, w.samples.tolist()) for w in ws]
        if reference is None:
            reference = got
        assert got == reference
    assert [i for i, _, _ in reference] == list(range(14))  # (300 - 40) / 20 + 1
    assert reference[3][2] == list(range(60, 100))


def test_restart_mid_stream_keeps_numbering():
    x = np.arange(300, dtype=np.float32)
    full = _windows(_run(Windower(WIN, HOP, SR), _chunks(x, [50] * 6))[0])
    # a consumer restarted at the chunk starting at sample 150
    resumed = _windows(_run(Windower(WIN, HOP, SR), _chunks(x[150:], [50] * 3, start=150))[0])
    assert resumed[0].start == 160  # first window starting at or after 150
    by_index = {w.index: w for w in full}
    for w in resumed:
        np.testing.assert_array_equal(w.samples, by_index[w.index].samples)


def test_acks_follow_the_last_overlapping_window():
    x = np.zeros(200, dtype=np.float32)
    acked = []
    w = Windower(WIN, HOP, SR)
    released = []
    for c in _chunks(x, [30, 30, 30, 30, 30, 50], acks=acked):
        items, _ = w.push(c)
        for it in items:
            for ack in it.acks:
                ack()
            if isinstance(it, Window):
                released.append((it.index, sorted(acked)))
    # chunk 0 holds samples 0..29: windows 0 (0-39) and 1 (20-59) contain it
    first_ack = next(idx for idx, acks in released if 0 in acks)
    assert first_ack == 1
    assert w.pending_acks("s") > 0  # the tail waits for windows not yet complete
    for it in w.finish("s", min_samples=10):
        for ack in it.acks:
            ack()
    assert sorted(acked) == list(range(6))  # nothing is left unacknowledged


def test_duplicates_and_overlaps():
    x = np.arange(120, dtype=np.float32)
    w = Windower(WIN, HOP, SR)
    _run(w, _chunks(x[:80], [40, 40]))
    acked = []
    items, events = w.push(Chunk("s", x[40:80], offset=40, ack=lambda: acked.append(1)))
    assert [e.kind for e in events] == ["duplicate"]
    assert len(items) == 1 and isinstance(items[0], AckOnly)
    items, events = w.push(Chunk("s", x[60:120], offset=60))
    assert [e.kind for e in events] == ["overlap"]
    ws = _windows(items)
    assert [v.index for v in ws] == [3, 4]
    np.testing.assert_array_equal(ws[0].samples, x[60:100])


def test_gap_skips_windows_and_releases_acks():
    x = np.arange(400, dtype=np.float32)
    w = Windower(WIN, HOP, SR)
    acked = []
    _run(w, [Chunk("s", x[:50], offset=0, ack=lambda: acked.append("a"))])
    items, events = w.push(Chunk("s", x[130:230], offset=130))
    assert [e.kind for e in events] == ["gap"]
    assert "80 samples missing" in events[0].detail
    assert isinstance(items[0], AckOnly) and len(items[0].acks) == 1
    ws = _windows(items)
    assert ws[0].start == 140  # first aligned window after the gap
    for v in ws:  # no window spans invented audio
        np.testing.assert_array_equal(v.samples, x[v.start : v.start + WIN])


def test_short_stream_gets_one_tail_window_with_time():
    w = Windower(WIN, HOP, SR)
    items, _ = w.push(Chunk("clip", np.ones(25, np.float32), offset=0, timestamp=1000.0))
    assert items == []
    tail = w.finish("clip", min_samples=10)
    assert len(tail) == 1 and isinstance(tail[0], Window)
    assert tail[0].samples.size == 25 and tail[0].timestamp == pytest.approx(1000.0)
    assert Windower(WIN, HOP, SR).finish("never-seen", 10) == []
    w2 = Windower(WIN, HOP, SR)
    w2.push(Chunk("c", np.ones(5, np.float32)))
    assert _windows(w2.finish("c", min_samples=10)) == []


def test_timestamps_follow_the_sample_clock():
    w = Windower(WIN, HOP, SR)
    items, _ = w.push(Chunk("s", np.zeros(100, np.float32), offset=0, timestamp=50.0))
    assert [v.timestamp for v in _windows(items)] == pytest.approx([50.0, 50.2, 50.4, 50.6])


def test_streams_are_independent():
    w = Windower(WIN, HOP, SR)
    a, _ = w.push(Chunk("a", np.zeros(40, np.float32)))
    b, _ = w.push(Chunk("b", np.ones(39, np.float32)))
    assert len(_windows(a)) == 1 and _windows(b) == []


def test_bad_geometry():
    with pytest.raises(ValueError, match="hop"):
        Windower(10, 20, SR)
