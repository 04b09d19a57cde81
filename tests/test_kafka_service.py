"""audioclust-stream through Kafka, end to end: the real CLI in a subprocess, a real broker
(tansu), the real ONNX model (the ``stream_model`` fixture).

(a) SIGKILL midway and restart: nothing lost, duplicates only from the uncommitted tail;
(b) a second instance joins: partitions split, nothing lost; (c) malformed messages reach
the dead-letter topic while the stream carries on, and the metrics say so over HTTP;
(d) the broker goes away for 10 s and comes back: the same process recovers; and the
assignments through Kafka equal those of ``--source file`` on the same FSDD recordings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_fsdd
from kafka import KafkaConsumer, TopicPartition
from test_kafka_messages import MALFORMED

from audioclust.stream.assign import Assigner
from audioclust.stream.kafka.messages import encode_pcm

RATE = 16000
CHUNK = 1600  # 0.1 s per message
WINDOW, HOP = 16000, 8000  # the stream_model's 1 s window, 0.5 s hop

# tansu makes every join wait for the rebalance timeout (= max_poll_interval_ms): keep it
# short so that joins take seconds, not 5 min. It must still exceed the longest stretch
# between two polls (a full queue of windows through the model on a shared CPU), or the
# consumer is dropped from the group and its commits fail: hence also a small queue.
FAST_GROUP = ["max_poll_interval_ms=4000", "session_timeout_ms=6000",
              "heartbeat_interval_ms=500", "commit_interval_s=0.2", "backoff_max_s=2",
              "max_poll_records=40"]
SMALL_QUEUE = "max_batch = 16\nmax_queue = 48\n"


class Service:
    """One ``audioclust-stream --source kafka`` process writing JSON lines to its own file."""

    def __init__(self, broker, model: Path, tmp: Path, name: str, *, group: str = "g",
                 options: list[str] = (), extra: list[str] = (), sink: str | None = None,
                 settings: str = ""):
        self.out = tmp / f"{name}.jsonl"
        self.log = tmp / f"{name}.log"
        config = tmp / f"{name}.toml"
        config.write_text(SMALL_QUEUE + settings)
        cmd = [sys.executable, "-m", "audioclust.stream.cli", "--source", "kafka",
               "--bootstrap", broker.bootstrap, "--topic", "audio", "--group", group,
               "--model", str(model), "--sink", sink or f"jsonl:{self.out}",
               "--config", str(config),
               *extra]
        for opt in [*FAST_GROUP, *options]:
            cmd += ["--kafka-option", opt]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"), env=env)  # noqa: SIM115

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def records(self) -> list[dict]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            # a line cut short by SIGKILL was never acknowledged, so it is redone: skip it
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{self.text()}")

    def assignments(self) -> list[set[int]]:
        return [set(map(int, re.findall(r"audio\[(\d+)\]", m)))
                for m in re.findall(r"partitions assigned: (.*)", self.text())]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def keys(records: list[dict]) -> set[tuple[str, int]]:
    return {(r["stream"], r["seq"]) for r in records}


def wait_until(predicate, timeout: float, what: str, services=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for s in services:
            if s.proc.poll() is not None:
                raise AssertionError(f"service exited ({s.proc.returncode}):\n{s.text()}")
        time.sleep(0.2)
    logs = "\n".join(s.text()[-3000:] for s in services)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def audio_of(stream: int, n_chunks: int) -> np.ndarray:
    rng = np.random.default_rng(stream)
    t = np.arange(n_chunks * CHUNK) / RATE
    tone = 0.2 * np.sin(2 * np.pi * (200 + 150 * stream) * t)
    return (tone + rng.normal(0, 0.05, t.size)).astype(np.float32)


def publish(broker, streams: int, chunks: range, total_chunks: int,
            extra: list | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    """Chunks ``chunks`` of each stream (in interleaved order); returns where each landed."""
    prod = broker.producer(linger_ms=5)
    futures = {}
    audio = [audio_of(s, total_chunks) for s in range(streams)]
    for c in chunks:
        for s in range(streams):
            x = audio[s][c * CHUNK : (c + 1) * CHUNK]
            m = encode_pcm(x, stream=f"s{s}", seq=c, sample_rate=RATE, offset=c * CHUNK,
                           timestamp=time.time(), end_of_stream=c == total_chunks - 1)
            futures[(f"s{s}", c)] = prod.send("audio", key=m.key, value=m.value,
                                              headers=m.headers)
        if extra and c < len(extra):
            value, headers = extra[c]
            prod.send("audio", key=b"junk", value=value, headers=headers)
    prod.flush()
    out = {k: (f.get(10).partition, f.get(10).offset) for k, f in futures.items()}
    prod.close()
    return out


def expected_windows(streams: int, n_chunks: int, first: int = 0) -> set[tuple[str, int]]:
    last = (n_chunks * CHUNK - WINDOW) // HOP  # full windows (a tail window may follow)
    return {(f"s{s}", w) for s in range(streams) for w in range(first, last + 1)}


def committed(broker, group: str, partitions: int) -> dict[int, int | None]:
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                      enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition("audio", p)) for p in range(partitions)}
    finally:
        c.close(autocommit=False)


def test_sigkill_midway_loses_nothing_and_replays_only_the_uncommitted_tail(
        kafka_broker, stream_model, tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=4)
    n_streams, n_chunks = 20, 100  # 2,000 messages, 10 s of audio per stream
    where = publish(b, n_streams, range(n_chunks), n_chunks)
    assert len(where) == 2000
    expected = expected_windows(n_streams, n_chunks)

    first = Service(b, stream_model, tmp_path, "first")
    wait_until(lambda: len(first.records()) >= len(expected) * 0.4, 120, "40 % of the output",
               [first])
    first.kill()
    done = committed(b, "g", 4)
    got1 = first.records()
    assert 0 < len(keys(got1)) < len(expected)
    assert any(v for v in done.values()), "nothing was committed before the kill"

    second = Service(b, stream_model, tmp_path, "second")
    wait_until(lambda: keys(first.records()) | keys(second.records()) >= expected, 180,
               "every window after the restart", [second])
    assert second.stop() == 0
    got2 = second.records()
    assert keys(got1) | keys(got2) == expected  # none lost, nothing invented
    # Everything the restart produced involves audio from a message at or after the
    # committed offset of its partition: only the uncommitted tail is processed again.
    for stream, w in keys(got2):
        chunks = range(w * HOP // CHUNK, (w * HOP + WINDOW - 1) // CHUNK + 1)
        part = where[(stream, chunks[0])][0]
        last_offset = max(where[(stream, c)][1] for c in chunks)
        assert last_offset >= (done[part] or 0), (stream, w, done)
    dup = keys(got1) & keys(got2)
    assert len(dup) < len(keys(got1))  # the committed part was not redone
    # no duplicate inside one run
    assert len(got2) == len(keys(got2))


def test_a_second_instance_takes_half_the_partitions_and_nothing_is_lost(
        kafka_broker, stream_model, tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=4)
    a = Service(b, stream_model, tmp_path, "a")
    a.wait_log(r"partitions assigned: audio")
    second = Service(b, stream_model, tmp_path, "b")
    second.wait_log(r"partitions assigned: audio")
    n_streams, n_chunks = 12, 40
    publish(b, n_streams, range(n_chunks), n_chunks)
    expected = expected_windows(n_streams, n_chunks)
    wait_until(lambda: keys(a.records()) | keys(second.records()) >= expected, 180,
               "every window from the two instances", [a, second])
    final_a, final_b = a.assignments()[-1], second.assignments()[-1]
    assert final_a and final_b and final_a.isdisjoint(final_b)
    assert final_a | final_b == {0, 1, 2, 3}
    assert a.records() and second.records()  # both did work
    assert keys(a.records()) | keys(second.records()) == expected
    assert a.stop() == 0 and second.stop() == 0


def test_malformed_messages_go_to_the_dlq_end_to_end_and_metrics_move(
        kafka_broker, stream_model, tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio")
    b.create_topic("audio.dlq")
    state = tmp_path / "dlq-state.npz"
    svc = Service(b, stream_model, tmp_path, "dlq", options=["max_message_bytes=9000"],
                  extra=["--metrics-port", "0", "--state", str(state)])
    port = int(svc.wait_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
    svc.wait_log(r"partitions assigned: audio")
    # the good stream's chunks (3,200 bytes) interleaved with every malformed kind
    n_chunks = len(MALFORMED) + 4
    # the too_large case is sized for a 2,048-byte limit: make it too large for this one
    bad = [(b"\0" * 12000 if r == "too_large" else v, h) for r, v, h in MALFORMED]
    publish(b, 1, range(n_chunks), n_chunks, extra=bad)
    expected = expected_windows(1, n_chunks)
    # a stream id that once made the state file unloadable (the zip member name was cut
    # at the NUL) is only data now
    prod = b.producer()
    odd = "odd\0/id"
    for c in range(12):
        m = encode_pcm(audio_of(7, 12)[c * CHUNK : (c + 1) * CHUNK], stream=odd, seq=c,
                       sample_rate=RATE, offset=c * CHUNK, end_of_stream=c == 11)
        prod.send("audio", key=m.key, value=m.value, headers=m.headers)
    prod.flush()
    prod.close()
    expected |= {(odd, 0), (odd, 1)}  # a full window and the tail
    wait_until(lambda: keys(svc.records()) >= expected, 60, "the good streams' windows", [svc])
    dlq = b.read_all("audio.dlq", len(MALFORMED))
    reasons = sorted(dict(m.headers)["dlq-reason"].decode() for m in dlq)
    assert reasons == sorted(r for r, _, _ in MALFORMED)
    for m in dlq:
        assert dict(m.headers)["dlq-topic"] == b"audio" and m.key == b"junk"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for reason in {r for r, _, _ in MALFORMED}:
        count = sum(r == reason for r, _, _ in MALFORMED)
        assert f'audioclust_dead_letters_total{{reason="{reason}"}} {count}.0' in body
    assert re.search(r'audioclust_consumer_lag\{partition="0",topic="audio"\} 0\.0', body)
    assert svc.stop() == 0
    # every message, good or bad, was committed at the end
    assert committed(b, "g", 1)[0] == n_chunks + len(MALFORMED) + 12
    restored = Assigner(np.full(4, 0.25), 64)
    assert restored.load(state) == 2 and odd in restored.streams


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_service_rides_out_a_broker_outage(kafka_broker, stream_model, tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=2)
    svc = Service(b, stream_model, tmp_path, "outage", extra=["--metrics-port", "0"])
    port = int(svc.wait_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
    svc.wait_log(r"partitions assigned: audio")
    n_streams, n_chunks = 4, 80
    publish(b, n_streams, range(40), n_chunks)
    first_half = expected_windows(n_streams, 40)
    wait_until(lambda: keys(svc.records()) >= first_half, 60, "the first half", [svc])
    assert readyz(port) == 200
    # a broker that hangs (SIGSTOP) keeps its connections open but answers nothing
    before = rss_mb(svc.proc.pid)
    os.kill(b.proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        wait_until(lambda: readyz(port) == 503, 30, "/readyz to notice the hung broker", [svc])
        # ... and the consumer must not spin on it: kafka-python's poll() busy-looped,
        # keeping about 15 MB per second of the freeze until the fetch timed out
        wait_until(lambda: time.monotonic() - frozen > 10, 20, "ten seconds of freeze")
        grown = rss_mb(svc.proc.pid) - before
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    assert grown < 40, f"{grown:.0f} MB more during a 10 s broker freeze"
    wait_until(lambda: readyz(port) == 200, 60, "/readyz once the broker answers", [svc])
    b.stop()
    # readiness follows the broker connection (docs/deploy.md: "broker connected")
    wait_until(lambda: readyz(port) == 503, 30, "/readyz to say not ready", [svc])
    # Memory storage: the restarted broker has no topics, messages or offsets. Re-creating
    # the topics (the state topic too) stands in for a broker that keeps its data; the
    # service must find them again. It is paused meanwhile: tansu would create a topic it
    # asks for before us, with its own partition count (it ignores the client's
    # allow_auto_create_topics), which a broker that kept its data never does.
    os.kill(svc.proc.pid, signal.SIGSTOP)
    try:
        b.restart()
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
    wait_until(lambda: readyz(port) == 200, 60, "/readyz to say ready again", [svc])
    publish(b, n_streams, range(40, n_chunks), n_chunks)
    # windows that start inside the second half (the one across the boundary may be
    # skipped: the rejoin made the service forget the first half's buffered audio)
    second_half = expected_windows(n_streams, n_chunks, first=40 * CHUNK // HOP)
    wait_until(lambda: keys(svc.records()) >= second_half, 120,
               "the second half after the outage", [svc])
    assert svc.proc.poll() is None  # the same process, never restarted
    assert svc.stop() == 0


def test_results_to_a_kafka_sink_are_keyed_by_stream(kafka_broker, stream_model,
                                                     tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=2)
    b.create_topic("results", partitions=2)
    svc = Service(b, stream_model, tmp_path, "ksink", sink="kafka:results")
    svc.wait_log(r"partitions assigned: audio")
    publish(b, 3, range(30), 30)
    expected = expected_windows(3, 30)
    got: list = []

    def all_there() -> bool:
        got[:] = b.read_all("results", len(expected), timeout=2)
        return {(json.loads(m.value)["stream"], json.loads(m.value)["seq"])
                for m in got} >= expected

    wait_until(all_there, 60, "the results on the results topic", [svc])
    assert svc.stop() == 0
    for m in got:
        r = json.loads(m.value)
        assert m.key.decode() == r["stream"]
        assert {"cluster", "confidence", "start", "end", "model"} <= set(r)
    # one stream's results stay on one partition, in window order
    for s in ("s0", "s1", "s2"):
        mine = [m for m in got if m.key == s.encode()]
        assert len({m.partition for m in mine}) == 1
        seqs = [json.loads(m.value)["seq"] for m in sorted(mine, key=lambda m: m.offset)]
        assert seqs == sorted(seqs)
    assert committed(b, "g", 2) and sum(committed(b, "g", 2).values()) == 90


def test_a_flood_of_streams_that_never_end_starves_no_one(kafka_broker, stream_model,
                                                          tmp_path) -> None:
    """300 streams of one 0.1 s chunk each (never ended) against max_in_flight 100: the
    bound is reached, those streams hold their chunks back waiting for audio that never
    comes. The least recently fed streams are finished to make room (as if they had
    ended: a short tail window, their chunks acknowledged), so the stream behind the flood
    gets all its windows; the rest expire once idle, and everything is committed."""
    b = kafka_broker
    b.create_topic("audio")
    svc = Service(b, stream_model, tmp_path, "flood", options=["max_in_flight=100"],
                  settings="stream_idle_seconds = 3\n", extra=["--metrics-port", "0"])
    port = int(svc.wait_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
    svc.wait_log(r"partitions assigned: audio")
    prod = b.producer(linger_ms=5)
    for i in range(300):
        m = encode_pcm(audio_of(i, 1), stream=f"idle{i}", seq=0, sample_rate=RATE, offset=0)
        prod.send("audio", key=m.key, value=m.value, headers=m.headers)
    good = audio_of(999, 40)
    for c in range(40):
        m = encode_pcm(good[c * CHUNK : (c + 1) * CHUNK], stream="good", seq=c,
                       sample_rate=RATE, offset=c * CHUNK)
        prod.send("audio", key=m.key, value=m.value, headers=m.headers)
    prod.flush()
    prod.close()
    want = {("good", w) for w in range(7)}  # 4 s of audio: windows 0..6 are full
    wait_until(lambda: keys(svc.records()) >= want, 90, "the good stream's windows", [svc])
    # the flood expires (in-flight bound, then idleness): every message is acknowledged
    wait_until(lambda: committed(b, "g", 1)[0] == 340, 90, "every offset committed", [svc])
    records = svc.records()
    flood = [r for r in records if r["stream"].startswith("idle")]
    # each flood stream ended as if its end had come: its one short window, once
    assert sorted(r["stream"] for r in flood) == sorted(f"idle{i}" for i in range(300))
    assert all(r["seq"] == 0 and r["end"] == 0.1 for r in flood)
    good_seqs = sorted(r["seq"] for r in records if r["stream"] == "good")
    assert good_seqs[:7] == list(range(7))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    expired = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'audioclust_streams_expired_total\{reason="(\w+)"\} (\S+)', body)}
    assert expired.get("in_flight", 0) > 0 and sum(expired.values()) >= 301, expired
    assert svc.stop() == 0


@pytest.fixture
def fsdd_twelve(tmp_path, fsdd_dir) -> Path:
    return copy_fsdd(fsdd_dir, tmp_path / "rec", range(3), ("george", "jackson"), range(2))


def _file_and_kafka_records(broker, model: Path, recordings: Path, tmp_path: Path,
                            name: str) -> tuple[dict, dict]:
    """The records of ``recordings`` replayed as files and sent through Kafka, by key."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out_file = tmp_path / f"{name}-file.jsonl"
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.cli", "--source", "file",
                        str(recordings), "--model", str(model), "--sink",
                        f"jsonl:{out_file}", "-q"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    by_file = {(Path(x["stream"]).stem, x["seq"]): x
               for x in map(json.loads, out_file.read_text().splitlines())}
    broker.create_topic("audio", partitions=2)
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.kafka.produce", "--bootstrap",
                        broker.bootstrap, "--topic", "audio", "--format", "float32", "--resample",
                        "16000", "--parallel", "4", str(recordings)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    # without the group's cluster registry: with it, discovered ids are the fleet's
    svc = Service(broker, model, tmp_path, name, options=["cluster_registry=false"])
    wait_until(lambda: len(svc.records()) >= len(by_file), 120, "all windows", [svc])
    assert svc.stop() == 0
    return by_file, {(x["stream"], x["seq"]): x for x in svc.records()}


def test_kafka_assignments_equal_file_replay(kafka_broker, stream_model, tmp_path,
                                             fsdd_twelve) -> None:
    by_file, by_kafka = _file_and_kafka_records(kafka_broker, stream_model, fsdd_twelve,
                                                tmp_path, "equiv")
    assert len(by_file) >= 12
    assert set(by_kafka) == set(by_file)
    for k, f in by_file.items():
        g = by_kafka[k]
        assert (g["cluster"], g["silent"], g["novel"]) == (f["cluster"], f["silent"], f["novel"])
        assert g["start"] == f["start"] and g["end"] == f["end"]
        if f["confidence"] is not None:
            assert g["confidence"] == pytest.approx(f["confidence"], abs=1e-4)


def test_open_set_clusters_equal_through_kafka_and_files(kafka_broker, headfree_model,
                                                         fsdd_subset, tmp_path) -> None:
    """Head-free streams long enough to found and merge clusters: the open-set clusterer
    sees each stream's windows in order, so Kafka gives the records file replay gives."""
    import soundfile as sf
    from stream_helpers import concat_clips

    rec = tmp_path / "long"
    rec.mkdir()
    clips = sorted(fsdd_subset.iterdir())
    for i in range(2):
        sf.write(rec / f"r{i}.wav", concat_clips(clips[i * 30 : i * 30 + 30]), 8000,
                 subtype="PCM_16")
    by_file, by_kafka = _file_and_kafka_records(kafka_broker, headfree_model, rec, tmp_path,
                                                "longaudio")
    assert set(by_kafka) == set(by_file) and len(by_file) > 40
    heard = [f for f in by_file.values() if not f["silent"]]
    assert len({(f["stream"], f["cluster"]) for f in heard}) > 2  # clusters were founded
    for k, f in by_file.items():
        g = by_kafka[k]
        assert (g["cluster"], g["silent"], g["novel"], g["discovered"], g["top"]) == \
            (f["cluster"], f["silent"], f["novel"], f["discovered"], f["top"])
        if f["confidence"] is not None:
            assert g["confidence"] == pytest.approx(f["confidence"], abs=1e-4)
            assert g["novelty"] == pytest.approx(f["novelty"], abs=1e-4)
