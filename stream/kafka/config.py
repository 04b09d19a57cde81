"""Kafka settings shared by the source, the sink and ``audioclust-produce``.

:class:`KafkaConfig` is the ``[kafka]`` table of ``audioclust-stream``'s settings (and its
``--bootstrap``/``--topic``/``--group``/``--kafka-option`` flags); :func:`client_options`
hands each kafka-python client (consumer, producer, admin) the passthrough settings it
knows, refusing those that would undo at-least-once; :class:`Backoff` spaces our own
retries between ``backoff_min_s`` and ``backoff_max_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.cluster import collect_hosts

from audioclust.models.config import ConfigError, config_from_dict, in_range
from audioclust.stream.kafka.messages import MAX_MESSAGE_BYTES

__all__ = ["FETCH_MAX_WAIT_MS", "LINGER_MS", "Backoff", "KafkaConfig", "client_options",
           "quiet_kafka_logs"]

#: What the source asks of kafka-python unless ``client`` says otherwise: a broker may hold
#: an empty fetch this long before answering, which a live stream pays as latency
#: (kafka-python's 500 ms default tripled p50 on tansu); and a producer batches sends this
#: long.
FETCH_MAX_WAIT_MS = 100
LINGER_MS = 5


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
    #: Give the clusters that streams discover ids the whole group shares, through a
    #: registry topic (:mod:`audioclust.stream.kafka.registry`); off: each stream's own.
    cluster_registry: bool = True
    #: The registry topic (one partition, kept whole, not compacted); None:
    #: ``<group>.clusters``. Created when missing.
    cluster_topic: str | None = None
    #: Settings passed to kafka-python (TLS, SASL, client_id, timeouts, ...).
    client: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap or not self.topic or not self.group:
            raise ConfigError("kafka: bootstrap, topic and group must not be empty")
        if self.dead_letter_topic is None:
            self.dead_letter_topic = f"{self.topic}.dlq"
        if self.dead_letter_topic == self.topic:
            raise ConfigError("kafka: the dead-letter topic must differ from the topic")
        if self.state_topic is None:
            self.state_topic = f"{self.group}.state"
        if self.state_topic in (self.topic, self.dead_letter_topic):
            raise ConfigError("kafka: the state topic must differ from the topic and the "
                              "dead-letter topic")
        if self.cluster_topic is None:
            self.cluster_topic = f"{self.group}.clusters"
        if self.cluster_topic in (self.topic, self.dead_letter_topic, self.state_topic):
            raise ConfigError("kafka: the cluster topic must differ from the topic, the "
                              "dead-letter topic and the state topic")
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
            raise ConfigError(f"kafka: auto_offset_reset must be earliest or latest, got "
                               f"{self.auto_offset_reset!r}")
        if not self.backoff_min_s <= self.backoff_max_s:
            raise ConfigError("kafka: need backoff_min_s <= backoff_max_s")
        check_bootstrap(self.bootstrap)
        client_options(self.client, "consumer")  # unknown keys fail here, not at connect
        # under client, a setting of ours would reach kafka-python past our own checks
        mine = sorted(set(self.client) & {f.name for f in dataclasses.fields(self)})
        if mine:
            raise ConfigError(f"kafka.client.{mine[0]}: a [kafka] setting of its own; set it "
                              "in [kafka], not under client")
        self._check_clients()

    def _check_clients(self) -> None:
        """What kafka-python refuses when it builds its clients (KafkaConfigurationError),
        with the values the source gives them: found at start, whatever the source, not
        at the first connect (where it looked like a broker out of reach)."""
        if not self.heartbeat_interval_ms < self.session_timeout_ms:
            raise ConfigError(f"kafka: heartbeat_interval_ms ({self.heartbeat_interval_ms}) "
                              f"must be less than session_timeout_ms ({self.session_timeout_ms})")
        opts = {**KafkaProducer.DEFAULT_CONFIG, **KafkaConsumer.DEFAULT_CONFIG,
                "fetch_max_wait_ms": FETCH_MAX_WAIT_MS, "linger_ms": LINGER_MS, **self.client}
        names = ("fetch_max_wait_ms", "request_timeout_ms", "connections_max_idle_ms",
                 "linger_ms", "delivery_timeout_ms")
        for name in names:
            value = opts[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"kafka.{name}: expected a whole number of ms >= 0, got "
                                  f"{str(value)[:60]!r}")
        fetch, request, idle, linger, delivery = (opts[n] for n in names)
        if not fetch < request < idle:
            raise ConfigError(f"kafka: need fetch_max_wait_ms ({fetch}) < request_timeout_ms "
                              f"({request}) < connections_max_idle_ms ({idle})")
        if delivery < linger + request:
            raise ConfigError(f"kafka: delivery_timeout_ms ({delivery}) must be at least "
                              f"linger_ms + request_timeout_ms ({linger} + {request})")

    def backoff(self) -> Backoff:
        """A fresh :class:`Backoff` between ``backoff_min_s`` and ``backoff_max_s``."""
        return Backoff(self.backoff_min_s, self.backoff_max_s)

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


def check_bootstrap(bootstrap: str) -> None:
    """ConfigError unless kafka-python reads ``bootstrap`` as a list of host[:port]."""
    for entry in bootstrap.split(","):
        try:
            host, port, _ = collect_hosts([entry], randomize=False)[0]
        except ValueError:
            host, port = "", 0
        if not host or not 0 < port < 65536:
            raise ConfigError(f"kafka.bootstrap: {entry.strip()[:60]!r} in {bootstrap[:100]!r} "
                              "is not HOST[:PORT] (a list is comma-separated; IPv6 as [ADDR]:PORT)")


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



class Backoff:
    """Exponential backoff: each failure doubles the wait (within bounds), success resets it."""

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

