"""The service's loop: source → windows → energy gate → batched ONNX inference → assignment
→ sink → acknowledgements.

One thread does everything, in this order, so that the output of a stream does not depend
on timing: chunks are windowed per stream on the stream's sample clock
(:class:`~audioclust.stream.window.Windower`); complete windows queue in arrival order;
the queue is processed when it holds ``max_batch`` windows, when its oldest entry has
waited ``max_wait`` seconds, when it reaches ``max_queue`` entries (polling pauses
meanwhile: bounded in-flight work), or when the source runs dry. Processing runs the
model over the non-silent windows in batches (across streams), assigns each window in
queue order (so per-stream assignment sees its windows in stream order, however they
were batched), writes one record per window, flushes the sink, and only then calls the
acks of the chunks those windows consumed (at-least-once for sources that commit).

Streams that move between processes (Kafka) take their state with them: between batches
the pipeline hands the source a snapshot of each stream it changed (assigner state plus
the last window written), and a stream restored from a snapshot skips the windows up to
that one (acknowledged, not assigned or written again: the previous owner wrote them
before it saved the snapshot), so its records go on as if it had never moved.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from audioclust.models.errors import ConfigError
from audioclust.models.files import check_writable
from audioclust.models.runtime import ModelInfo, OnnxModel
from audioclust.stream.assign import Assigner, Assignment
from audioclust.stream.config import StreamConfig
from audioclust.stream.gate import EnergyGate
from audioclust.stream.metrics import Health, Observer, RunSummary, StreamMetrics
from audioclust.stream.records import build_record
from audioclust.stream.registry import Registry
from audioclust.stream.sinks import Sink
from audioclust.stream.sources import EndOfStream, PipelineHooks, Source, StreamSnapshot
from audioclust.stream.state import StateError, decode_stream_state, encode_stream_state
from audioclust.stream.window import AckOnly, Chunk, Window, Windower

__all__ = ["AssignerLike", "Pipeline", "RunSummary", "build_assigner", "model_id",
           "window_geometry"]

log = logging.getLogger("audioclust.stream")

#: Longest single poll, so that a stop request is seen quickly even on an idle source.
POLL_SECONDS = 0.1
#: Shortest interval between two log lines about gaps/duplicates of one stream.
EVENT_LOG_SECONDS = 10.0


class AssignerLike(Protocol):
    """What the pipeline needs from an assigner (head-based or head-free)."""

    def process(self, stream: str, embedding: np.ndarray,
                posterior: np.ndarray | None) -> Assignment: ...

    def save(self, path: str | Path) -> Path: ...

    def load(self, path: str | Path) -> int: ...

    def stream_state(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        ...

    def load_stream(self, name: str, arrays: dict[str, np.ndarray], scalars: dict[str, Any],
                    where: str = "") -> None: ...

    def drop_streams(self, names: Iterable[str]) -> None: ...

    #: Stream states dropped so far to stay within ``assign.max_streams``.
    evicted: int


def model_id(model: OnnxModel) -> str:
    """``<file stem>@<first 12 hex of the weights hash>``: names the model in every record."""
    return f"{model.path.stem}@{model.info.weights_sha256[:12]}"


def window_geometry(info: ModelInfo, config: StreamConfig) -> tuple[int, int]:
    """Window and hop in samples: the config's seconds, else the model's; ConfigError for a
    window shorter than the model's minimum (the :class:`Windower` checks the hop)."""
    win_s = config.window_seconds or info.window_seconds
    hop_s = config.hop_seconds or info.hop_seconds
    window, hop = round(win_s * info.sample_rate), round(hop_s * info.sample_rate)
    if window < info.min_samples:
        raise ConfigError(f"window {win_s} s is shorter than the model's minimum "
                          f"{info.min_samples / info.sample_rate:.3f} s")
    return window, hop


def build_assigner(model: OnnxModel, config: StreamConfig,
                   registry: Registry | None = None) -> AssignerLike:
    """The model's head prior and novelty reference feed an :class:`Assigner`; a head-free
    model gets the open-set clusterer (:class:`~audioclust.stream.headfree.HeadFreeAssigner`).
    ``registry``: the fleet's registered clusters (Kafka), for the clusters streams find."""
    info = model.info
    if info.n_clusters == 0:
        from audioclust.stream.headfree import HeadFreeAssigner

        return HeadFreeAssigner(info.reference, config.openset, config.assign,
                                model_id=info.weights_sha256, registry=registry)
    return Assigner(info.prior, info.embedding_dim, config.assign, model_id=info.weights_sha256,
                    reference=info.reference, openset=config.openset, registry=registry)


@dataclass
class _Entry:
    item: Window | AckOnly
    arrived: float  # time.monotonic() when the windower released it
    level: float = 0.0  # RMS dBFS (windows only)
    silent: bool = False
    ends: bool = False  # the stream's end: once processed, its snapshot says it ended


class Pipeline:
    """Runs one source through one model into one sink until the source ends or ``stop``."""

    def __init__(
        self,
        model: OnnxModel,
        source: Source,
        sink: Sink,
        config: StreamConfig | None = None,
        metrics: StreamMetrics | None = None,
        health: Health | None = None,
        assigner: AssignerLike | None = None,
    ):
        self.model, self.source, self.sink = model, source, sink
        self.config = config = config or StreamConfig()
        self.metrics = metrics or StreamMetrics()
        self.health = health or Health(config.stall_seconds)
        self.sample_rate = model.info.sample_rate
        self.window_samples, self.hop_samples = window_geometry(model.info, config)
        self.windower = Windower(self.window_samples, self.hop_samples, self.sample_rate)
        self.gate = EnergyGate(config.silence_dbfs)
        self.assigner = assigner or build_assigner(model, config)
        self.model_name = model_id(model)
        self.queue: list[_Entry] = []
        self.summary = RunSummary()
        self.observer = Observer(self.metrics, self.summary, source.kind, self.sample_rate)
        self._windows_per_stream: dict[str, int] = defaultdict(int)
        # Streams with audio in the windower, least recently fed first, with the idle clock
        # at their last chunk. The idle clock runs only while the source is connected, so a
        # broker outage does not expire every stream at once.
        self._fed: dict[str, float] = {}
        self._idle_clock = 0.0
        self._tick = time.monotonic()
        self._evicted = 0
        self._last_save = time.monotonic()
        self._event_log: dict[tuple[str, str], tuple[float, int]] = {}
        # Per stream: (last window written, ended since), least recently written first and
        # at most assign.max_streams; the streams changed since the last snapshot; and the
        # restored streams whose windows up to this index were written by their last owner.
        self._last_window: dict[str, tuple[int | None, bool]] = {}
        self._changed: set[str] = set()
        self._resume: dict[str, int] = {}
        self._unwritten = False  # a batch changed states but failed before its sink flush
        self.health.model_loaded = True
        if config.state:
            if Path(config.state).exists():
                n = self.assigner.load(config.state)
                log.info("restored the state of %d streams from %s", n, config.state)
            try:  # now, not at the first save minutes into the run
                check_writable(config.state)
            except OSError as exc:
                raise ConfigError(f"{config.state}: cannot write the state file there "
                                  f"({exc.strerror or exc})") from exc

    # --- hooks for sources -----------------------------------------------------------------

    def flush(self) -> None:
        """Process and write everything queued; every ack of those windows has fired."""
        self._process()

    def forget(self, streams: Iterable[str]) -> None:
        """Drop the buffered audio and queued windows of ``streams`` (never acked)."""
        gone = set(streams)
        for s in gone:
            self.windower.drop(s)
            self._drop_stream(s)
        self.queue = [e for e in self.queue if e.item.stream not in gone]
        self.metrics.queue_depth.set(self._queued_windows())
        if gone:
            log.info("forgot %d streams: %s", len(gone), ", ".join(sorted(gone))[:200])

    def changed(self) -> dict[str, StreamSnapshot] | None:
        """Snapshots of the streams changed since the last call (see :class:`StreamSnapshot`);
        between batches they cover exactly the windows already written. None once a batch
        failed before its records were written (the states hold windows the sink lacks)."""
        if self._unwritten:
            return None
        out: dict[str, StreamSnapshot] = {}
        for name in self._changed:
            window, ended = self._last_window.get(name, (None, False))
            state = self.assigner.stream_state(name)
            arrays, scalars = state if state is not None else ({}, {})
            out[name] = StreamSnapshot(encode_stream_state(arrays, scalars), window, ended)
        self._changed.clear()
        return out

    def restore(self, snapshots: Mapping[str, StreamSnapshot], where: str = "") -> int:
        """Put the snapshots' states in place of what is held (a state that does not fit
        the model raises one StateError line, prefixed by ``where``); returns how many."""
        for name, snap in snapshots.items():
            arrays, scalars = decode_stream_state(snap.state)
            if arrays or scalars:
                self.assigner.load_stream(name, arrays, scalars, where)
            else:
                self.assigner.drop_streams([name])
            self._written(name, snap.window, snap.ended)
            self._changed.discard(name)
            if snap.window is not None and not snap.ended:
                self._resume[name] = snap.window
            else:
                self._resume.pop(name, None)
        return len(snapshots)

    def drop(self, streams: Iterable[str]) -> None:
        """Let go of the states of ``streams`` (given up; their snapshots were saved)."""
        gone = list(streams)
        self.assigner.drop_streams(gone)
        for name in gone:
            self._last_window.pop(name, None)
            self._changed.discard(name)
            self._resume.pop(name, None)

    def _written(self, stream: str, window: int | None, ended: bool) -> None:
        self._last_window.pop(stream, None)  # to the back: the most recently written
        self._last_window[stream] = (window, ended)
        self._changed.add(stream)
        while len(self._last_window) > self.config.assign.max_streams:
            oldest = next(iter(self._last_window))
            del self._last_window[oldest]
            self._changed.discard(oldest)

    def release(self, chunks: int) -> int:
        """Finish the least recently fed streams, as if they had ended, until at least
        ``chunks`` of their chunks are acknowledged (a source at its bound of un-acked
        messages asks this when those are all held by streams waiting for more audio).
        Returns how many chunks were acknowledged."""
        released = 0
        while self._fed and released < chunks:
            stream = next(iter(self._fed))
            released += self.windower.pending_acks(stream)
            self._end_stream(stream, expired="in_flight")
        self._process()
        return released

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> RunSummary:
        """Poll until the source is exhausted or ``stop`` is set; then drain, save, close.

        On a stop request the queued windows are still processed, written and acked, but
        streams are not finished: their partial windows stay unacknowledged, so a source
        that commits (Kafka) hands that audio over again after a restart.
        """
        for _ in self.steps(stop):
            pass
        return self.summary

    def steps(self, stop: threading.Event | None = None) -> Iterator[None]:
        """:meth:`run`, one poll at a time: yields after each poll's work (whatever was due
        has been written). Closing the generator early closes the source and the sink
        without saving the state."""
        stop = stop or threading.Event()
        started = time.monotonic()
        clean = False
        try:
            self.source.open(PipelineHooks(flush=self.flush, forget=self.forget,
                                           release=self.release, changed=self.changed,
                                           restore=self.restore, drop=self.drop,
                                           model=self.model.info.weights_sha256))
            self.health.attach(self.source)
            self.health.beat()
            log.info("ready: %s source open, model %s", self.source.kind, self.model_name)
            while not stop.is_set():
                self.health.beat()
                items = self.source.poll(self._poll_timeout())
                for item in items:
                    self._take(item)
                    if len(self.queue) >= self.config.max_queue:
                        self._process()  # bounded: nothing more is taken in until written
                self._expire_idle()
                if self._due():
                    self._process()
                self._maybe_save()
                if not items and self.source.exhausted:
                    break
                yield
            self.summary.stopped = stop.is_set()
            self._process()
            clean = True
        finally:
            self.health.attach(None)
            self.summary.wall_seconds = time.monotonic() - started
            try:
                if clean:
                    self.save_state()
            finally:
                try:
                    self.source.close()
                finally:
                    self.sink.close()

    def save_state(self) -> None:
        """Write the state file now (a failure is a one-line StateError)."""
        if self.config.state:
            self._last_save = time.monotonic()
            try:
                self.assigner.save(self.config.state)
            except OSError as exc:
                raise StateError(f"{self.config.state}: state not saved "
                                 f"({exc.strerror or exc})") from exc

    def _maybe_save(self) -> None:
        if self.config.state and time.monotonic() - self._last_save >= self.config.state_interval:
            try:
                self.save_state()
            except StateError as exc:  # a full disk must not stop the service; retried later
                if not isinstance(exc.__cause__, OSError):
                    raise
                self.metrics.errors.labels(kind="state_save").inc()
                log.error("%s; retrying in %g s", exc, self.config.state_interval)

    def _queued_windows(self) -> int:
        return sum(isinstance(e.item, Window) for e in self.queue)

    def _poll_timeout(self) -> float:
        if not self.queue:
            return POLL_SECONDS
        waited = time.monotonic() - self.queue[0].arrived
        return max(0.0, min(POLL_SECONDS, self.config.max_wait - waited))

    def _due(self) -> bool:
        if not self.queue:
            return False
        if self.source.exhausted or len(self.queue) >= self.config.max_queue:
            return True
        if sum(isinstance(e.item, Window) and not e.silent for e in self.queue) >= \
                self.config.max_batch:
            return True
        return time.monotonic() - self.queue[0].arrived >= self.config.max_wait

    def _take(self, item: Chunk | EndOfStream) -> None:
        if isinstance(item, EndOfStream):
            self._end_stream(item.stream)
            return
        out, events = self.windower.push(item)
        self.observer.audio(np.asarray(item.samples).size)
        for ev in events:
            self.metrics.stream_events.labels(kind=ev.kind).inc()
            self._log_event(ev.stream, ev.kind, ev.detail)
        self._fed.pop(item.stream, None)  # to the back: the most recently fed
        self._fed[item.stream] = self._idle_clock
        self._enqueue(out)

    def _end_stream(self, stream: str, expired: str | None = None) -> None:
        """The stream's tail window (or the acks of its last chunks) joins the queue.

        ``expired`` says why a stream that did not end is finished all the same ("idle",
        "in_flight"): the same rule as an end, its audio acknowledged, counted and logged.
        """
        samples = self.windower.buffered(stream)
        out = self.windower.finish(stream, self.model.info.min_samples)
        if expired is not None:
            self.metrics.streams_expired.labels(reason=expired).inc()
            self._log_event("", f"stream expired ({expired})",
                            f"stream {stream[:60]!r}, {samples} samples buffered")
        elif not any(isinstance(i, Window) for i in out) and \
                not self._windows_per_stream.get(stream):
            # Too short for even one window: say so rather than vanish without a trace.
            self.metrics.errors.labels(kind="too_short").inc()
            log.warning("%s: ended after %d samples, shorter than the model's minimum "
                        "%d: no window", stream, samples, self.model.info.min_samples)
        self._drop_stream(stream)
        self._enqueue(out)
        if expired is None:  # a real end: the next chunk starts a new recording
            self._resume.pop(stream, None)
            self.queue.append(_Entry(AckOnly(stream, []), time.monotonic(), ends=True))

    def _drop_stream(self, stream: str) -> None:
        self._fed.pop(stream, None)
        self._windows_per_stream.pop(stream, None)
        for kind in ("gap", "duplicate", "overlap"):
            self._event_log.pop((stream, kind), None)

    def _enqueue(self, items: list[Window | AckOnly]) -> None:
        now = time.monotonic()
        for it in items:
            if isinstance(it, Window) and it.stream in self._resume:
                if it.index <= self._resume[it.stream]:  # written by the stream's last owner
                    self._windows_per_stream[it.stream] += 1
                    it = AckOnly(it.stream, it.acks)
                else:
                    del self._resume[it.stream]
            entry = _Entry(it, now)
            if isinstance(it, Window):
                self._windows_per_stream[it.stream] += 1
                entry.level, entry.silent = self.gate.measure(it.samples)
            self.queue.append(entry)
        self.metrics.queue_depth.set(self._queued_windows())

    def _expire_idle(self, now: float | None = None) -> None:
        """Finish the streams fed nothing for ``stream_idle_seconds`` of idle clock
        (``now``: a ``time.monotonic()`` reading, by default the current one)."""
        now = time.monotonic() if now is None else now
        if self.source.connected:
            self._idle_clock += now - self._tick
        self._tick = now
        limit = self.config.stream_idle_seconds
        while self._fed:
            stream, fed_at = next(iter(self._fed.items()))
            if self._idle_clock - fed_at < limit:
                break
            self._end_stream(stream, expired="idle")

    def _log_event(self, stream: str, kind: str, detail: str) -> None:
        # At most one line per stream and kind every EVENT_LOG_SECONDS: a flooded
        # microphone queue can gap on every block, and the metric has the full count.
        now = time.monotonic()
        key = (stream, kind)
        last, skipped = self._event_log.get(key, (-math.inf, 0))
        if now - last < EVENT_LOG_SECONDS:
            self._event_log[key] = (last, skipped + 1)
            return
        more = f"; {skipped} more since the last report" if skipped else ""
        log.warning("%s%s (%s%s)", f"{stream}: " if stream else "", kind, detail, more)
        self._event_log[key] = (now, 0)

    def _process(self) -> None:
        """Run, assign, write, flush, then ack everything queued."""
        if not self.queue:
            return
        entries, self.queue = self.queue, []
        todo = [e.item for e in entries if isinstance(e.item, Window) and not e.silent]
        emb, post = self.model.embed([w.samples for w in todo], self.config.max_batch,
                                     self.observer.batch)
        results = {id(w): (emb[i], None if post is None else post[i])
                   for i, w in enumerate(todo)}
        records: list[dict[str, Any]] = []
        self._unwritten = True
        for e in entries:
            w = e.item
            if e.ends:
                self._written(w.stream, self._last_window.get(w.stream, (None, False))[0], True)
            if not isinstance(w, Window):
                continue
            self._written(w.stream, w.index, False)
            if e.silent:
                a = None
            else:
                z, p = results[id(w)]
                a = self.assigner.process(w.stream, z, p)
            rec = build_record(w, e.level, e.silent, a, self.model_name, self.sample_rate)
            self.observer.record(rec)
            records.append(rec.to_dict())
        dropped = self.assigner.evicted - self._evicted
        if dropped:
            self._evicted = self.assigner.evicted
            self.metrics.streams_expired.labels(reason="state_limit").inc(dropped)
        if records:
            self.sink.write(records)
            self.sink.flush()
        self._unwritten = False
        written = time.time()
        written_mono = time.monotonic()
        for e in entries:
            w = e.item
            if isinstance(w, Window):
                self.observer.written(w.timestamp, len(w.samples), e.silent, e.arrived,
                                      written, written_mono)
        for e in entries:  # acks only once the sink holds every record above
            for ack in e.item.acks:
                ack()
        self.metrics.queue_depth.set(self._queued_windows())
        self.health.beat()
