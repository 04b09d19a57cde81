"""The fleet's cluster registry (:mod:`audioclust.stream.registry`) on a Kafka topic.

One topic per deployment (``cluster_topic``, default ``<group>.clusters``), **one
partition**: its order is the registry's order. Every proposal is one message:

- key: the proposal's origin (a random id per proposing cluster; a resend repeats it);
- value: the centroid, little-endian float32, in the model reference's unit space;
- headers: ``registry-format`` (:data:`FORMAT`), ``model`` (the weights hash),
  ``members``, ``similarity`` and ``radius`` (the proposal's n, m and ρ).

Each instance reads the partition from its start (when it first needs the registry: the
first cluster one of its streams founds), then tails it in a thread, applying every
proposal in log order to its replica (:class:`~audioclust.stream.registry.ClusterRegistry`),
so all replicas agree. A proposer sends its proposal and uses no answer before its replica
has read past the proposal's offset: the answer then is the one every replica gives it.
A message of another model or format stops the service with one line (give each model
its own ``cluster_topic``), as the changelog does.

The topic is **not compacted** but kept whole (``cleanup.policy=delete``,
``retention.ms=-1``, ``retention.bytes=-1``): ids come from the log's order, and
compaction keeps only the last message of a key, so a resent proposal would move its
origin later in the log for an instance that replays it after compaction, which could
then give ids that the others do not. It grows by one small message (4·d bytes plus
headers) per proposal: only clusters of ``PRIOR_WEIGHT`` windows that no registered one
holds are proposed.

The broker away: a proposal gets no answer within :attr:`KafkaClusterRegistry.timeout_s`
and the stream keeps its own id, proposing again (after a backoff) at a later window; the
windows of known sounds keep being found in the replica meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from audioclust.models.reference import NoveltyReference
from audioclust.stream.kafka.config import KafkaConfig, client_options, quiet_kafka_logs
from audioclust.stream.registry import ClusterRegistry, Proposal, RegistryError

__all__ = ["FORMAT", "KafkaClusterRegistry", "decode_proposal", "encode_proposal"]

log = logging.getLogger(__name__)

#: Version of the registry's message layout; others are refused.
FORMAT = 1
#: The topic's settings when it is created here (see the module: kept whole).
TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


def encode_proposal(p: Proposal, model: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the message that carries ``p``."""
    value = np.ascontiguousarray(p.centroid, dtype="<f4").tobytes()
    headers = [("registry-format", str(FORMAT).encode()), ("model", model.encode()),
               ("members", str(int(p.members)).encode()),
               ("similarity", repr(float(p.similarity)).encode()),
               ("radius", repr(float(p.radius)).encode())]
    return p.origin.encode(), value, headers


def decode_proposal(key: bytes | None, value: bytes | None,
                    headers: list[tuple[str, bytes | None]], model: str, dim: int,
                    where: str) -> Proposal:
    """The proposal of one message; RegistryError (one line, starting with ``where``) for
    another format, another model's or a malformed one."""
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers}
    fmt = h.get("registry-format", "")
    if fmt != str(FORMAT):
        raise RegistryError(f"{where}: registry format {fmt[:20] or 'missing'!r}, this code "
                            f"reads {FORMAT}")
    theirs = h.get("model", "")
    if model and theirs != model:
        raise RegistryError(f"{where}: a cluster of another model ({theirs[:12] or '?'}…, "
                            f"this is {model[:12]}…); give this model its own cluster_topic "
                            "(or group)")
    try:
        members, similarity, radius = int(h["members"]), float(h["similarity"]), \
            float(h["radius"])
    except (KeyError, ValueError):
        raise RegistryError(f"{where}: members, similarity or radius header missing or not "
                            "a number") from None
    if not key or value is None or len(value) != 4 * dim or members < 2 \
            or not (-1.0 <= similarity <= 1.0 and -1.0 <= radius <= 1.0):
        raise RegistryError(f"{where}: not a proposal of a {dim}-d cluster")
    centroid = np.frombuffer(value, dtype="<f4").astype(np.float64)
    if not np.isfinite(centroid).all():
        raise RegistryError(f"{where}: the centroid is not finite")
    return Proposal(key.decode("utf-8", "replace"), centroid, members, similarity, radius)


class KafkaClusterRegistry:
    """A replica of the registry of ``config.cluster_topic``, and the proposals sent to it
    (:class:`~audioclust.stream.registry.Registry`). Connects on first use."""

    def __init__(self, config: KafkaConfig, reference: NoveltyReference, model: str):
        quiet_kafka_logs()
        self.config, self.model = config, model
        self.topic = str(config.cluster_topic)
        self.replica = ClusterRegistry(reference)
        self.prior_radius = self.replica.prior_radius
        self.prior_similarity = self.replica.prior_similarity
        #: Longest a proposal waits for its answer (the pipeline's thread waits with it).
        self.timeout_s = min(5.0, config.max_poll_interval_ms / 8000)
        self._tp = TopicPartition(self.topic, 0)
        self._cond = threading.Condition()
        self._position = 0  # next offset the tail reads
        self._error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._backoff = config.backoff()

    # --- the Registry protocol --------------------------------------------------------

    def find(self, unit: np.ndarray) -> int | None:
        if not self._ready():
            return None
        with self._cond:
            return self.replica.find(unit)

    def propose(self, proposal: Proposal) -> int | None:
        if not self._ready() or not self._backoff.ready():
            return None
        key, value, headers = encode_proposal(proposal, self.model)
        deadline = time.monotonic() + self.timeout_s
        try:
            sent = self._producer.send(self.topic, key=key, value=value, headers=headers,
                                       partition=0).get(timeout=self.timeout_s)
        except Exception as exc:  # broker away: no metadata or no acknowledgement
            log.warning("kafka: cluster proposal not sent to %s (%s); retrying in %.1f s",
                        self.topic, exc, self._backoff.failed())
            return None
        with self._cond:
            while self._position <= sent.offset and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._raise()
            rid = self.replica.resolved.get(proposal.origin)
        if rid is None:
            log.warning("kafka: no answer to a cluster proposal from %s within %.1f s; "
                        "retrying in %.1f s", self.topic, self.timeout_s, self._backoff.failed())
            return None
        self._backoff.ok()
        return rid

    def resolved(self) -> dict[str, int]:
        """Every origin read so far, with its registered id (a copy)."""
        with self._cond:
            return dict(self.replica.resolved)

    # --- lifecycle --------------------------------------------------------------------

    def _ready(self) -> bool:
        """Connected and caught up with the log as it was at the start (once); False while
        the broker cannot be reached (tried again after a backoff)."""
        self._raise()
        if self._thread is not None:
            return True
        if not self._backoff.ready():
            return False
        try:
            self._start()
        except RegistryError:
            raise
        except Exception as exc:
            self._close_clients()
            log.warning("kafka: cluster registry %s not reachable (%s); retrying in %.1f s",
                        self.topic, exc, self._backoff.failed())
            return False
        self._backoff.ok()
        return True

    def _start(self) -> None:
        c = self.config
        started = time.monotonic()
        # the pipeline's thread waits for this: a broker away costs timeout_s, not 30 s
        reach = {"bootstrap_timeout_ms": int(self.timeout_s * 1000)}
        self._ensure_topic(reach)
        consumer = KafkaConsumer(bootstrap_servers=c.bootstrap.split(","), group_id=None,
                                 enable_auto_commit=False, fetch_max_wait_ms=100,
                                 **{**reach, **client_options(c.client, "consumer")})
        try:
            consumer.assign([self._tp])
            consumer.seek_to_beginning(self._tp)
            end = consumer.end_offsets([self._tp], timeout_ms=int(c.state_restore_timeout_s
                                                                  * 1000))[self._tp]
            self._producer = KafkaProducer(bootstrap_servers=c.bootstrap.split(","),
                                           acks="all", retries=5, linger_ms=0,
                                           max_block_ms=int(self.timeout_s * 1000),
                                           **{**reach, **client_options(c.client, "producer")})
        except Exception:
            consumer.close(autocommit=False)
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._tail, args=(consumer,), daemon=True,
                                        name="cluster-registry")
        self._thread.start()
        deadline = started + c.state_restore_timeout_s
        with self._cond:
            while self._position < end and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RegistryError(f"kafka: reading the cluster registry {self.topic} "
                                        f"took longer than state_restore_timeout_s "
                                        f"({c.state_restore_timeout_s:g} s)")
                self._cond.wait(left)
            self._raise()
            log.info("kafka: cluster registry %s: %d clusters (%d aliases) read in %.2f s",
                     self.topic, len(self.replica), self.replica.aliases,
                     time.monotonic() - started)

    def _ensure_topic(self, reach: dict[str, int]) -> None:
        c = self.config
        admin = KafkaAdminClient(bootstrap_servers=c.bootstrap.split(","),
                                 **{**reach, **{k: v for k, v in c.client.items()
                                                if k in KafkaAdminClient.DEFAULT_CONFIG}})
        try:
            admin.create_topics([NewTopic(self.topic, 1, -1, topic_configs=TOPIC_CONFIG)])
            log.info("kafka: created the cluster registry topic %s (1 partition, kept whole)",
                     self.topic)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def _tail(self, consumer: Any) -> None:
        """The thread that applies the log to the replica, in order, until close."""
        backoff = self.config.backoff()
        try:
            while not self._stop.is_set():
                try:
                    batches = consumer.poll(timeout_ms=100)
                except Exception as exc:  # the broker away: the replica waits
                    log.warning("kafka: tailing the cluster registry %s: %s", self.topic, exc)
                    self._stop.wait(backoff.failed())
                    continue
                backoff.ok()
                with self._cond:
                    for messages in batches.values():
                        for m in messages:
                            where = f"kafka: cluster registry {self.topic}@{m.offset}"
                            self.replica.apply(decode_proposal(
                                m.key, m.value, m.headers or [], self.model,
                                self.replica.dim, where))
                            self._position = m.offset + 1
                    self._cond.notify_all()
                try:  # past what was read (an empty log, offsets without records)
                    position = consumer.position(self._tp, timeout_ms=1000)
                except Exception:  # asked again after the next poll
                    continue
                with self._cond:
                    self._position = max(self._position, position or 0)
                    self._cond.notify_all()
        except Exception as exc:  # a refused message: every later use raises it
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            consumer.close(autocommit=False)

    def _raise(self) -> None:
        if self._error is not None:
            if isinstance(self._error, RegistryError):
                raise self._error
            raise RegistryError(f"kafka: cluster registry {self.topic}: {self._error}")

    def _close_clients(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:
                log.warning("kafka: closing the cluster registry's producer: %s", exc)
            self._producer = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._close_clients()
