"""The Python API behind ``import audioclust as ac``: a loaded model, its embeddings, its
records, and the service in-process.

Everything runs through the service's own parts: the model is resolved and loaded as
``audioclust-stream`` loads it (:func:`open_model`), audio is cut by the same
:class:`~audioclust.stream.window.Windower`, files are replayed by the same
:class:`~audioclust.stream.sources.file.FileSource`, and every record comes out of the
same :class:`~audioclust.stream.pipeline.Pipeline`, so ``model.stream(path)`` yields the
records ``audioclust-stream --source file path`` writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from audioclust.models.audio import load_audio, prepare_audio
from audioclust.models.errors import DataError
from audioclust.models.runtime import ModelInfo, OnnxModel
from audioclust.stream.config import StreamConfig, load_stream_config
from audioclust.stream.metrics import RunSummary
from audioclust.stream.pipeline import Pipeline, model_id, window_geometry
from audioclust.stream.records import Record
from audioclust.stream.sinks import Sink
from audioclust.stream.sinks.memory import CallbackSink, ListSink
from audioclust.stream.sources import EndOfStream, Source, SourceError
from audioclust.stream.sources.file import FileSource
from audioclust.stream.window import Chunk, recording_windows

__all__ = ["Model", "Stream", "load_model", "open_model"]

Audio = np.ndarray | str | os.PathLike


def open_model(config: StreamConfig) -> OnnxModel:
    """The model of ``config.model`` (None: the general-audio model, ``demo``: the shipped
    one, else a path) on ``config.provider`` with ``config.threads``, as the service opens it."""
    from audioclust.models.general import resolve_model

    return OnnxModel(resolve_model(config.model), provider=config.provider,
                     threads=config.threads)


def load_model(model: str | os.PathLike | None = None, *,
               config: str | os.PathLike | None = None, **settings: Any) -> Model:
    """A loaded model: ``model`` None is the default of ``audioclust-stream`` (the
    general-audio model), ``"demo"`` the shipped FSDD digits model, else an exported
    ``.onnx`` file. ``config`` is a TOML/YAML settings file and ``settings`` are
    :class:`~audioclust.stream.config.StreamConfig` fields (``silence_dbfs=-45``,
    ``assign={"min_confidence": 0.5}``...), as ``audioclust-stream`` takes them."""
    overrides = {**settings, "model": None if model is None else str(model)}
    cfg = load_stream_config(config, overrides)
    return Model(open_model(cfg), cfg)


class Model:
    """An exported audioclust model with the service's settings (:func:`load_model`)."""

    def __init__(self, onnx: OnnxModel, config: StreamConfig | None = None):
        self.onnx = onnx
        self.config = config or StreamConfig()
        #: Window and hop in samples at :attr:`sample_rate`, as the service cuts streams.
        self.window_samples, self.hop_samples = window_geometry(onnx.info, self.config)

    @property
    def info(self) -> ModelInfo:
        """The model's metadata (rate, window, clusters, prior, encoder...)."""
        return self.onnx.info

    @property
    def sample_rate(self) -> int:
        return self.onnx.info.sample_rate

    @property
    def name(self) -> str:
        """The model's name in every record (``model``)."""
        return model_id(self.onnx)

    def __repr__(self) -> str:
        k = self.info.n_clusters or "head-free"
        return f"Model({self.name}, {self.sample_rate} Hz, {k} clusters)"

    def _audio(self, wave: Audio, sample_rate: int | None) -> np.ndarray:
        if isinstance(wave, str | os.PathLike):
            return load_audio(wave, sr=self.sample_rate)
        return prepare_audio(wave, sample_rate or self.sample_rate, self.sample_rate)

    def embed(self, wave: Audio, sample_rate: int | None = None) -> np.ndarray:
        """Embeddings (n_windows, d) of a recording: mono or (samples, channels) at
        ``sample_rate`` (None: the model's), or an audio file. The windows are those the
        service cuts from a stream of this recording: full windows every hop, then the
        tail window."""
        audio = self._audio(wave, sample_rate)
        windows = recording_windows(audio, self.window_samples, self.hop_samples,
                                    self.sample_rate, self.info.min_samples)
        if not windows:
            raise DataError(f"{audio.size} samples at {self.sample_rate} Hz is shorter than "
                            f"the model's minimum of {self.info.min_samples}")
        return self.onnx.embed(windows, self.config.max_batch)[0]

    def stream(self, source: Audio | Iterable[str | os.PathLike], sample_rate: int | None = None,
               *, name: str = "audio", state: str | os.PathLike | None = None,
               ) -> Iterator[Record]:
        """The records of ``audioclust-stream --source file`` on ``source``, as they are
        written: a file or folder (one stream per file, named by its path), a list of
        them, or samples at ``sample_rate`` (one stream called ``name``). ``state``: a
        state file to restore from and save to, like ``--state``. A file that cannot be
        read is skipped with a line on stderr and a :class:`SourceError` at the end."""
        cfg = self.config if state is None else dataclasses.replace(self.config,
                                                                    state=str(state))
        if isinstance(source, np.ndarray):
            files = FileSource([], self.sample_rate, cfg.file,
                               audio={name: self._audio(source, sample_rate)})
        else:
            paths = [source] if isinstance(source, str | os.PathLike) else list(source)
            files = FileSource(paths, self.sample_rate, cfg.file)
        written: list[Record] = []
        steps = Pipeline(self.onnx, files, CallbackSink(written.append), cfg).steps()
        try:
            for _ in steps:
                yield from written
                written.clear()
        finally:
            steps.close()
        yield from written
        if files.failures:
            raise SourceError(f"{len(files.failures)} of {files.total} files could not be "
                              f"read: {files.failures[0]}")


class _Fed(Source):
    """The chunks a :class:`Stream` is fed, handed to its pipeline at the next poll."""

    kind = "python"

    def __init__(self) -> None:
        self.items: deque[Chunk | EndOfStream] = deque()
        self.closed = False

    def poll(self, timeout: float) -> list[Chunk | EndOfStream]:
        out = list(self.items)
        self.items.clear()
        return out

    @property
    def exhausted(self) -> bool:
        return self.closed and not self.items


class Stream:
    """The streaming service in-process: :meth:`feed` chunks of any number of streams,
    get their records in ``sink`` (default: an ``ac.sinks.List``) as each chunk completes
    windows; :meth:`end` a stream for its tail window; :meth:`close` at the end (or use
    ``with``). ``state``: a state file restored at start and saved by :meth:`save`, every
    ``state_interval`` seconds and at :meth:`close`, like ``--state``.
    """

    def __init__(self, model: Model, sink: Sink | None = None,
                 state: str | os.PathLike | None = None):
        self.model = model
        self.sink = sink if sink is not None else ListSink()
        cfg = model.config if state is None else dataclasses.replace(model.config,
                                                                     state=str(state))
        self._source = _Fed()
        #: The service's pipeline this stream feeds (its ``metrics``, ``summary``...).
        self.pipeline = Pipeline(model.onnx, self._source, self.sink, cfg)
        self._steps = self.pipeline.steps()
        self._resamplers: dict[str, Any] = {}
        self._open: dict[str, None] = {}  # streams fed and not ended, in order
        self._summary: RunSummary | None = None
        next(self._steps)  # opens the pipeline

    @property
    def records(self) -> list[Record]:
        """The records written so far, with the default ``List`` sink."""
        if not isinstance(self.sink, ListSink):
            raise AttributeError("records is kept by the List sink; this stream writes to "
                                 f"{type(self.sink).__name__}")
        return self.sink.records

    def _step(self) -> None:
        if self._summary is not None:
            raise RuntimeError("this stream is closed")
        next(self._steps)
        self.pipeline.flush()

    def feed(self, samples: np.ndarray, stream: str = "default",
             sample_rate: int | None = None, timestamp: float | None = None) -> None:
        """Take in the next chunk of ``stream`` (mono or (samples, channels) at
        ``sample_rate``, None: the model's; ``timestamp``: capture time of its first sample,
        unix seconds) and write the records of every window it completes."""
        sr = self.model.sample_rate
        rate = sample_rate or sr
        x = prepare_audio(samples, rate, rate, f"stream {stream!r}")
        if rate != sr:
            x = self._resampler(stream, rate).resample_chunk(x)
        self._source.items.append(Chunk(stream, x, timestamp=timestamp))
        self._open[stream] = None
        self._step()

    def _resampler(self, stream: str, rate: int) -> Any:
        import soxr

        have = self._resamplers.get(stream)
        if have is None or have[0] != rate:
            have = (rate, soxr.ResampleStream(rate, self.model.sample_rate, 1,
                                              dtype="float32", quality="HQ"))
            self._resamplers[stream] = have
        return have[1]

    def end(self, stream: str = "default") -> None:
        """``stream`` has ended: write its tail window; a later chunk starts it afresh."""
        self._end(stream)
        self._step()

    def _end(self, stream: str) -> None:
        self._open.pop(stream, None)
        have = self._resamplers.pop(stream, None)
        if have is not None:
            rest = have[1].resample_chunk(np.zeros(0, np.float32), last=True)
            if rest.size:
                self._source.items.append(Chunk(stream, rest))
        self._source.items.append(EndOfStream(stream))

    def save(self) -> None:
        """Write the state file now."""
        self.pipeline.save_state()

    def close(self) -> RunSummary:
        """End every stream still open, save the state, close the sink; returns the
        run's summary."""
        if self._summary is None:
            for stream in list(self._open):
                self._end(stream)
            self._source.closed = True
            for _ in self._steps:
                pass
            self._summary = self.pipeline.summary
        return self._summary

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._summary is None:  # an error: close the sink, save nothing
            self._steps.close()
            self._summary = self.pipeline.summary
