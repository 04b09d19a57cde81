"""Malformed messages to the dead-letter topic, so that nothing is lost and nothing stops.

A dead letter carries the original key, bytes (cut to ``dead_letter_max_bytes``) and
headers plus ``dlq-reason`` (a :data:`~audioclust.stream.kafka.messages.REASONS` code),
``dlq-error``, ``dlq-topic``, ``dlq-partition`` and ``dlq-offset`` (``docs/kafka.md``). Its
offset counts as done only once the broker has acknowledged it; one that could not be sent
is sent again after a backoff, unless its partition was revoked meanwhile (the next owner
dead-letters it again).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from audioclust.stream.kafka.config import KafkaConfig
from audioclust.stream.kafka.messages import MessageError
from audioclust.stream.kafka.offsets import PartitionOffsets
from audioclust.stream.metrics import StreamMetrics

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)

_Record = tuple[PartitionOffsets, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


class DeadLetters:
    """Sends dead letters with ``producer``; ``ack(part, offset)`` once the broker has one."""

    def __init__(self, producer: Any, config: KafkaConfig, metrics: StreamMetrics,
                 ack: Callable[[PartitionOffsets, int], None]):
        self.producer = producer
        self.topic = config.dead_letter_topic
        self.max_bytes = config.dead_letter_max_bytes
        self.metrics = metrics
        self._ack = ack
        self._lock = threading.Lock()  # send callbacks run on the producer's thread
        self._retry: deque[_Record] = deque()
        self._backoff = config.backoff()

    def send(self, tp: Any, part: PartitionOffsets, m: Any, exc: MessageError) -> None:
        """Dead-letter message ``m`` of partition ``tp``, refused for ``exc``."""
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
        if value is not None and len(value) > self.max_bytes:
            headers.append(("dlq-original-bytes", str(len(value)).encode()))
            value = value[: self.max_bytes]
        self._send(part, m.offset, m.key, value, headers)

    def _send(self, part: PartitionOffsets, offset: int, key: bytes | None,
              value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        record = (part, offset, key, value, headers)
        try:
            future = self.producer.send(self.topic, key=key, value=value, headers=headers)
        except Exception as exc:  # broker away: metadata unavailable within max_block_ms
            self._failed(record, exc)
            return
        future.add_callback(lambda _meta: self._ack(part, offset))
        future.add_errback(lambda e: self._failed(record, e))

    def _failed(self, record: _Record, exc: Exception) -> None:
        self.metrics.errors.labels(kind="dead_letter").inc()
        log.warning("kafka: dead letter not delivered (%s); will retry", exc)
        with self._lock:
            self._retry.append(record)
        self._backoff.failed()

    def resend(self) -> None:
        """Send again what failed, once the backoff allows (those of live partitions)."""
        if not self._retry or not self._backoff.ready():
            return
        with self._lock:
            pending = [r for r in self._retry if r[0].alive]
            self._retry.clear()
        self._backoff.ok()
        for record in pending:
            self._send(*record)

    def drop_revoked(self) -> None:
        """Forget the failed dead letters of revoked partitions: their next owner
        dead-letters them again."""
        with self._lock:
            self._retry = deque(r for r in self._retry if r[0].alive)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the broker to acknowledge what was sent."""
        try:
            self.producer.flush(timeout=timeout)
        except Exception as exc:
            log.warning("kafka: dead letters not flushed: %s", exc)
