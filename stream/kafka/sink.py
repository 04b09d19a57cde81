"""Kafka sink: one JSON record per window, keyed by stream id, flushed to broker acks.

Keying by stream keeps each stream's results on one partition, in order. ``flush`` returns
only when the broker has acknowledged every record written so far (``acks="all"``), which
is what lets the pipeline acknowledge the source's chunks after it. The producer retries
through short broker outages (up to ``delivery_timeout_ms``); a record that still cannot be
delivered raises :class:`~audioclust.stream.sinks.SinkError`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from audioclust.models.errors import ConfigError
from audioclust.stream.kafka.config import LINGER_MS, KafkaConfig, client_options, quiet_kafka_logs
from audioclust.stream.sinks import Sink, SinkError

__all__ = ["KafkaSink", "encode_record"]

log = logging.getLogger(__name__)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def encode_record(record: dict[str, Any]) -> bytes:
    """A result record as compact UTF-8 JSON (numpy scalars and arrays allowed)."""
    return json.dumps(record, separators=(",", ":"), default=_default,
                      allow_nan=False).encode()


class KafkaSink(Sink):
    """Results to ``topic`` on the cluster that ``config`` names (its TLS/SASL settings too)."""

    def __init__(self, topic: str, config: KafkaConfig, delivery_timeout_s: float = 120.0):
        if not topic:
            raise ConfigError("kafka sink: the topic must not be empty")
        quiet_kafka_logs()
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s
        opts: dict[str, Any] = {
            "acks": "all",
            "linger_ms": LINGER_MS,
            # Retried inside the producer until this long has passed: a broker restart of a
            # few seconds is absorbed here instead of stopping the service.
            "delivery_timeout_ms": int(delivery_timeout_s * 1000),
            "request_timeout_ms": min(10_000, int(delivery_timeout_s * 500)),
            "retries": 2**31 - 1,
            "max_in_flight_requests_per_connection": 1,  # retries must not reorder a stream
            "reconnect_backoff_max_ms": int(config.backoff_max_s * 1000),
            "max_block_ms": int(delivery_timeout_s * 1000),
        }
        opts.update(client_options(config.client, "producer"))
        try:
            self._producer = KafkaProducer(bootstrap_servers=config.bootstrap.split(","), **opts)
        except KafkaError as exc:
            raise SinkError(f"kafka sink: cannot reach {config.bootstrap}: {exc}") from exc
        self._futures: list[Any] = []
        self.written = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            key = str(r.get("stream", "")).encode()
            try:
                self._futures.append(self._producer.send(self.topic, key=key,
                                                         value=encode_record(r)))
            except (KafkaError, ValueError, TypeError) as exc:
                raise SinkError(f"kafka sink: cannot send to {self.topic}: {exc}") from exc

    def flush(self) -> None:
        if not self._futures:
            return
        futures, self._futures = self._futures, []
        try:
            self._producer.flush(timeout=self.delivery_timeout_s)
        except KafkaError as exc:
            raise SinkError(f"kafka sink: records to {self.topic} not acknowledged: {exc}") \
                from exc
        for f in futures:
            if not f.is_done:
                raise SinkError(f"kafka sink: records to {self.topic} not acknowledged within "
                                f"{self.delivery_timeout_s:g} s")
            if f.failed():
                raise SinkError(f"kafka sink: a record to {self.topic} failed: {f.exception}")
        self.written += len(futures)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:  # the broker may be gone at shutdown
                log.warning("kafka sink: close: %s", exc)
