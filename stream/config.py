"""Settings of ``audioclust-stream``: typed dataclasses with defaults that work.

Loaded with :func:`load_stream_config`: the defaults, then a TOML/YAML file (``--config``),
then command-line flags. A file looks like::

    sink = "jsonl:out/clusters.jsonl"
    max_batch = 16
    silence_dbfs = -55.0

    [assign]
    prior_momentum = 0.995
    min_confidence = 0.4

    [kafka]            # the Kafka source and sink (audioclust.stream.kafka.config)
    bootstrap = "localhost:9092"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from audioclust.models.config import build_config, in_range
from audioclust.models.errors import ConfigError
from audioclust.stream.assign import AssignConfig
from audioclust.stream.kafka.config import KafkaConfig
from audioclust.stream.openset import OpenSetConfig
from audioclust.stream.sources import check_stream_id
from audioclust.stream.window import check_geometry

__all__ = ["FileConfig", "MicConfig", "OpenSetConfig", "StreamConfig", "load_stream_config"]


#: Upper bounds of the batching settings: beyond them a setting is a typo, not a choice
#: (a batch of 1,024 one-second windows is 64 MB of input alone).
MAX_BATCH = 1024
MAX_QUEUE = 65_536


@dataclass(frozen=True)
class FileConfig:
    """File replay (``--source file``)."""

    #: Audio handed to the windower per chunk, like a live source would.
    chunk_seconds: float = 0.25
    #: Replay at the pace of the audio instead of as fast as possible.
    realtime: bool = False
    #: Files replayed side by side (their windows are batched together).
    parallel: int = 8

    def __post_init__(self) -> None:
        in_range("file.chunk_seconds", self.chunk_seconds, 0, 60, low_open=True)
        in_range("file.parallel", self.parallel, 1, 4096)


@dataclass(frozen=True)
class MicConfig:
    """Microphone capture (``--source mic``)."""

    #: Input device: a name (substring match, as sounddevice does) or an index; None: default.
    device: str | int | None = None
    #: Native-rate frames per PortAudio callback.
    block_seconds: float = 0.1
    #: Callback blocks held while the pipeline is busy; beyond that, blocks are dropped
    #: (counted as overflows) and the windower sees a gap.
    queue_blocks: int = 200
    #: Capture rate; None: the device's default rate (resampled to the model's).
    sample_rate: int | None = None
    #: Stream id in the output records.
    stream: str = "mic"
    #: Sample format asked of PortAudio. 16-bit is what nearly every device delivers
    #: natively, so nothing converts it on the way; "float32" suits 24-bit interfaces.
    dtype: Literal["int16", "float32"] = "int16"

    def __post_init__(self) -> None:
        in_range("mic.block_seconds", self.block_seconds, 0, 10, low_open=True)
        in_range("mic.queue_blocks", self.queue_blocks, 1, 1_000_000)
        if self.sample_rate is not None:
            in_range("mic.sample_rate", self.sample_rate, 1000, 768_000)
        problem = check_stream_id(self.stream)
        if problem:
            raise ConfigError(f"mic.stream: {problem}")


@dataclass(frozen=True)
class StreamConfig:
    """Everything the service needs besides the source's own address."""

    #: ONNX model file, or ``demo`` (the shipped FSDD model); None: the general-audio model
    #: in the user's cache (``audioclust.models.general``).
    model: str | None = None
    #: ``stdout``, ``jsonl:FILE`` or ``kafka:TOPIC``.
    sink: str = "stdout"
    #: Window and hop in seconds; None: the model's metadata.
    window_seconds: float | None = None
    hop_seconds: float | None = None
    #: Windows per inference batch, across streams.
    max_batch: int = 16
    #: Longest a complete window waits for its batch to fill, in seconds.
    max_wait: float = 0.05
    #: Windows held between the source and the sink; at this depth polling stops until
    #: the queue has been processed (bounded in-flight work).
    max_queue: int = 256
    #: Energy gate: windows whose RMS is below this (dBFS, full scale = 1.0) are silent.
    silence_dbfs: float = -50.0
    #: State file (npz): loaded at start, saved every ``state_interval`` s and at shutdown.
    state: str | None = None
    state_interval: float = 30.0
    #: ONNX Runtime execution provider ("auto", "cpu", "cuda") and intra-op threads.
    provider: str = "auto"
    threads: int = 1
    #: Prometheus /metrics, /healthz, /readyz; None: no server.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: /healthz fails when the loop has not beaten for this long.
    stall_seconds: float = 60.0
    #: A stream fed no audio for this long (counted only while the source is connected) is
    #: finished as if it had ended: its tail window is emitted (when it holds the model's
    #: minimum) and its chunks are acknowledged. A later chunk starts it afresh.
    stream_idle_seconds: float = 30.0
    assign: AssignConfig = field(default_factory=AssignConfig)
    #: Clusters discovered online: head-free models, and novel windows of a head model.
    openset: OpenSetConfig = field(default_factory=OpenSetConfig)
    file: FileConfig = field(default_factory=FileConfig)
    mic: MicConfig = field(default_factory=MicConfig)
    #: The Kafka source and sink (checked whatever the source: a typo in ``[kafka]`` should
    #: not wait for the day it is used).
    kafka: KafkaConfig = field(default_factory=KafkaConfig)

    def __post_init__(self) -> None:
        in_range("max_batch", self.max_batch, 1, MAX_BATCH)
        in_range("max_queue", self.max_queue, self.max_batch, MAX_QUEUE)
        in_range("max_wait", self.max_wait, 0, 60)
        in_range("silence_dbfs", self.silence_dbfs, -400, 0)
        in_range("state_interval", self.state_interval, 0, 86_400, low_open=True)
        in_range("stall_seconds", self.stall_seconds, 0, 86_400, low_open=True)
        in_range("stream_idle_seconds", self.stream_idle_seconds, 0, 1e6, low_open=True)
        in_range("threads", self.threads, 0, 1024)
        if self.metrics_port is not None:
            in_range("metrics_port", self.metrics_port, 0, 65_535)
        for name in ("window_seconds", "hop_seconds"):
            value = getattr(self, name)
            if value is not None:
                in_range(name, value, 0, 600, low_open=True)
        if self.window_seconds is not None and self.hop_seconds is not None:
            check_geometry(self.window_seconds, self.hop_seconds, " s")


def load_stream_config(path: str | os.PathLike | None = None,
                       overrides: dict[str, Any] | None = None) -> StreamConfig:
    """Defaults, then ``path`` (TOML/YAML), then ``overrides`` (None values are ignored).

    Nested sections are overridden key by key: ``{"file": {"realtime": True}}`` keeps the
    file's other ``[file]`` settings.
    """
    clean: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        if value is not None:
            clean[key] = value
    return build_config(StreamConfig, path, clean)
