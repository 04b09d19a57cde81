"""Streams that never end: idle expiry, the release of the least recently fed streams, and
the idle clock that stops while the source is disconnected (the pipeline driven step by
step on the real model, with the clock readings passed in)."""

from __future__ import annotations

import numpy as np
import pytest
from stream_helpers import read_jsonl

from audioclust.models.runtime import OnnxModel
from audioclust.stream.config import StreamConfig
from audioclust.stream.pipeline import Pipeline
from audioclust.stream.sinks.jsonl import JsonlSink
from audioclust.stream.sources import Source
from audioclust.stream.window import Chunk

SR = 16000


class Feed(Source):
    """A live source whose connection the test switches."""

    kind = "feed"

    def __init__(self) -> None:
        self.up = True

    def poll(self, timeout: float) -> list:
        return []

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return self.up


@pytest.fixture
def pipe(stream_model, tmp_path):
    model = OnnxModel(stream_model, threads=1)
    p = Pipeline(model, Feed(), JsonlSink(tmp_path / "out.jsonl"),
                 StreamConfig(stream_idle_seconds=10.0))
    p.acked = []
    yield p
    p.sink.close()


def _chunk(p, stream: str, start: float, seconds: float) -> Chunk:
    rng = np.random.default_rng(len(stream))
    x = (0.3 * rng.standard_normal(round(seconds * SR))).astype(np.float32)
    return Chunk(stream, x, offset=round(start * SR),
                 ack=lambda: p.acked.append((stream, start)))


def _records(p, tmp_path) -> list[dict]:
    p._process()
    return read_jsonl(tmp_path / "out.jsonl")


def test_an_idle_stream_is_finished_as_if_it_had_ended(pipe, tmp_path) -> None:
    t0 = pipe._tick
    pipe._take(_chunk(pipe, "a", 0.0, 0.7))  # less than one window: nothing to emit yet
    pipe._expire_idle(t0 + 9.9)
    assert _records(pipe, tmp_path) == [] and pipe.acked == []
    pipe._expire_idle(t0 + 10.1)
    got = _records(pipe, tmp_path)
    assert [(r["stream"], r["seq"], r["end"]) for r in got] == [("a", 0, 0.7)]  # its tail
    assert pipe.acked == [("a", 0.0)]
    assert "a" not in pipe.windower.streams and not pipe._fed
    assert pipe.metrics.streams_expired.labels(reason="idle")._value.get() == 1
    # a later chunk starts the stream again, numbered on its clock
    pipe._take(_chunk(pipe, "a", 5.0, 1.0))
    assert [(r["seq"], r["start"]) for r in _records(pipe, tmp_path)[1:]] == [(10, 5.0)]


def test_the_idle_clock_stops_while_the_source_is_disconnected(pipe, tmp_path) -> None:
    t0 = pipe._tick
    pipe._take(_chunk(pipe, "b", 0.0, 0.7))
    pipe.source.up = False  # e.g. the broker is down: no stream can be fed
    pipe._expire_idle(t0 + 100.0)
    assert _records(pipe, tmp_path) == []
    pipe.source.up = True
    pipe._expire_idle(t0 + 105.0)  # 5 s of connected idleness
    assert _records(pipe, tmp_path) == []
    pipe._expire_idle(t0 + 110.5)
    assert [r["stream"] for r in _records(pipe, tmp_path)] == ["b"]


def test_release_finishes_the_least_recently_fed_first(pipe, tmp_path) -> None:
    for name in ("x", "y", "z"):
        pipe._take(_chunk(pipe, name, 0.0, 0.3))
    pipe._take(_chunk(pipe, "x", 0.3, 0.3))  # x fed again: y is now the oldest
    assert pipe.release(1) == 1
    assert pipe.acked == [("y", 0.0)]
    assert pipe.release(2) == 3  # z (one chunk) is not enough: x (two chunks) too
    assert sorted(pipe.acked) == [("x", 0.0), ("x", 0.3), ("y", 0.0), ("z", 0.0)]
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["stream"], r["end"]) for r in got] == [("y", 0.3), ("z", 0.3), ("x", 0.6)]
    assert pipe.metrics.streams_expired.labels(reason="in_flight")._value.get() == 3
    assert pipe.release(5) == 0 and not pipe.windower.streams  # nothing left to release


def test_memory_per_stream_stays_within_a_window(pipe) -> None:
    """A stream that is fed and fed without ever ending holds less than one window."""
    window = pipe.window_samples
    for i in range(200):
        pipe._take(_chunk(pipe, "long", i * 0.1, 0.1))
        buf = pipe.windower.streams["long"]
        assert buf.buffer.size < window
        assert pipe.windower.pending_acks("long") <= window // 1600 + 1
        if i % 20 == 0:
            pipe._process()
