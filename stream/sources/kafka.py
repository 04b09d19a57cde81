"""Kafka source: a consumer group whose offsets follow the sink, not the fetch.

Each message (format: :mod:`audioclust.stream.messages`, ``docs/kafka.md``) becomes one
:class:`~audioclust.stream.window.Chunk`. Auto-commit is off: a chunk's ``ack`` (called by
the pipeline once every window it contributes to has been written by the sink) marks its
offset done, and per partition only the contiguous done prefix is committed. A crash
therefore replays the uncommitted tail and never skips audio (at-least-once; output records
carry stream and window number so readers can drop duplicates).

Malformed messages go to the dead-letter topic with the original key, bytes and headers
plus ``dlq-reason`` (a :data:`~audioclust.stream.messages.REASONS` code) and friends; their
offset counts as done only once the broker has acknowledged the dead letter.

On a rebalance the listener asks the pipeline to flush, commits what is done, and makes the
pipeline forget the streams of the revoked partitions (their half-filled windows would
otherwise be glued to audio that the next owner also processes). Un-acked messages are
bounded (``max_in_flight``): at the bound the pipeline first writes what it can, then
finishes the least recently fed streams (``PipelineHooks.release``) when their held-back
audio is what fills it; only what still waits (dead letters) pauses the partitions.
Broker outages are ridden out: kafka-python reconnects with backoff, our own calls that
fail are retried with exponential backoff, and dead letters that could not be sent are
re-sent.

Stream states follow their streams (``state_changelog``, :mod:`audioclust.stream.changelog`):
before every commit (periodic, on revoke, at close) the states the pipeline changed are
written to the changelog topic and acknowledged by the broker, and offsets are committed
only then, so committed offsets never run ahead of saved states; on assignment the states
of the new partitions' streams are read back before any of their audio is handed over,
and on revoke the states of the streams given up are dropped once saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from audioclust.models.config import ConfigError, config_from_dict
from audioclust.stream.changelog import StateChangelog
from audioclust.stream.config import in_range
from audioclust.stream.messages import MAX_MESSAGE_BYTES, MessageError, decode_message
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.sources import EndOfStream, PipelineHooks, Source, SourceError
from audioclust.stream.state import StateError
from audioclust.stream.window import Chunk

__all__ = ["KafkaConfig", "KafkaSource", "client_options", "quiet_kafka_logs"]

log = logging.getLogger(__name__)


def quiet_kafka_logs() -> None:
    """kafka-python logs every connection and join at INFO; keep its warnings and errors
    only, unless someone configured its logger on purpose."""
    lib = logging.getLogger("kafka")
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.WARNING)


@dataclass
class KafkaConfig:
    """Where to consume from and how; ``client`` passes through to kafka-python.

    ``client`` takes any setting kafka-python's consumer or producer understands, e.g.
    ``security_protocol="SASL_SSL"``, ``sasl_mechanism="SCRAM-SHA-512"``,
    ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_cafile``, ``ssl_certfile``,
    ``ssl_keyfile``, ``client_id``; each client gets the settings it knows.
    """

    bootstrap: str = "localhost:9092"
    topic: str = "audio"
    group: str = "audioclust"
    #: Dead letters go here; None: ``<topic>.dlq``.
    dead_letter_topic: str | None = None
    #: Messages handed to the pipeline but not yet acknowledged; beyond this, fetching pauses.
    max_in_flight: int = 10000
    #: Largest message value accepted (bigger ones are dead-lettered as ``too_large``).
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Dead letters keep at most this many bytes of the original value (the rest is cut and
    #: ``dlq-original-bytes`` says how long it was), so they fit the broker's message limit.
    dead_letter_max_bytes: int = 900_000
    #: Where a group without committed offsets starts: "earliest" or "latest".
    auto_offset_reset: str = "earliest"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    #: Also the rebalance timeout: how long a join waits for the other members.
    max_poll_interval_ms: int = 300_000
    #: Messages handed over per poll: the pipeline processes them before it polls again,
    #: which must happen within max_poll_interval_ms (or the group drops this consumer).
    max_poll_records: int = 100
    #: How often finished offsets are committed (also on rebalance and at close).
    commit_interval_s: float = 1.0
    #: open() keeps trying to reach the broker this long before giving up.
    startup_timeout_s: float = 30.0
    #: Backoff between our own retries (connect, poll errors, dead-letter resends).
    backoff_min_s: float = 0.2
    backoff_max_s: float = 10.0
    #: Paused with in-flight messages but no ack for this long: resume anyway. (Audio held
    #: by streams waiting for more is released at the bound instead of pausing; what can
    #: still pause is dead letters waiting for the broker.)
    pause_stall_s: float = 5.0
    #: Save each stream's state to a changelog topic and restore it where the stream's
    #: partition goes (off: states stay with the instance, as with ``--state``).
    state_changelog: bool = True
    #: The changelog topic (compacted, keyed by stream id, as many partitions as the
    #: input); None: ``<group>.state``. Created when missing.
    state_topic: str | None = None
    #: Longest the restore of newly assigned partitions' states may take (it must also fit
    #: in max_poll_interval_ms).
    state_restore_timeout_s: float = 60.0
    #: Settings passed to kafka-python (TLS, SASL, client_id, timeouts, ...).
    client: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap or not self.topic or not self.group:
            raise ValueError("kafka: bootstrap, topic and group must not be empty")
        if self.dead_letter_topic is None:
            self.dead_letter_topic = f"{self.topic}.dlq"
        if self.dead_letter_topic == self.topic:
            raise ValueError("kafka: the dead-letter topic must differ from the topic")
        if self.state_topic is None:
            self.state_topic = f"{self.group}.state"
        if self.state_topic in (self.topic, self.dead_letter_topic):
            raise ValueError("kafka: the state topic must differ from the topic and the "
                             "dead-letter topic")
        for name, lo, hi in [("max_in_flight", 1, 10_000_000), ("max_poll_records", 1, 100_000),
                             ("max_message_bytes", 1, 1 << 30),
                             ("dead_letter_max_bytes", 1, 1 << 30),
                             ("session_timeout_ms", 1, 86_400_000),
                             ("heartbeat_interval_ms", 1, 86_400_000),
                             ("max_poll_interval_ms", 1, 86_400_000),
                             ("commit_interval_s", 0.001, 3600),
                             ("startup_timeout_s", 0.001, 86_400),
                             ("backoff_min_s", 0.001, 3600), ("backoff_max_s", 0.001, 3600),
                             ("pause_stall_s", 0.001, 3600),
                             ("state_restore_timeout_s", 0.001, 86_400)]:
            in_range(f"kafka.{name}", getattr(self, name), lo, hi)
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"kafka: auto_offset_reset must be earliest or latest, got "
                             f"{self.auto_offset_reset!r}")
        if not self.backoff_min_s <= self.backoff_max_s:
            raise ValueError("kafka: need backoff_min_s <= backoff_max_s")
        client_options(self.client, "consumer")  # unknown keys fail here, not at connect

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None, **overrides: Any) -> KafkaConfig:
        """From a config-file section; ``overrides`` (e.g. CLI flags) win unless None.

        Values are checked against their types; every problem is a one-line
        :class:`~audioclust.models.config.ConfigError` naming the setting.
        """
        if d is not None and not isinstance(d, Mapping):
            raise ConfigError(f"kafka: expected a table, got {type(d).__name__}")
        values = dict(d or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        # kafka-python settings may sit at the top level (security_protocol = "SSL") as
        # well as under ``client``; both end up in ``client``.
        passthrough = set(KafkaConsumer.DEFAULT_CONFIG) | set(KafkaProducer.DEFAULT_CONFIG)
        client = values.get("client") or {}
        if not isinstance(client, Mapping):
            raise ConfigError(f"kafka.client: expected a table, got {type(client).__name__}")
        client = dict(client)
        for k in sorted(set(values) - known):
            if k in passthrough:
                client[k] = values.pop(k)
        if client:
            values["client"] = client
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"kafka: unknown setting {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known))})")
        return config_from_dict(cls, values, "kafka")


# Settings we set ourselves: a passthrough must not silently undo at-least-once.
_RESERVED = {"bootstrap_servers", "group_id", "enable_auto_commit", "key_deserializer",
             "value_deserializer", "key_serializer", "value_serializer"}


def client_options(client: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The subset of ``client`` that a kafka-python ``kind`` ("consumer"/"producer") accepts."""
    consumer_keys = set(KafkaConsumer.DEFAULT_CONFIG)
    producer_keys = set(KafkaProducer.DEFAULT_CONFIG)
    for key, value in client.items():
        if key in _RESERVED:
            raise ConfigError(f"kafka: client setting {key!r} is set by audioclust itself")
        if key not in consumer_keys | producer_keys:
            raise ConfigError(f"kafka: {str(key)[:60]!r} is not a kafka-python client setting")
        default = {**KafkaProducer.DEFAULT_CONFIG, **KafkaConsumer.DEFAULT_CONFIG}[key]
        if not _fits(value, default):
            raise ConfigError(f"kafka.{key}: expected {type(default).__name__} like the "
                              f"default {default!r}, got {str(value)[:60]!r}")
    keys = consumer_keys if kind == "consumer" else producer_keys
    return {k: v for k, v in client.items() if k in keys}


def _fits(value: Any, default: Any) -> bool:
    """Whether a setting's value has the type of kafka-python's default (None: anything)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int | float) and isinstance(value, int | float):
        return isinstance(value, int) or isinstance(default, float)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(default)) if isinstance(default, str | dict) else False


#: Streams whose last sequence number is remembered (for gap and duplicate checks).
_SEQ_MEMORY = 100_000


class _Partition:
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


class _Backoff:
    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.delay = 0.0
        self.next_try = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed(self) -> float:
        self.delay = min(self.hi, max(self.lo, self.delay * 2))
        self.next_try = time.monotonic() + self.delay
        return self.delay

    def ok(self) -> None:
        self.delay, self.next_try = 0.0, 0.0


class KafkaSource(Source):
    """Audio chunks from a Kafka topic, consumed as a group, committed at-least-once."""

    kind = "kafka"

    def __init__(self, config: KafkaConfig, sample_rate: int,
                 metrics: StreamMetrics | None = None):
        quiet_kafka_logs()
        self.config = config
        self.sample_rate = int(sample_rate)
        self.metrics = metrics or StreamMetrics()
        self.hooks: PipelineHooks | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._lock = threading.Lock()  # acks may come from any thread
        self._parts: dict[Any, _Partition] = {}
        self._last_seq: dict[str, int] = {}
        self._dlq_retry: deque[tuple[_Partition, int, bytes | None, bytes | None,
                                     list[tuple[str, bytes]]]] = deque()
        self._dlq_backoff = _Backoff(config.backoff_min_s, config.backoff_max_s)
        self._backoff = _Backoff(config.backoff_min_s, config.backoff_max_s)
        self._paused = False
        self._paused_since = 0.0
        self._acks_seen = 0  # bumps on every ack: progress while paused
        self._acks_at_pause = 0
        self._last_commit = 0.0
        self._closed = False
        self._listener_error: Exception | None = None  # from the rebalance listener
        self._poll_ok = False  # the last poll did not fail
        self._releases = 0  # times streams were finished to stay within max_in_flight
        self._release_logged = -1e9
        self._changelog: StateChangelog | None = None  # stream states (state_changelog)
        self._to_restore: set[Any] = set()  # assigned partitions whose states are not read
        self._rewind: set[Any] = set()  # revoked partitions (their audio was forgotten)
        self._seek_to: set[Any] = set()  # assigned back: read again from the last commit
        self._state_backoff = _Backoff(config.backoff_min_s, config.backoff_max_s)

    # -- lifecycle -------------------------------------------------------------------

    def open(self, hooks: PipelineHooks | None = None) -> None:
        self.hooks = hooks
        deadline = time.monotonic() + self.config.startup_timeout_s
        last: Exception | None = None
        while True:
            try:
                # one attempt may not outlast the deadline (kafka-python waits 30 s by default)
                self._connect(max(1.0, deadline - time.monotonic()))
                return
            except Exception as exc:  # kafka-python raises several kinds while unreachable
                last = exc
                if isinstance(exc, ValueError | TypeError):  # bad settings: no retry helps
                    raise SourceError(f"kafka: {exc}") from exc
                delay = self._backoff.failed()
                if time.monotonic() + delay > deadline:
                    break
                log.warning("kafka: cannot reach %s (%s); retrying in %.1f s",
                            self.config.bootstrap, exc, delay)
                time.sleep(delay)
        raise SourceError(f"kafka: cannot reach the broker at {self.config.bootstrap} within "
                          f"{self.config.startup_timeout_s:g} s ({type(last).__name__}: {last})")

    def _connect(self, bootstrap_timeout_s: float = 10.0) -> None:
        c = self.config
        consumer_opts: dict[str, Any] = {
            "auto_offset_reset": c.auto_offset_reset,
            "session_timeout_ms": c.session_timeout_ms,
            "heartbeat_interval_ms": c.heartbeat_interval_ms,
            "max_poll_interval_ms": c.max_poll_interval_ms,
            "max_poll_records": min(c.max_poll_records, c.max_in_flight),
            # A fetch must be able to carry the largest message we accept (plus framing).
            "max_partition_fetch_bytes": max(1 << 20, c.max_message_bytes + 65536),
            "reconnect_backoff_max_ms": int(c.backoff_max_s * 1000),
            # Find re-created topics (after a broker restart) within seconds, not minutes.
            "metadata_max_age_ms": 10_000,
            # A broker may hold an empty fetch this long before answering, which a live
            # stream pays as latency (kafka-python's 500 ms default tripled p50 on tansu).
            "fetch_max_wait_ms": 100,
        }
        consumer_opts["bootstrap_timeout_ms"] = int(bootstrap_timeout_s * 1000)
        consumer_opts.update(client_options(c.client, "consumer"))
        producer_opts: dict[str, Any] = {
            "acks": "all",
            "retries": 5,
            # Nothing here needs it (dead letters and states are flushed before anything
            # depends on them; a state is sent once per save), and an idempotent producer
            # cannot get a producer id again from a broker that lost its state.
            "enable_idempotence": False,
            "linger_ms": 5,
            # A send while the broker (or a topic's metadata) is away fails fast and is
            # retried; it blocks the pipeline's thread, so it must stay well inside
            # max_poll_interval_ms or the group would drop us on every retry.
            "max_block_ms": min(5_000, c.max_poll_interval_ms // 8),
            "max_request_size": max(1 << 20, c.dead_letter_max_bytes + 65536),
            "reconnect_backoff_max_ms": int(c.backoff_max_s * 1000),
        }
        producer_opts["bootstrap_timeout_ms"] = int(bootstrap_timeout_s * 1000)
        producer_opts.update(client_options(c.client, "producer"))
        consumer = KafkaConsumer(bootstrap_servers=c.bootstrap.split(","), group_id=c.group,
                                 enable_auto_commit=False, **consumer_opts)
        try:
            producer = KafkaProducer(bootstrap_servers=c.bootstrap.split(","), **producer_opts)
        except Exception:
            consumer.close(autocommit=False)
            raise
        if c.state_changelog and self.hooks is not None:
            self._changelog = StateChangelog(c.state_topic, c.bootstrap, producer,
                                             self.hooks.model, c.client,
                                             c.state_restore_timeout_s)
        consumer.subscribe([c.topic], listener=_Listener(self))
        self._consumer, self._producer = consumer, producer
        self._backoff.ok()
        self._poll_ok = True
        log.info("kafka: consuming %s as group %s from %s (dead letters to %s)", c.topic,
                 c.group, c.bootstrap, c.dead_letter_topic)

    @property
    def exhausted(self) -> bool:
        return False  # a topic never ends

    @property
    def connected(self) -> bool:
        """The group coordinator is known, its connection is up and it answered a heartbeat
        within the session timeout (and the last poll did not fail). A broker that is down
        drops the connection at once; one that hangs keeps it open but stops answering."""
        consumer = self._consumer
        if consumer is None or self._closed or not self._poll_ok:
            return False
        try:  # kafka-python keeps this state private; read it without side effects
            coordinator = consumer._coordinator
            node = coordinator.coordinator_id
            return (node is not None and bool(consumer._client.connected(node))
                    and not coordinator.heartbeat.session_timeout_expired())
        except AttributeError:  # another kafka-python: the poll outcome is all we know
            return True

    def close(self) -> None:
        """Commit what is done and leave the group (the pipeline has drained before this)."""
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._flush_dead_letters(timeout=10.0)
        if self._consumer is not None:
            self._commit(list(self._parts.items()), sync=True)
            try:
                self._consumer.close(autocommit=False, timeout_ms=5000)
            except Exception as exc:  # closing while the broker is away must not crash
                log.warning("kafka: closing the consumer: %s", exc)
        if self._changelog is not None:
            self._changelog.close()
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:
                log.warning("kafka: closing the dead-letter producer: %s", exc)

    # -- polling ---------------------------------------------------------------------

    def poll(self, timeout: float) -> list[Chunk | EndOfStream]:
        if self._consumer is None:
            raise SourceError("kafka: poll() before open()")
        self._resend_dead_letters()
        self._flow_control()
        if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
            self._commit(list(self._parts.items()), sync=False)
        try:
            # never fetch past the in-flight bound (pausing alone would overshoot by a batch)
            room = max(1, self.config.max_in_flight - self.in_flight())
            records = self._poll_records(timeout, min(room, self.config.max_poll_records))
        except Exception as exc:  # e.g. auth failure, broker gone mid-request
            if not isinstance(exc, KafkaError | OSError):
                raise
            self._poll_ok = False
            self.metrics.errors.labels(kind="kafka_poll").inc()
            delay = self._backoff.failed()
            log.warning("kafka: poll failed (%s); retrying in %.1f s", exc, delay)
            time.sleep(min(timeout, delay))
            return []
        if self._listener_error is not None:
            exc, self._listener_error = self._listener_error, None
            raise exc
        self._restore_assigned()
        while self._seek_to:
            tp = self._seek_to.pop()
            records.pop(tp, None)  # fetched from the kept position, past forgotten audio
            self._seek_committed(tp)
        self._backoff.ok()
        self._poll_ok = True
        out: list[Chunk | EndOfStream] = []
        for tp, messages in records.items():
            with self._lock:
                part = self._parts.get(tp)
                if part is None:  # fetched before the listener saw the assignment
                    part = self._parts[tp] = _Partition()
            for m in messages:
                out.extend(self._handle(tp, part, m))
        self._update_lag()
        return out

    def _seek_committed(self, tp: Any) -> None:
        """Fetch ``tp`` again from the group's committed offset (none: ``auto_offset_reset``),
        as the first owner of a partition does."""
        try:
            offset = self._consumer.committed(tp)
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif self.config.auto_offset_reset == "earliest":
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        except (KafkaError, ValueError) as exc:  # revoked again meanwhile, broker away
            log.warning("kafka: %s[%d] not read again from the last commit (%s)", tp.topic,
                        tp.partition, exc)

    def _poll_records(self, timeout: float, max_records: int) -> dict:
        """consumer.poll(), kept going back to back while a group (re)join is pending.

        kafka-python 3.0 drops a join that completes while no poll() is waiting for it (the
        next poll sends a fresh JoinGroup and the whole group rebalances again), so a join
        must not straddle the gap between two polls of the pipeline's loop.
        """
        if self._unanswered():
            return self._poll_gently(timeout, max_records)
        records = self._consumer.poll(timeout_ms=max(0, int(timeout * 1000)),
                                      max_records=max_records)
        deadline = time.monotonic() + min(self.config.max_poll_interval_ms / 1000 + 2.0, 30.0)
        while not records and self._rejoining() and time.monotonic() < deadline:
            if self._unanswered():
                return self._poll_gently(0.1, max_records)
            records = self._consumer.poll(timeout_ms=100, max_records=max_records)
        return records

    def _unanswered(self) -> bool:
        """A fetch is out and the broker has not answered a heartbeat for two intervals.

        kafka-python 3.0 then busy-loops inside poll(), adding a callback to the hung fetch
        on every turn; they are freed only when it is answered or times out
        (``request_timeout_ms``), which cost about 15 MB of memory per second of a frozen
        broker (measured with bench/soak.py).
        """
        try:  # private state, read without side effects
            heartbeat = self._consumer._coordinator.heartbeat
            fetching = bool(self._consumer._fetcher._fetch_futures)
        except AttributeError:
            return False
        silent = time.monotonic() - max(heartbeat.last_receive, heartbeat.last_reset)
        return fetching and silent > 2 * self.config.heartbeat_interval_ms / 1000

    def _poll_gently(self, timeout: float, max_records: int) -> dict:
        """One turn of kafka-python's loop (it still heartbeats and notices the broker's
        return), then the rest of ``timeout`` asleep rather than spinning."""
        started = time.monotonic()
        records = self._consumer.poll(timeout_ms=0, max_records=max_records)
        if not records:
            time.sleep(max(0.0, min(timeout, 0.1) - (time.monotonic() - started)))
        return records

    def _rejoining(self) -> bool:
        coordinator = getattr(self._consumer, "_coordinator", None)
        try:
            return bool(coordinator is not None and coordinator.need_rejoin())
        except Exception:  # a private API: if it changes, fall back to plain polling
            return False

    def _handle(self, tp: Any, part: _Partition, m: Any) -> list[Chunk | EndOfStream]:
        with self._lock:
            part.add(m.offset)
        try:
            msg = decode_message(m.value, m.headers, target_rate=self.sample_rate, key=m.key,
                                 max_bytes=self.config.max_message_bytes)
        except MessageError as exc:
            self._dead_letter(tp, part, m, exc)
            return []
        part.streams.add(msg.stream)
        self._check_seq(msg.stream, msg.seq)
        chunk = Chunk(msg.stream, msg.samples, offset=msg.offset, timestamp=msg.timestamp,
                      seq=msg.seq, ack=_Ack(self, part, m.offset))
        if msg.end_of_stream:
            self._last_seq.pop(msg.stream, None)  # the id may be reused by a new recording
            return [chunk, EndOfStream(msg.stream)]
        return [chunk]

    def _ack(self, part: _Partition, offset: int) -> None:
        with self._lock:
            if part.alive:
                part.mark(offset)
            self._acks_seen += 1

    def _check_seq(self, stream: str, seq: int) -> None:
        last = self._last_seq.get(stream)
        if last is not None and seq != last + 1:
            kind = "seq_duplicate" if seq <= last else "seq_gap"
            self.metrics.stream_events.labels(kind=kind).inc()
            if kind == "seq_gap":
                log.warning("kafka: stream %s: seq jumped from %d to %d (%d messages missing)",
                            stream, last, seq, seq - last - 1)
            else:
                log.info("kafka: stream %s: seq %d again (last was %d): duplicate",
                         stream, seq, last)
        self._last_seq.pop(stream, None)  # to the back: recently seen streams stay longest
        self._last_seq[stream] = seq if last is None else max(last, seq)
        if len(self._last_seq) > _SEQ_MEMORY:  # streams that never end must not pile up
            del self._last_seq[next(iter(self._last_seq))]

    # -- flow control and lag --------------------------------------------------------

    def in_flight(self) -> int:
        """Messages handed out (or dead-lettered) whose offsets are not done yet."""
        with self._lock:
            return sum(p.in_flight for p in self._parts.values())

    def _flow_control(self) -> None:
        n = self.in_flight()
        bound = self.config.max_in_flight
        assigned = list(self._consumer.assignment())
        if not self._paused and n >= bound and self.hooks is not None:
            # Write every window that can be written; what is still in flight then is held
            # by streams waiting for more audio of their own, which pausing cannot bring:
            # the least recently fed of them are finished to make room (one producer's
            # flood of streams must not starve the others).
            self.hooks.flush()
            n = self.in_flight()
            if n >= bound:
                held = n
                released = self.hooks.release(n - bound // 2)
                n = self.in_flight()
                self._releases += 1
                if time.monotonic() - self._release_logged >= 10.0:  # at most one line in 10 s
                    self._release_logged = time.monotonic()
                    log.warning("kafka: %d messages in flight held by streams waiting for "
                                "audio: finished the least recently fed (%d chunks acked; %d "
                                "such releases so far; raise max_in_flight above streams x "
                                "(window / chunk + 1))", held, released, self._releases)
        if not self._paused and n >= bound and assigned:
            self._consumer.pause(*assigned)
            self._paused, self._paused_since = True, time.monotonic()
            self._acks_at_pause = self._acks_seen
            log.info("kafka: %d messages in flight: pausing fetch", n)
        elif self._paused:
            stalled = (self._acks_seen == self._acks_at_pause
                       and time.monotonic() - self._paused_since > self.config.pause_stall_s)
            if n <= self.config.max_in_flight // 2 or stalled:
                if stalled:
                    log.warning("kafka: %d messages in flight and no ack for %.0f s: resuming "
                                "(dead letters waiting for the broker?)", n,
                                self.config.pause_stall_s)
                self._consumer.resume(*self._consumer.paused())
                self._paused = False

    def _update_lag(self) -> None:
        for tp, part in list(self._parts.items()):
            high = self._consumer.highwater(tp)
            if high is None or part.next_fetch is None:
                continue
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, high - part.next_fetch))

    # -- commits ---------------------------------------------------------------------

    def _commit(self, parts: list[tuple[Any, _Partition]], sync: bool) -> bool:
        self._last_commit = time.monotonic()
        with self._lock:
            offsets = {tp: p.committable for tp, p in parts
                       if p.committable is not None and p.committable != p.committed}
        if not self._save_states(retrying=not sync):
            return False
        if not offsets:
            return True
        request = {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
        if sync:
            try:
                self._consumer.commit(request, timeout_ms=10_000)
            except Exception as exc:
                self.metrics.errors.labels(kind="kafka_commit").inc()
                log.warning("kafka: commit failed (%s); the next owner replays from the last "
                            "commit", exc)
                return False
            self._committed(offsets)
            return True

        def done(_offsets: Any, result: Any) -> None:
            if isinstance(result, Exception):
                self.metrics.errors.labels(kind="kafka_commit").inc()
                log.warning("kafka: commit failed (%s); will retry", result)
            else:
                self._committed(offsets)

        try:
            self._consumer.commit_async(request, callback=done)
        except Exception as exc:
            self.metrics.errors.labels(kind="kafka_commit").inc()
            log.warning("kafka: commit failed (%s); will retry", exc)
            return False
        return True

    def _committed(self, offsets: Mapping[Any, int]) -> None:
        with self._lock:
            for tp, off in offsets.items():
                p = self._parts.get(tp)
                if p is not None and (p.committed is None or off > p.committed):
                    p.committed = off

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        """What this source last had confirmed as committed, by (topic, partition)."""
        with self._lock:
            return {(tp.topic, tp.partition): p.committed for tp, p in self._parts.items()
                    if p.committed is not None}

    # -- stream states ---------------------------------------------------------------

    def _save_states(self, retrying: bool = False) -> bool:
        """Write the changed streams' states to the changelog and wait for the broker; False
        when they are not all saved (then nothing may be committed). ``retrying``: after a
        failure, wait for the backoff rather than block the loop on every poll."""
        if self._changelog is None or self.hooks is None:
            return True
        if retrying and not self._state_backoff.ready():
            return False
        snapshots = self.hooks.changed()
        if snapshots is None:
            log.error("kafka: a batch failed before its records were written: neither "
                      "states nor offsets are saved any more")
            return False
        with self._lock:
            where = {s: tp.partition for tp, p in self._parts.items()
                     for s in snapshots.keys() & p.streams}
        # bounded well within a rebalance: a save on revoke runs inside the group's join
        timeout = min(10.0, self.config.max_poll_interval_ms / 2000)
        if self._changelog.save({s: (where[s], snap) for s, snap in snapshots.items()
                                 if s in where}, timeout=timeout):
            self._state_backoff.ok()
            return True
        self.metrics.errors.labels(kind="state_save").inc()
        self._state_backoff.failed()
        return False

    def _restore_assigned(self) -> None:
        """Read the states of the newly assigned partitions' streams back into the pipeline,
        before any of their audio is handed over."""
        if not self._to_restore or self._changelog is None or self.hooks is None:
            return
        tps = sorted(self._to_restore, key=lambda tp: tp.partition)
        started = time.monotonic()
        partitions = self._consumer.partitions_for_topic(self.config.topic)
        self._changelog.ensure(len(partitions), max(tp.partition for tp in tps) + 1)
        try:
            states = self._changelog.read([tp.partition for tp in tps])
            n = sum(self.hooks.restore(snaps, f"kafka: state topic "
                                       f"{self.config.state_topic}[{p}]")
                    for p, snaps in states.items())
        except StateError as exc:
            raise SourceError(str(exc)) from exc
        self._to_restore.difference_update(tps)
        log.info("kafka: restored the states of %d streams from %s[%s] in %.2f s", n,
                 self.config.state_topic, ",".join(str(tp.partition) for tp in tps),
                 time.monotonic() - started)

    # -- rebalance -------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[Any]) -> None:
        # kafka-python 3 runs this on its IO thread while the pipeline thread is parked in
        # consumer.poll() (or close()), so calling the pipeline's hooks here is serialised
        # with the pipeline; only the commit must be awaited rather than blocked on.
        if not revoked:
            return
        # Everything handed over must be written (acks fired) before we commit, else the
        # next owner would re-process it; then the streams are forgotten so that no half
        # window mixes our audio with audio the next owner processes.
        if self.hooks is not None and not self._closed:
            try:
                self.hooks.flush()
            except Exception as exc:
                # Raised again from poll() on the pipeline's own thread; here (kafka-python's
                # IO thread) it would only be logged. What was acked is still committed and
                # the streams still forgotten below: acks fire only for written output.
                log.error("kafka: flush before giving partitions up failed: %s", exc)
                self._listener_error = exc
        # inside the group's join: together with the state save below, within its timeout
        self._flush_dead_letters(timeout=min(10.0, self.config.max_poll_interval_ms / 4000))
        with self._lock:
            parts = [(tp, self._parts[tp]) for tp in revoked if tp in self._parts]
            offsets = {tp: p.committable for tp, p in parts
                       if p.committable is not None and p.committable != p.committed}
        if not self._save_states():  # (at close: only what failed to go before)
            offsets = {}  # the next owner replays from the last commit, with the saved states
            log.warning("kafka: stream states not saved on revoke: offsets not committed")
        if offsets:
            try:
                await self._consumer.commit_async(
                    {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
                self._committed(offsets)
            except Exception as exc:
                self.metrics.errors.labels(kind="kafka_commit").inc()
                log.warning("kafka: commit on revoke failed (%s); the next owner replays from "
                            "the last commit", exc)
        streams: set[str] = set()
        with self._lock:
            for tp, p in parts:
                p.alive = False
                streams |= p.streams
                del self._parts[tp]
                self._rewind.add(tp)
            # dead letters of revoked partitions: the next owner dead-letters them again
            self._dlq_retry = deque(r for r in self._dlq_retry if r[0].alive)
        for tp, _ in parts:
            with contextlib.suppress(KeyError):  # never had a lag reading
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for s in streams:
            self._last_seq.pop(s, None)
        self._to_restore.difference_update(revoked)
        for tp in revoked:
            self._seek_to.discard(tp)
        if streams and self.hooks is not None and not self._closed:
            self.hooks.forget(sorted(streams))
            if self._changelog is not None:  # saved above: the next owner restores them
                self._changelog.forget(streams)
                self.hooks.drop(sorted(streams))
        log.info("kafka: partitions revoked: %s (%d streams handed over)",
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked), len(streams))

    def _on_assigned(self, assigned: list[Any]) -> None:
        with self._lock:
            for tp in assigned:
                self._parts.setdefault(tp, _Partition())
        # kafka-python keeps the fetch position of a partition that is revoked and assigned
        # again in one rebalance, but its half-filled windows were forgotten: it is read
        # again from the last commit, as any other next owner would (the seek waits for
        # the pipeline's thread: one inside the listener upsets kafka-python's join).
        rewind, self._rewind = self._rewind, set()
        self._seek_to.update(tp for tp in assigned if tp in rewind)
        if self._changelog is not None:
            self._to_restore.update(assigned)
        log.info("kafka: partitions assigned: %s",
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "none")

    # -- dead letters ----------------------------------------------------------------

    def _dead_letter(self, tp: Any, part: _Partition, m: Any, exc: MessageError) -> None:
        self.metrics.dead_letters.labels(reason=exc.reason).inc()
        log.warning("kafka: %s[%d]@%d to the dead-letter topic: %s", tp.topic, tp.partition,
                    m.offset, exc)
        value = m.value
        headers = [(k, v if v is not None else b"") for k, v in (m.headers or [])]
        headers += [("dlq-reason", exc.reason.encode()),
                    ("dlq-error", str(exc)[:500].encode()),
                    ("dlq-topic", tp.topic.encode()),
                    ("dlq-partition", str(tp.partition).encode()),
                    ("dlq-offset", str(m.offset).encode())]
        if value is not None and len(value) > self.config.dead_letter_max_bytes:
            headers.append(("dlq-original-bytes", str(len(value)).encode()))
            value = value[: self.config.dead_letter_max_bytes]
        self._send_dead_letter(part, m.offset, m.key, value, headers)

    def _send_dead_letter(self, part: _Partition, offset: int, key: bytes | None,
                          value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        record = (part, offset, key, value, headers)
        try:
            future = self._producer.send(self.config.dead_letter_topic, key=key, value=value,
                                         headers=headers)
        except Exception as exc:  # broker away: metadata unavailable within max_block_ms
            self._dlq_failed(record, exc)
            return
        future.add_callback(lambda _meta: self._ack(part, offset))
        future.add_errback(lambda e: self._dlq_failed(record, e))

    def _dlq_failed(self, record: tuple, exc: Exception) -> None:
        self.metrics.errors.labels(kind="dead_letter").inc()
        log.warning("kafka: dead letter not delivered (%s); will retry", exc)
        with self._lock:
            self._dlq_retry.append(record)
        self._dlq_backoff.failed()

    def _resend_dead_letters(self) -> None:
        if not self._dlq_retry or not self._dlq_backoff.ready():
            return
        with self._lock:
            pending = [r for r in self._dlq_retry if r[0].alive]
            self._dlq_retry.clear()
        self._dlq_backoff.ok()
        for record in pending:
            self._send_dead_letter(*record)

    def _flush_dead_letters(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            log.warning("kafka: dead letters not flushed: %s", exc)


class _Ack:
    """A chunk's ack: marks its offset done (idempotent, thread-safe through the source)."""

    __slots__ = ("offset", "part", "source")

    def __init__(self, source: KafkaSource, part: _Partition, offset: int):
        self.source, self.part, self.offset = source, part, offset

    def __call__(self) -> None:
        self.source._ack(self.part, self.offset)


class _Listener(AsyncConsumerRebalanceListener):
    """Async so that the commit on revoke can be awaited on kafka-python's IO loop."""

    def __init__(self, source: KafkaSource):
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.source._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned(list(assigned))
