"""KafkaSource and KafkaSink against a real broker (tansu): DLQ, commits, rebalance, bounds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from test_kafka_messages import MALFORMED

from audioclust.stream.kafka.config import KafkaConfig
from audioclust.stream.kafka.messages import encode_pcm
from audioclust.stream.kafka.offsets import PartitionOffsets
from audioclust.stream.kafka.sink import KafkaSink
from audioclust.stream.kafka.source import KafkaSource
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.sinks import SinkError
from audioclust.stream.sources import EndOfStream, PipelineHooks, SourceError
from audioclust.stream.window import Chunk


def config(broker, topic: str = "audio", group: str = "g", **kw) -> KafkaConfig:
    # tansu makes a join wait for the rebalance timeout (= max_poll_interval_ms): keep it short
    base = {"max_poll_interval_ms": 3000, "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500, "commit_interval_s": 0.1, "startup_timeout_s": 10}
    base.update(kw)
    return KafkaConfig(bootstrap=broker.bootstrap, topic=topic, group=group, **base)


def send(producer, topic: str, msg, partition: int | None = None) -> None:
    producer.send(topic, key=msg.key, value=msg.value, headers=msg.headers,
                  partition=partition)


def pcm(stream: str, seq: int, n: int = 800, **kw):
    x = np.random.default_rng(seq).uniform(-0.3, 0.3, n).astype(np.float32)
    return encode_pcm(x, stream=stream, seq=seq, sample_rate=16000, offset=seq * n, **kw)


def two_streams_on_two_partitions(broker, chunks: int) -> None:
    """Topic ``audio`` with 2 partitions: stream p0 on partition 0, p1 on 1."""
    broker.create_topic("audio", partitions=2)
    prod = broker.producer()
    for i in range(chunks):
        send(prod, "audio", pcm("p0", i), partition=0)
        send(prod, "audio", pcm("p1", i), partition=1)
    prod.flush()
    prod.close()


def drain(source: KafkaSource, n: int, timeout: float = 20.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while sum(isinstance(i, Chunk) for i in out) < n and time.monotonic() < deadline:
        out += source.poll(0.2)
    return out


def committed(broker, topic: str, group: str, partitions: int = 1) -> list[int | None]:
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                      enable_auto_commit=False)
    try:
        return [c.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        c.close(autocommit=False)


def wait_for(predicate, timeout: float = 10.0, source: KafkaSource | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if source is not None:
            source.poll(0.1)
        else:
            time.sleep(0.1)
    return predicate()


class Poller:
    """Polls a source from its own thread, as each service instance does in its own process
    (kafka-python loses a group join that completes while its consumer is not polled)."""

    def __init__(self, source: KafkaSource):
        self.source, self.items, self.error = source, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.items += self.source.poll(0.1)
            except Exception as exc:
                self.error = exc
                return

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(30)
        return self.items


def test_partition_commits_only_the_done_prefix() -> None:
    p = PartitionOffsets()
    for off in (10, 11, 12, 14, 15):  # 13 missing: offsets need not be contiguous
        p.add(off)
    p.mark(11)
    assert p.committable is None  # 10 is not done yet
    p.mark(10)
    assert p.committable == 12
    p.mark(15)
    assert p.committable == 12 and p.in_flight == 3
    p.mark(12)
    p.mark(14)
    assert p.committable == 16 and p.in_flight == 0


def test_every_malformed_kind_reaches_the_dlq_and_the_stream_carries_on(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("audio")
    b.create_topic("audio.dlq")
    prod = b.producer()
    # good messages of one stream interleaved with every malformed kind
    n_good = 0
    for i, (_, value, headers) in enumerate(MALFORMED):
        send(prod, "audio", pcm("good", i))
        n_good += 1
        prod.send("audio", key=b"bad", value=value, headers=headers)
    send(prod, "audio", pcm("good", n_good, end_of_stream=True))
    n_good += 1
    prod.flush()
    metrics = StreamMetrics()
    src = KafkaSource(config(b, max_message_bytes=2048), 16000, metrics)
    src.open(PipelineHooks(flush=lambda: None, forget=lambda s: None))
    try:
        items = drain(src, n_good)
        chunks = [i for i in items if isinstance(i, Chunk)]
        assert [c.seq for c in chunks] == list(range(n_good))
        assert {c.stream for c in chunks} == {"good"}
        assert chunks[3].offset == 3 * 800 and chunks[3].samples.size == 800
        assert any(isinstance(i, EndOfStream) and i.stream == "good" for i in items)
        for c in chunks:
            c.ack()
        total = len(MALFORMED) + n_good
        assert wait_for(lambda: committed(b, "audio", "g") == [total], source=src), \
            committed(b, "audio", "g")
    finally:
        src.close()
    dlq = b.read_all("audio.dlq", len(MALFORMED))
    assert len(dlq) == len(MALFORMED)
    for m, (reason, value, headers) in zip(dlq, MALFORMED, strict=True):
        h = dict(m.headers)
        assert h["dlq-reason"].decode() == reason
        assert h["dlq-topic"] == b"audio" and int(h["dlq-offset"]) % 2 == 1
        assert (m.value or b"") == value  # original bytes kept
        assert m.key == b"bad"
        for k, v in headers:  # original headers kept
            assert (k, v) in m.headers
    for reason in {r for r, _, _ in MALFORMED}:
        expected = sum(r == reason for r, _, _ in MALFORMED)
        assert metrics.dead_letters.labels(reason=reason)._value.get() == expected


def test_offsets_wait_for_acks_and_a_restart_replays_only_the_unacked_tail(kafka_broker):
    b = kafka_broker
    b.create_topic("audio")
    prod = b.producer()
    for i in range(10):
        send(prod, "audio", pcm("s", i))
    prod.flush()
    src = KafkaSource(config(b), 16000)
    src.open(None)
    chunks = [i for i in drain(src, 10) if isinstance(i, Chunk)]
    assert len(chunks) == 10
    for i in (0, 1, 2, 4, 5):  # 3 is still being worked on
        chunks[i].ack()
    assert wait_for(lambda: committed(b, "audio", "g") == [3], source=src)
    src.poll(0.5)
    assert committed(b, "audio", "g") == [3]  # 4 and 5 are done, but not contiguous
    src.close()
    # the next consumer of the group starts at the first un-acked message
    src2 = KafkaSource(config(b), 16000)
    src2.open(None)
    try:
        again = [i for i in drain(src2, 7) if isinstance(i, Chunk)]
        assert [c.seq for c in again] == list(range(3, 10))
    finally:
        src2.close()


def test_sequence_gaps_and_duplicates_are_counted(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("audio")
    prod = b.producer()
    for seq in (0, 1, 2, 5, 6, 6, 3, 7):
        send(prod, "audio", pcm("s", seq))
    prod.flush()
    metrics = StreamMetrics()
    src = KafkaSource(config(b), 16000, metrics)
    src.open(None)
    try:
        assert len([i for i in drain(src, 8) if isinstance(i, Chunk)]) == 8
    finally:
        src.close()
    assert metrics.stream_events.labels(kind="seq_gap")._value.get() == 1  # 2 -> 5
    assert metrics.stream_events.labels(kind="seq_duplicate")._value.get() == 2  # 6, 3


def test_in_flight_work_is_bounded(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("audio")
    prod = b.producer()
    for i in range(40):
        send(prod, "audio", pcm(f"s{i % 4}", i // 4))
    prod.flush()
    metrics = StreamMetrics()
    src = KafkaSource(config(b, max_in_flight=8, pause_stall_s=60), 16000, metrics)
    src.open(None)
    try:
        got = [i for i in drain(src, 8) if isinstance(i, Chunk)]
        for _ in range(10):
            got += src.poll(0.1)
        assert len(got) == 8 and src.in_flight() == 8  # paused at the bound
        lag = metrics.consumer_lag.labels(topic="audio", partition="0")._value.get()
        assert lag == 32
        for c in got[:5]:
            c.ack()
        more = [i for i in drain(src, 5) if isinstance(i, Chunk)]
        assert [c.seq for c in more] == [2, 2, 2, 2, 3]  # resumed where it paused
    finally:
        src.close()


def test_pause_does_not_deadlock_when_work_waits_for_more_audio(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("audio")
    prod = b.producer()
    for i in range(12):
        send(prod, "audio", pcm("s", i))
    prod.flush()
    src = KafkaSource(config(b, max_in_flight=4, pause_stall_s=0.5), 16000)
    src.open(None)
    try:  # nobody acks: after the stall time the source fetches anyway
        got = [i for i in drain(src, 12, timeout=15) if isinstance(i, Chunk)]
        assert len(got) == 12
    finally:
        src.close()


def test_rebalance_flushes_commits_and_forgets_the_revoked_streams(kafka_broker) -> None:
    b = kafka_broker
    two_streams_on_two_partitions(b, 6)
    calls: list = []
    got: list[Chunk] = []

    def flush() -> None:  # what the pipeline does: write and ack everything handed over
        calls.append("flush")
        for c in got:
            c.ack()

    hooks = PipelineHooks(flush=flush, forget=lambda s: calls.append(("forget", sorted(s))))
    a = KafkaSource(config(b), 16000)
    a.open(hooks)
    second = KafkaSource(config(b), 16000)
    try:
        got += [i for i in drain(a, 12) if isinstance(i, Chunk)]
        assert {c.stream for c in got} == {"p0", "p1"}
        second.open(None)
        poller = Poller(second)  # both must poll for the join to complete
        deadline = time.monotonic() + 60
        # done when both members hold one partition each and the old owner gave its up
        while time.monotonic() < deadline and not (
                len(second._consumer.assignment()) == 1
                and len(a._consumer.assignment()) == 1
                and ("forget", ["p0", "p1"]) in calls):
            a.poll(0.1)
        mine = poller.stop()
        assert poller.error is None
        assert len(second._consumer.assignment()) == 1
        assert len(a._consumer.assignment()) == 1
        assert calls[0] == "flush"
        assert ("forget", ["p0", "p1"]) in calls  # eager protocol: everything was revoked
        # everything the first owner acked was committed on revoke: nothing is re-delivered
        assert committed(b, "audio", "g", 2) == [6, 6]
        for _ in range(5):
            mine += second.poll(0.1)
        assert [i for i in mine if isinstance(i, Chunk)] == []
    finally:
        second.close()
        a.close()


def test_after_a_broker_restart_the_source_rejoins_at_once(kafka_broker) -> None:
    """The join after a restart completes in its first round or two. kafka-python pauses
    heartbeats during a join; the source took that silence for a hung broker and polled for
    0 ms, so the join's answer came while nobody waited for it and was dropped, and the
    consumer re-joined every few seconds for a minute or more."""
    b = kafka_broker
    two_streams_on_two_partitions(b, 4)
    forgotten: list = []
    hooks = PipelineHooks(flush=lambda: None, forget=forgotten.append)
    a = KafkaSource(config(b), 16000)
    a.open(hooks)
    try:
        for c in drain(a, 8):
            if isinstance(c, Chunk):
                c.ack()
        b.stop()
        b.restart()
        assert wait_for(lambda: forgotten, 30, a), "the restart was never noticed"
        # two join rounds (member id, then the join) take about 2 x max_poll_interval_ms
        assert wait_for(lambda: len(a._consumer.assignment()) == 2, 12, a), \
            "not assigned again within 12 s of the revoke"
    finally:
        a.close()


def test_a_failed_flush_on_revoke_surfaces_in_poll_and_streams_are_still_forgotten(
        kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=2)
    prod = b.producer()
    for i in range(4):
        send(prod, "audio", pcm("p0", i), partition=0)
        send(prod, "audio", pcm("p1", i), partition=1)
    prod.flush()
    forgotten: list = []
    got: list[Chunk] = []

    def flush() -> None:  # the sink wrote the first two chunks of each stream, then failed
        for c in got:
            if c.seq < 2:
                c.ack()
        raise SinkError("disk full")

    a = KafkaSource(config(b), 16000)
    a.open(PipelineHooks(flush=flush, forget=forgotten.extend))
    second = KafkaSource(config(b), 16000)
    try:
        got += [i for i in drain(a, 8) if isinstance(i, Chunk)]
        second.open(None)
        poller = Poller(second)
        deadline = time.monotonic() + 60
        with pytest.raises(SinkError, match="disk full"):
            while time.monotonic() < deadline:
                a.poll(0.1)
        poller.stop()
        assert sorted(forgotten) == ["p0", "p1"]
        assert committed(b, "audio", "g", 2) == [2, 2]  # what was written, no more
    finally:
        second.close()
        a.close()


def test_open_fails_with_one_clear_error_without_a_broker() -> None:
    from kafka_broker import free_port

    cfg = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", startup_timeout_s=1.0)
    with pytest.raises(SourceError, match="cannot reach the broker"):
        KafkaSource(cfg, 16000).open(None)


def test_config_checks_and_passthrough() -> None:
    cfg = KafkaConfig.from_dict({"topic": "t", "security_protocol": "SSL",
                                 "client": {"ssl_cafile": "/ca.pem"}}, bootstrap="h:1",
                                group=None)
    assert cfg.dead_letter_topic == "t.dlq" and cfg.group == "audioclust"
    assert cfg.client == {"ssl_cafile": "/ca.pem", "security_protocol": "SSL"}
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        KafkaConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="set by audioclust"):
        KafkaConfig(client={"enable_auto_commit": True})
    with pytest.raises(ValueError, match="must differ"):
        KafkaConfig(topic="a", dead_letter_topic="a")


def test_kafka_sink_writes_json_keyed_by_stream(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("results")
    sink = KafkaSink("results", KafkaConfig(bootstrap=b.bootstrap))
    records = [{"stream": f"s{i % 2}", "seq": i, "cluster": np.int64(i % 3),
                "confidence": np.float32(0.5)} for i in range(6)]
    sink.write(records)
    sink.flush()
    sink.close()
    assert sink.written == 6
    import json

    got = b.read_all("results", 6)
    assert [(m.key.decode(), json.loads(m.value)) for m in got] == [
        (r["stream"], {"stream": r["stream"], "seq": r["seq"], "cluster": int(r["cluster"]),
                       "confidence": 0.5}) for r in records]


def test_kafka_sink_raises_sink_error_when_the_broker_is_gone(kafka_broker) -> None:
    b = kafka_broker
    b.create_topic("results")
    sink = KafkaSink("results", KafkaConfig(bootstrap=b.bootstrap), delivery_timeout_s=2.0)
    b.stop()
    with pytest.raises(SinkError):
        sink.write([{"stream": "s", "seq": 0}])
        sink.flush()
