"""Replaying audio files and folders as streams (``--source file PATH...``).

Each file is one stream, named by its path as given on the command line (files found in
a folder: the folder as given joined with the path inside it). Files are decoded with
:func:`~audioclust.models.audio.load_audio`, resampled to the model's rate, and handed
over in chunks (0.25 s by default) through the same windower as live input, so file
replay and a live source give the same windows for the same audio. ``parallel`` files are
replayed side by side, as fast as possible or, with ``realtime``, at the pace of the audio.

A file that cannot be used (missing, corrupt, truncated, NaN samples...) is reported on
stderr in one line, counted in the ``errors`` metric (kind ``bad_file``) and listed in
:attr:`FileSource.failures`; the other files carry on, and the command exits non-zero
at the end, so nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audioclust.models.audio import AudioError, find_audio_files, load_audio
from audioclust.stream.config import FileConfig
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.sources import EndOfStream, Source, SourceError, check_stream_id
from audioclust.stream.window import Chunk

__all__ = ["FileSource", "list_files"]

log = logging.getLogger("audioclust.stream")


def list_files(paths: list[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(stream id, file) for every audio file under ``paths``, in a stable order.

    Raises :class:`SourceError` for a path that does not exist or a folder without audio.
    """
    out: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for given in paths:
        root = Path(given)
        try:
            files = find_audio_files(root)
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from exc
        if not files:
            raise SourceError(f"{root}: no audio files in this folder")
        for f in files:
            name = str(given) if root.is_file() else str(Path(given) / f.relative_to(root))
            base, n = name, 2
            while name in seen:  # the same file given twice is still two streams
                name, n = f"{base}#{n}", n + 1
            problem = check_stream_id(name)
            if problem:
                raise SourceError(f"{f}: {problem} (a stream is named by its path)")
            seen.add(name)
            out.append((name, f))
    return out


@dataclass
class _Playing:
    stream: str
    audio: np.ndarray
    pos: int = 0
    started: float = 0.0  # monotonic time of the first sample (realtime mode)


class FileSource(Source):
    kind = "file"

    """Replays ``paths`` (files and folders) and then ``audio`` (recordings already decoded
    to float32 mono at ``sample_rate``, by stream id: the Python API's arrays)."""

    def __init__(self, paths: list[str | os.PathLike], sample_rate: int,
                 config: FileConfig | None = None, metrics: StreamMetrics | None = None,
                 audio: Mapping[str, np.ndarray] | None = None):
        self.config = config or FileConfig()
        self.sample_rate = sample_rate
        self.metrics = metrics
        self.chunk = max(1, round(self.config.chunk_seconds * sample_rate))
        self.pending: deque[tuple[str, Path | np.ndarray]] = deque(list_files(paths))
        for name, samples in (audio or {}).items():
            problem = check_stream_id(name)
            if problem:
                raise SourceError(f"stream {name!r}: {problem}")
            self.pending.append((name, samples))
        self.total = len(self.pending)
        self.playing: list[_Playing] = []
        self.failures: list[str] = []  # one line per file that could not be replayed
        self.done = 0

    @property
    def exhausted(self) -> bool:
        return not self.pending and not self.playing

    def _fill(self) -> None:
        while len(self.playing) < self.config.parallel and self.pending:
            stream, path = self.pending.popleft()
            try:
                audio = path if isinstance(path, np.ndarray) else \
                    load_audio(path, sr=self.sample_rate)
            except AudioError as exc:
                self._fail(f"{exc}")
                continue
            self.playing.append(_Playing(stream, audio, started=time.monotonic()))

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        self.done += 1
        if self.metrics is not None:
            self.metrics.errors.labels(kind="bad_file").inc()
        # straight to stderr, one line, whatever the logging set-up
        print(f"audioclust-stream: error: {message}; skipped, the other files carry on",
              file=sys.stderr, flush=True)

    def poll(self, timeout: float) -> list[Chunk | EndOfStream]:
        self._fill()
        if not self.playing:
            return []
        if self.config.realtime:
            return self._poll_realtime(timeout)
        out: list[Chunk | EndOfStream] = []
        for p in list(self.playing):  # one chunk of each playing file: they interleave
            out.extend(self._next(p))
        return out

    def _next(self, p: _Playing, now: float | None = None) -> list[Chunk | EndOfStream]:
        lo, hi = p.pos, min(p.pos + self.chunk, p.audio.size)
        stamp = None if now is None else time.time() - (now - (p.started + lo / self.sample_rate))
        out: list[Chunk | EndOfStream] = [Chunk(p.stream, p.audio[lo:hi], offset=lo,
                                                timestamp=stamp)]
        p.pos = hi
        if p.pos >= p.audio.size:
            out.append(EndOfStream(p.stream))
            self.playing.remove(p)
            self.done += 1
        return out

    def _poll_realtime(self, timeout: float) -> list[Chunk | EndOfStream]:
        # A chunk is due once the wall clock has passed the time its last sample would
        # have been captured.
        def due_at(p: _Playing) -> float:
            return p.started + min(p.pos + self.chunk, p.audio.size) / self.sample_rate

        deadline = time.monotonic() + timeout
        out: list[Chunk | EndOfStream] = []
        while not out:
            now = time.monotonic()
            for p in list(self.playing):
                if due_at(p) <= now:
                    out.extend(self._next(p, now))
            if out or not self.playing:
                break
            wait = min(due_at(p) for p in self.playing) - now
            if now + wait > deadline:
                time.sleep(max(0.0, deadline - now))
                break
            time.sleep(max(0.0, wait))
        return out
