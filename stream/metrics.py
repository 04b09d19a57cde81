"""Prometheus metrics and health endpoints of the streaming service.

Every metric lives in the service's own :class:`prometheus_client.CollectorRegistry` (no
process-global state), served by a small HTTP server on ``--metrics-port``, bound to
127.0.0.1 unless told otherwise:

- ``/metrics``: the Prometheus text format;
- ``/healthz``: 200 while the processing loop is alive (it beat within ``stall_seconds``);
- ``/readyz``: 200 while the model is loaded, the loop alive and the source connected (for
  Kafka: the group coordinator known and its connection up), 503 otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["Health", "MetricsServer", "Observer", "RunSummary", "StreamMetrics"]

log = logging.getLogger("audioclust.stream")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StreamMetrics:
    """The service's metrics; names are the contract the dashboards and alerts rely on."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.windows = Counter("audioclust_windows", "Windows processed", ["source"], registry=r)
        self.assignments = Counter("audioclust_assignments", "Windows assigned, by cluster "
                                   "(clusters discovered online: cluster=\"discovered\")",
                                   ["cluster"], registry=r)
        self.novel = Counter("audioclust_novel_windows", "Windows judged novel", registry=r)
        self.novelty = Histogram(
            "audioclust_novelty", "Novelty score of windows: the fraction of the model's "
            "training windows more typical than the window (novel above 1 - alpha)",
            buckets=(0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0), registry=r)
        self.silent = Counter("audioclust_silent_windows", "Windows below the energy gate",
                              registry=r)
        self.drift = Counter("audioclust_drift_events", "ADWIN drift detections", ["signal"],
                             registry=r)
        self.inference_latency = Histogram(
            "audioclust_inference_latency_seconds", "Model run time per batch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "audioclust_end_to_end_latency_seconds",
            "From the window's last sample arriving (or its capture time) to its result "
            "being written", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("audioclust_batch_size", "Windows per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("audioclust_queue_depth", "Windows waiting for inference",
                                 registry=r)
        self.consumer_lag = Gauge("audioclust_consumer_lag", "Kafka messages behind the end "
                                  "of the partition", ["topic", "partition"], registry=r)
        self.dead_letters = Counter("audioclust_dead_letters", "Messages sent to the dead-"
                                    "letter topic, by reason", ["reason"], registry=r)
        self.stream_events = Counter("audioclust_stream_events", "Sequence gaps, duplicates "
                                     "and overlaps seen per stream", ["kind"], registry=r)
        self.mic_overflows = Counter("audioclust_mic_input_overflows", "Microphone input "
                                     "overflows reported by PortAudio", registry=r)
        self.errors = Counter("audioclust_errors", "Recoverable errors by kind", ["kind"],
                              registry=r)
        self.streams_expired = Counter(
            "audioclust_streams_expired", "Streams finished before their end: idle, or to "
            "bound the messages in flight (in_flight); assignment states dropped beyond "
            "assign.max_streams (state_limit)", ["reason"], registry=r)


@dataclass
class RunSummary:
    """What one run did, for its last log line."""

    windows: int = 0
    silent: int = 0
    novel: int = 0
    streams: set[str] = field(default_factory=set)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stopped: bool = False  # ended by a stop request rather than by the source running dry

    def line(self) -> str:
        rtf = self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0
        how = "stopped" if self.stopped else "done"
        return (f"{how}: {self.windows} windows from {len(self.streams)} streams "
                f"({self.silent} silent, {self.novel} novel) in {self.wall_seconds:.1f} s, "
                f"{self.audio_seconds:.1f} s of audio ({rtf:.1f}x real time)")


class Observer:
    """The one place the pipeline reports what it did: each event updates the Prometheus
    metrics and the run summary together (and logs drift)."""

    def __init__(self, metrics: StreamMetrics, summary: RunSummary, source: str,
                 sample_rate: int):
        self.metrics, self.summary = metrics, summary
        self.source, self.sample_rate = source, sample_rate

    def audio(self, samples: int) -> None:
        """A chunk of ``samples`` samples was taken in."""
        self.summary.audio_seconds += samples / self.sample_rate

    def batch(self, size: int, seconds: float) -> None:
        """The model ran one batch of ``size`` windows in ``seconds``."""
        self.metrics.inference_latency.observe(seconds)
        self.metrics.batch_size.observe(size)

    def record(self, rec: Any) -> None:
        """A :class:`~audioclust.stream.records.Record` is about to be written."""
        m, s = self.metrics, self.summary
        m.windows.labels(source=self.source).inc()
        s.windows += 1
        s.streams.add(rec.stream)
        if rec.silent:
            s.silent += 1
            return
        if rec.novel:
            s.novel += 1
            m.novel.inc()
        if rec.novelty is not None:
            m.novelty.observe(rec.novelty)
        if rec.discovered:  # ids keep growing over a long stream: one series for all
            m.assignments.labels(cluster="discovered").inc()
        elif rec.cluster is not None and not rec.novel:
            m.assignments.labels(cluster=str(rec.cluster)).inc()
        for signal in rec.drift:
            m.drift.labels(signal=signal).inc()
            log.info("%s: drift in %s at window %d", rec.stream, signal, rec.seq)

    def written(self, timestamp: float | None, samples: int, silent: bool, arrived: float,
                now: float, now_mono: float) -> None:
        """A window's record was written (flushed) at ``now`` (``now_mono`` on the
        monotonic clock); ``timestamp`` is its capture time, ``arrived`` when it was
        complete in the windower."""
        if silent:
            self.metrics.silent.inc()
        if timestamp is not None:  # capture time known: from the window's last sample
            latency = now - (timestamp + samples / self.sample_rate)
        else:  # from the moment the window was complete in the windower
            latency = now_mono - arrived
        self.metrics.e2e_latency.observe(max(0.0, latency))


class Health:
    """Liveness (the loop beats) and readiness (model loaded, source connected)."""

    def __init__(self, stall_seconds: float = 60.0):
        self.stall_seconds = stall_seconds
        self._beat = time.monotonic()
        self.model_loaded = False
        self._source: Any = None  # asked for ``connected`` at every /readyz
        self._lock = threading.Lock()

    def attach(self, source: Any) -> None:
        """Readiness follows ``source.connected`` from now on (None: not ready)."""
        self._source = source

    def beat(self) -> None:
        with self._lock:
            self._beat = time.monotonic()

    def alive(self) -> bool:
        with self._lock:
            return time.monotonic() - self._beat < self.stall_seconds

    def ready(self) -> bool:
        source = self._source
        return self.model_loaded and source is not None and bool(source.connected) \
            and self.alive()


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread."""

    def __init__(self, metrics: StreamMetrics, health: Health, port: int,
                 host: str = "127.0.0.1"):
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    ok = health.alive()
                    body, status = (b"ok\n", 200) if ok else (b"stalled\n", 503)
                    ctype = "text/plain"
                elif path == "/readyz":
                    ok = health.ready()
                    body, status = (b"ready\n", 200) if ok else (b"not ready\n", 503)
                    ctype = "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                pass  # scrapes every few seconds would flood the service's log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
