"""Kafka source: a consumer group whose offsets follow the sink, not the fetch.

Each message (format: :mod:`audioclust.stream.kafka.messages`, ``docs/kafka.md``) becomes
one :class:`~audioclust.stream.window.Chunk`. Auto-commit is off: a chunk's ``ack`` (called
by the pipeline once every window it contributes to has been written by the sink) marks its
offset done, and per partition only the contiguous done prefix is committed
(:mod:`audioclust.stream.kafka.offsets`). A crash
therefore replays the uncommitted tail and never skips audio (at-least-once; output records
carry stream and window number so readers can drop duplicates).

Malformed messages go to the dead-letter topic (:mod:`audioclust.stream.kafka.dead_letters`);
their offset counts as done only once the broker has acknowledged the dead letter.

On a rebalance the listener asks the pipeline to flush, commits what is done, and makes the
pipeline forget the streams of the revoked partitions (their half-filled windows would
otherwise be glued to audio that the next owner also processes). Un-acked messages are
bounded (``max_in_flight``): at the bound the pipeline first writes what it can, then
finishes the least recently fed streams (``PipelineHooks.release``) when their held-back
audio is what fills it; only what still waits (dead letters) pauses the partitions.
Broker outages are ridden out: kafka-python reconnects with backoff, our own calls that
fail are retried with exponential backoff, and dead letters that could not be sent are
re-sent.

Stream states follow their streams (``state_changelog``,
:mod:`audioclust.stream.kafka.changelog`):
before every commit (periodic, on revoke, at close) the states the pipeline changed are
written to the changelog topic and acknowledged by the broker, and offsets are committed
only then, so committed offsets never run ahead of saved states; on assignment the states
of the new partitions' streams are read back before any of their audio is handed over,
and on revoke the states of the streams given up are dropped once saved. A stream that
ended is saved as a tombstone, so that compaction removes it from the changelog.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata

from audioclust.stream.continuity import Clocks
from audioclust.stream.kafka.changelog import StateChangelog
from audioclust.stream.kafka.config import (
    FETCH_MAX_WAIT_MS,
    LINGER_MS,
    KafkaConfig,
    client_options,
    quiet_kafka_logs,
)
from audioclust.stream.kafka.dead_letters import DeadLetters
from audioclust.stream.kafka.messages import MessageError, decode_message
from audioclust.stream.kafka.offsets import Ack, Offsets, PartitionOffsets
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.sources import EndOfStream, PipelineHooks, Source, SourceError
from audioclust.stream.state import StateError
from audioclust.stream.window import Chunk

__all__ = ["KafkaSource"]

log = logging.getLogger(__name__)

#: Streams whose last sequence number is remembered (for gap and duplicate checks).
_SEQ_MEMORY = 100_000

#: One turn of consumer.poll() while a group join is pending (see _poll_records).
_JOIN_POLL_MS = 500


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
        self._offsets = Offsets()  # acks may come from any thread
        self._seq = Clocks(memory=_SEQ_MEMORY)  # each stream's sequence numbers
        self._dead_letters: DeadLetters | None = None  # with the producer, at connect
        self._backoff = config.backoff()
        self._paused = False
        self._paused_since = 0.0
        self._acks_at_pause = 0  # self._offsets.acks when fetching paused
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
        self._state_backoff = config.backoff()

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
                # bad settings (kafka-python's own checks too): no retry helps
                if isinstance(exc, ValueError | TypeError | KafkaConfigurationError):
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
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
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
            "linger_ms": LINGER_MS,
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
        self._dead_letters = DeadLetters(producer, c, self.metrics, self._offsets.ack)
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
        if self._dead_letters is not None:
            self._dead_letters.flush(timeout=10.0)
        if self._consumer is not None:
            self._commit(self._offsets.items(), sync=True)
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
        if self._dead_letters is not None:
            self._dead_letters.resend()
        self._flow_control()
        if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
            self._commit(self._offsets.items(), sync=False)
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
            part = self._offsets.partition(tp)  # (fetched before the listener saw it: new)
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
        """consumer.poll(), kept going in long turns while a group (re)join is pending.

        kafka-python 3.0 drops a join that completes while no poll() is waiting for it (the
        next poll sends a fresh JoinGroup and the whole group rebalances again), so a join
        must not straddle the gap between two polls of the pipeline's loop, and a poll
        during a join must wait (never the 0 ms turn of :meth:`_poll_gently`).
        """
        if self._unanswered():
            return self._poll_gently(timeout, max_records)
        records = self._consumer.poll(timeout_ms=max(0, int(timeout * 1000)),
                                      max_records=max_records)
        deadline = time.monotonic() + min(self.config.max_poll_interval_ms / 1000 + 2.0, 30.0)
        while not records and self._rejoining() and time.monotonic() < deadline:
            # long turns: a join that completes in the gap between two polls is lost
            records = self._consumer.poll(timeout_ms=_JOIN_POLL_MS, max_records=max_records)
        return records

    def _unanswered(self) -> bool:
        """A fetch is out and the broker has not answered a heartbeat for two intervals.

        kafka-python 3.0 then busy-loops inside poll(), adding a callback to the hung fetch
        on every turn; they are freed only when it is answered or times out
        (``request_timeout_ms``), which cost about 15 MB of memory per second of a frozen
        broker (measured with bench/soak.py).
        """
        if self._rejoining():
            # kafka-python stops heartbeating for a join's round trip, so the silence says
            # nothing then; and a poll of 0 ms drops the join's answer (see _poll_records)
            return False
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

    def _handle(self, tp: Any, part: PartitionOffsets, m: Any) -> list[Chunk | EndOfStream]:
        self._offsets.fetched(part, m.offset)
        try:
            msg = decode_message(m.value, m.headers, target_rate=self.sample_rate, key=m.key,
                                 max_bytes=self.config.max_message_bytes)
        except MessageError as exc:
            assert self._dead_letters is not None  # made at connect, before any poll
            self._dead_letters.send(tp, part, m, exc)
            return []
        part.streams.add(msg.stream)
        self._check_seq(msg.stream, msg.seq)
        chunk = Chunk(msg.stream, msg.samples, offset=msg.offset, timestamp=msg.timestamp,
                      seq=msg.seq, ack=Ack(self._offsets, part, m.offset))
        if msg.end_of_stream:
            self._seq.forget(msg.stream)  # the id may be reused by a new recording
            return [chunk, EndOfStream(msg.stream)]
        return [chunk]

    def _check_seq(self, stream: str, seq: int) -> None:
        """Count and log a gap or a duplicate in the stream's sequence numbers (the audio's
        own offsets are checked by the windower, by the same rule)."""
        where = self._seq.advance(stream, seq)
        last = where.expected - 1
        if where.kind == "gap":
            self.metrics.stream_events.labels(kind="seq_gap").inc()
            log.warning("kafka: stream %s: seq jumped from %d to %d (%d messages missing)",
                        stream, last, seq, where.missing)
        elif where.kind == "duplicate":
            self.metrics.stream_events.labels(kind="seq_duplicate").inc()
            log.info("kafka: stream %s: seq %d again (last was %d): duplicate",
                     stream, seq, last)

    # -- flow control and lag --------------------------------------------------------

    def in_flight(self) -> int:
        """Messages handed out (or dead-lettered) whose offsets are not done yet."""
        return self._offsets.in_flight()

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
            self._acks_at_pause = self._offsets.acks
            log.info("kafka: %d messages in flight: pausing fetch", n)
        elif self._paused:
            stalled = (self._offsets.acks == self._acks_at_pause
                       and time.monotonic() - self._paused_since > self.config.pause_stall_s)
            if n <= self.config.max_in_flight // 2 or stalled:
                if stalled:
                    log.warning("kafka: %d messages in flight and no ack for %.0f s: resuming "
                                "(dead letters waiting for the broker?)", n,
                                self.config.pause_stall_s)
                self._consumer.resume(*self._consumer.paused())
                self._paused = False

    def _update_lag(self) -> None:
        for tp, part in self._offsets.items():
            high = self._consumer.highwater(tp)
            if high is None or part.next_fetch is None:
                continue
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, high - part.next_fetch))

    # -- commits ---------------------------------------------------------------------

    def _commit(self, parts: list[tuple[Any, PartitionOffsets]], sync: bool) -> bool:
        self._last_commit = time.monotonic()
        offsets = self._offsets.to_commit(parts)
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
            self._offsets.committed(offsets)
            return True

        def done(_offsets: Any, result: Any) -> None:
            if isinstance(result, Exception):
                self.metrics.errors.labels(kind="kafka_commit").inc()
                log.warning("kafka: commit failed (%s); will retry", result)
            else:
                self._offsets.committed(offsets)

        try:
            self._consumer.commit_async(request, callback=done)
        except Exception as exc:
            self.metrics.errors.labels(kind="kafka_commit").inc()
            log.warning("kafka: commit failed (%s); will retry", exc)
            return False
        return True

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
        where = self._offsets.partitions_of(snapshots)
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
        if self._dead_letters is not None:
            self._dead_letters.flush(timeout=min(10.0, self.config.max_poll_interval_ms / 4000))
        parts = self._offsets.items(revoked)
        offsets = self._offsets.to_commit(parts)
        if not self._save_states():  # (at close: only what failed to go before)
            offsets = {}  # the next owner replays from the last commit, with the saved states
            log.warning("kafka: stream states not saved on revoke: offsets not committed")
        if offsets:
            try:
                await self._consumer.commit_async(
                    {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
                self._offsets.committed(offsets)
            except Exception as exc:
                self.metrics.errors.labels(kind="kafka_commit").inc()
                log.warning("kafka: commit on revoke failed (%s); the next owner replays from "
                            "the last commit", exc)
        streams = self._offsets.revoke(parts)
        self._rewind.update(tp for tp, _ in parts)
        if self._dead_letters is not None:
            self._dead_letters.drop_revoked()
        for tp, _ in parts:
            with contextlib.suppress(KeyError):  # never had a lag reading
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for s in streams:
            self._seq.forget(s)
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
        self._offsets.assign(assigned)
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


class _Listener(AsyncConsumerRebalanceListener):
    """Async so that the commit on revoke can be awaited on kafka-python's IO loop."""

    def __init__(self, source: KafkaSource):
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.source._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned(list(assigned))
