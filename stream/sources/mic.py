"""Live microphone input (``--source mic``) through PortAudio (sounddevice).

PortAudio calls :meth:`MicSource._callback` on its own thread with each block of
captured audio; the callback only copies the block into a bounded queue and never
blocks (a blocked audio callback loses audio in the driver). When the queue is full the
block is dropped and counted in ``mic_overflows``, and so is every block PortAudio
flags with ``input_overflow``. A dropped block leaves a hole on the stream clock: the
next chunk's offset skips it, so the windower sees a gap rather than audio glued across
it. The device's native rate is converted to the model's with a streaming resampler
(``soxr.ResampleStream``), restarted after a hole.

Capture is 16-bit by default (``mic.dtype``): nearly every device delivers that natively,
so no layer converts it. (Observed with ALSA: asking for float32 from a 16-bit ``file``
PCM through the ``plug`` converter returned scrambled audio after the first periods,
while 16-bit capture was bit-exact.)
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import numpy as np

from audioclust.stream.config import MicConfig
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.sources import EndOfStream, PipelineHooks, Source, SourceError
from audioclust.stream.window import Chunk

__all__ = ["MicSource", "NoInputDevice", "find_input_device"]

log = logging.getLogger("audioclust.stream")


class NoInputDevice(SourceError):
    """No (matching) audio input device: the command exits with its own code."""


def find_input_device(device: str | int | None) -> dict[str, Any]:
    """sounddevice's description of the input ``device`` (None: the default input)."""
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise NoInputDevice(f"cannot load PortAudio ({exc}); install libportaudio2") from exc
    try:
        info = sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        names = [d["name"] for d in sd.query_devices() if d["max_input_channels"] > 0]
        have = ", ".join(repr(n) for n in names) if names else "none"
        what = "no default input device" if device is None else f"no input device {device!r}"
        raise NoInputDevice(f"{what} ({str(exc).splitlines()[0]}); input devices: {have}") \
            from exc
    if info["max_input_channels"] < 1:
        raise NoInputDevice(f"device {info['name']!r} has no input channels")
    return dict(info)


class MicSource(Source):
    """One live stream from an input device, resampled to ``sample_rate``."""

    kind = "mic"

    def __init__(self, sample_rate: int, config: MicConfig | None = None,
                 metrics: StreamMetrics | None = None):
        self.config = config or MicConfig()
        self.sample_rate = sample_rate
        self.metrics = metrics
        # Resolved now so that a missing device fails before the model starts serving.
        self.device = find_input_device(self.config.device)
        self.native_rate = int(self.config.sample_rate or self.device["default_samplerate"])
        self.block = max(1, round(self.config.block_seconds * self.native_rate))
        self.queue: queue.Queue[tuple[np.ndarray, int, float]] = queue.Queue(
            maxsize=self.config.queue_blocks)
        self.overflows = 0
        self._lost = 0  # native frames dropped since the last queued block (callback thread)
        self._native_pos = 0  # native frames captured so far, dropped ones included
        self._clock = 0  # model-rate samples handed over so far, on the stream clock
        self._anchor: float | None = None  # wall time of stream-clock sample 0
        self._resampler: Any = None
        self._stream: Any = None

    @property
    def exhausted(self) -> bool:
        return False  # live input never ends by itself

    def _new_resampler(self) -> Any:
        if self.native_rate == self.sample_rate:
            return None  # bit-exact passthrough
        import soxr

        return soxr.ResampleStream(self.native_rate, self.sample_rate, 1, dtype="float32",
                                   quality="HQ")

    def open(self, hooks: PipelineHooks) -> None:
        import sounddevice as sd

        self._resampler = self._new_resampler()
        try:
            self._stream = sd.InputStream(
                device=self.device["index"], channels=1, samplerate=self.native_rate,
                dtype=self.config.dtype, blocksize=self.block, callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as exc:
            raise SourceError(f"cannot open input device {self.device['name']!r} at "
                              f"{self.native_rate} Hz ({exc})") from exc
        log.info("capturing from %r at %d Hz%s", self.device["name"], self.native_rate,
                 "" if self._resampler is None else f", resampled to {self.sample_rate} Hz")

    def _overflow(self) -> None:
        self.overflows += 1
        if self.metrics is not None:
            self.metrics.mic_overflows.inc()

    def _callback(self, indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
        # PortAudio's thread: copy and hand over, nothing that can block.
        if status.input_overflow:
            self._overflow()
        try:
            self.queue.put_nowait((indata[:, 0].copy(), self._lost, time.time()))
            self._lost = 0
        except queue.Full:
            self._lost += frames
            self._overflow()

    def poll(self, timeout: float) -> list[Chunk | EndOfStream]:
        blocks = []
        try:
            blocks.append(self.queue.get(timeout=timeout))
            while True:
                blocks.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        out: list[Chunk | EndOfStream] = []
        for x, lost, captured in blocks:
            if x.dtype == np.int16:  # the same scaling as soundfile's for 16-bit files
                x = x.astype(np.float32) / 32768.0
            if self._anchor is None:
                self._anchor = captured - x.size / self.native_rate
            if lost:
                out.extend(self._flush_resampler())
                self._native_pos += lost
                # jump the clock over the hole; the windower reports it as a gap
                self._clock = round(self._native_pos * self.sample_rate / self.native_rate)
                self._resampler = self._new_resampler()
            self._native_pos += x.size
            y = x if self._resampler is None else self._resampler.resample_chunk(x)
            out.extend(self._chunk(y))
        return out

    def _chunk(self, y: np.ndarray) -> list[Chunk | EndOfStream]:
        if y.size == 0:  # the resampler is still filling its filter
            return []
        assert self._anchor is not None
        c = Chunk(self.config.stream, np.asarray(y, dtype=np.float32), offset=self._clock,
                  timestamp=self._anchor + self._clock / self.sample_rate)
        self._clock += y.size
        return [c]

    def _flush_resampler(self) -> list[Chunk | EndOfStream]:
        if self._resampler is None:
            return []
        return self._chunk(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.abort()
                self._stream.close()
            finally:
                self._stream = None
        if self.overflows:
            log.warning("%d input overflows (audio dropped)", self.overflows)
