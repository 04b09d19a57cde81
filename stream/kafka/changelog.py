"""Stream state that follows the stream across a consumer group: a compacted changelog topic.

Kafka Streams' state-store pattern. Every instance of a deployment writes, per stream whose
state changed, one message to the changelog topic (default ``<group>.state``):

- key: the stream id (UTF-8), so compaction keeps the latest state of each stream;
- value: the assigner's state in the codec of :mod:`audioclust.stream.state`
  (:class:`~audioclust.stream.sources.StreamSnapshot`);
- headers: ``state-format`` (:data:`FORMAT`), ``model`` (the weights hash), ``window``
  (the last window written, empty when none) and ``ended`` (``1``: the stream ended there).

A stream that ended (its tail window written) gets a tombstone instead (no value, the same
headers), so that compaction removes it: the changelog holds the streams that are going on,
not every stream ever seen. A reader drops a stream at its tombstone.

The changelog is partitioned like the input topic: a stream's state goes to the changelog
partition with the number of the input partition its audio came from, so an instance that
is assigned input partition p restores its streams by reading changelog partition p alone,
from its start to the end offset it had when the restore began (compaction bounds that by
the streams of the partition). A message of another model or format is refused with one
line, as the local state file refuses another model's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from audioclust.stream.sources import SourceError, StreamSnapshot
from audioclust.stream.state import StateError

__all__ = ["FORMAT", "StateChangelog", "decode_entry", "encode_headers"]

log = logging.getLogger(__name__)

#: Version of the changelog message layout (headers and value); others are refused.
FORMAT = 1


def encode_headers(snapshot: StreamSnapshot, model: str) -> list[tuple[str, bytes]]:
    """The headers of a changelog message carrying ``snapshot``."""
    window = b"" if snapshot.window is None else str(snapshot.window).encode()
    return [("state-format", str(FORMAT).encode()), ("model", model.encode()),
            ("window", window), ("ended", b"1" if snapshot.ended else b"0")]


def decode_entry(value: bytes, headers: Iterable[tuple[str, bytes | None]], model: str,
                 where: str) -> StreamSnapshot:
    """The snapshot of one changelog message; StateError (one line, starting with
    ``where``) for another format or another model's state."""
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers}
    fmt = h.get("state-format", "")
    if fmt != str(FORMAT):
        raise StateError(f"{where}: changelog format {fmt[:20] or 'missing'!r}, this code "
                         f"reads {FORMAT}")
    theirs = h.get("model", "")
    if model and theirs and theirs != model:
        raise StateError(f"{where}: state belongs to another model ({theirs[:12]}…, this is "
                         f"{model[:12]}…); give this model its own state_topic (or group)")
    window = h.get("window", "")
    try:
        index = int(window) if window else None
    except ValueError:
        raise StateError(f"{where}: window header {window[:20]!r} is not a number") from None
    return StreamSnapshot(bytes(value), index, h.get("ended") == "1")


class StateChangelog:
    """Writes snapshots to the changelog topic and reads partitions of it back.

    ``producer`` is the source's own (acks=all); ``options`` are the kafka-python client
    settings (TLS, SASL) for the consumer that restores and the admin client that creates
    the topic when it is missing.
    """

    def __init__(self, topic: str, bootstrap: str, producer: Any, model: str,
                 options: Mapping[str, Any], restore_timeout_s: float):
        self.topic, self.bootstrap, self.producer, self.model = topic, bootstrap, producer, model
        self.options = dict(options)
        self.restore_timeout_s = restore_timeout_s
        self._consumer: Any = None
        #: Snapshots sent but not yet acknowledged, or that failed: sent again next time.
        self.unsent: dict[str, tuple[int, StreamSnapshot]] = {}

    # -- writing ---------------------------------------------------------------------

    def save(self, snapshots: Mapping[str, tuple[int, StreamSnapshot]], timeout: float) -> bool:
        """Send ``{stream: (partition, snapshot)}`` (and what failed before) and wait for the
        broker's acknowledgements, ``timeout`` seconds at most in all (plus one send blocked
        on metadata: the producer's ``max_block_ms``); True when all were acknowledged."""
        self.unsent.update(snapshots)
        if not self.unsent:
            return True
        # The last state of each partition goes in a request of its own, after the others
        # were acknowledged: a broker that moves its high watermark by one per batch (tansu
        # does) then still shows a restoring reader every state up to the last.
        last = {partition: stream for stream, (partition, _) in self.unsent.items()}
        rest = [s for s in self.unsent if last[self.unsent[s][0]] != s]
        futures: list[tuple[str, StreamSnapshot, Any]] = []
        deadline = time.monotonic() + timeout  # one budget for both requests
        for group in (rest, list(last.values())):
            for stream in group:
                partition, snap = self.unsent[stream]
                value = None if snap.ended else snap.state  # None: a tombstone
                try:
                    f = self.producer.send(self.topic, key=stream.encode(), value=value,
                                           headers=encode_headers(snap, self.model),
                                           partition=partition)
                except Exception as exc:  # broker away: no metadata within max_block_ms
                    log.warning("kafka: stream states not saved to %s (%s); offsets wait",
                                self.topic, exc)
                    return False
                futures.append((stream, snap, f))
            try:
                self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("kafka: stream states not flushed to %s (%s)", self.topic, exc)
                return False
        ok = True
        for stream, snap, f in futures:
            if f.is_done and f.succeeded():
                if self.unsent.get(stream, (None, None))[1] is snap:
                    del self.unsent[stream]
            else:
                ok = False
                if f.is_done:
                    log.warning("kafka: state of %r not saved to %s (%s); offsets wait",
                                stream[:60], self.topic, f.exception)
        return ok

    def forget(self, streams: Iterable[str]) -> None:
        for s in streams:
            self.unsent.pop(s, None)

    # -- the topic -------------------------------------------------------------------

    def ensure(self, partitions: int, needed: int) -> None:
        """Create the topic (compacted, ``partitions`` partitions) when it is missing; a
        topic with fewer than ``needed`` partitions is a SourceError."""
        self.close()  # a fresh client: metadata cached before a broker lost its topics lies
        consumer = self._restore_consumer()
        have = consumer.partitions_for_topic(self.topic)
        if not have:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(","),
                                     **{k: v for k, v in self.options.items()
                                        if k in KafkaAdminClient.DEFAULT_CONFIG})
            try:
                admin.create_topics([NewTopic(self.topic, partitions, -1,
                                              topic_configs={"cleanup.policy": "compact"})])
                log.info("kafka: created the state topic %s (%d partitions, compacted)",
                         self.topic, partitions)
            except TopicAlreadyExistsError:
                pass
            finally:
                admin.close()
            deadline = time.monotonic() + self.restore_timeout_s
            while not have and time.monotonic() < deadline:
                have = consumer.partitions_for_topic(self.topic)
                if not have:
                    time.sleep(0.1)
        if len(have) < needed:
            raise SourceError(f"kafka: the state topic {self.topic} has {len(have)} "
                              f"partitions, the input topic needs {needed}: add partitions "
                              "to it (or use a new state_topic)")

    # -- reading back ----------------------------------------------------------------

    def read(self, partitions: Iterable[int]) -> dict[int, dict[str, StreamSnapshot]]:
        """The latest snapshot of every stream in these changelog partitions (a tombstone
        removes a stream), read up to their end offsets at the start of the call."""
        consumer = self._restore_consumer()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        out: dict[int, dict[str, StreamSnapshot]] = {tp.partition: {} for tp in tps}
        if not tps:
            return out
        timeout_ms = int(self.restore_timeout_s * 1000)
        consumer.assign(tps)
        try:
            end = consumer.end_offsets(tps, timeout_ms=timeout_ms)
            begin = consumer.beginning_offsets(tps, timeout_ms=timeout_ms)
        except KafkaError as exc:
            raise SourceError(f"kafka: cannot read the offsets of the state topic "
                              f"{self.topic} ({exc})") from exc
        todo = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in todo:
            consumer.seek(tp, begin[tp])
        deadline = time.monotonic() + self.restore_timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise SourceError(f"kafka: restoring stream states from {self.topic} took "
                                  f"longer than state_restore_timeout_s "
                                  f"({self.restore_timeout_s:g} s)")
            for tp, messages in consumer.poll(timeout_ms=200).items():
                latest = out[tp.partition]
                for m in messages:
                    if m.offset >= end[tp] or m.key is None:
                        continue
                    stream = m.key.decode("utf-8", "replace")
                    if m.value is None:
                        latest.pop(stream, None)
                        continue
                    where = f"kafka: state topic {self.topic}[{tp.partition}]@{m.offset}"
                    latest[stream] = decode_entry(m.value, m.headers or [], self.model, where)
            for tp in list(todo):
                if consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        consumer.assign([])
        return out

    def _restore_consumer(self) -> Any:
        if self._consumer is None:
            opts = {k: v for k, v in self.options.items() if k in KafkaConsumer.DEFAULT_CONFIG}
            opts.setdefault("max_partition_fetch_bytes", 16 << 20)
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","),
                                           group_id=None, enable_auto_commit=False,
                                           auto_offset_reset="earliest", **opts)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("kafka: closing the state restore consumer: %s", exc)
            self._consumer = None
