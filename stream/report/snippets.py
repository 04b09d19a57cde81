"""Listening to a cluster: which windows to play, cut from the audio the records came from.

:func:`choose` picks a cluster's snippets: first the most confident windows (what the
cluster is at its clearest), then a spread over streams and time among its more confident
half (what else it holds), never two overlapping windows of one stream. :class:`AudioFile`
reads just the samples of a window from a file of any length (libsndfile seeks), and
:func:`encode` turns them into a playable clip (Ogg Vorbis, about 5 KB per second; FLAC
where libsndfile has no Vorbis) and a spectrogram thumbnail (an indexed PNG).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclust.models.audio import AudioError, to_mono_float

__all__ = ["AudioFile", "Candidate", "Clip", "choose", "encode", "png_indexed"]


@dataclass(frozen=True)
class Candidate:
    """A window that may be played: where it is and how sure the assignment was."""

    stream: str
    start: float
    end: float
    score: float  # higher first: the confidence (or, for novel windows, the novelty)


def _near(a: Candidate, b: Candidate, gap: float) -> bool:
    """Same stream, and less than ``gap`` window lengths apart (0: overlapping)."""
    margin = gap * (a.end - a.start)
    return a.stream == b.stream and a.start < b.end + margin and b.start < a.end + margin


def choose(candidates: list[Candidate], k: int,
           durations: dict[str, float]) -> list[tuple[Candidate, str]]:
    """Up to ``k`` windows, each with why it was chosen: ⌈k/2⌉ highest scores ("best"),
    then a spread over streams and time ("spread").

    The spread picks, among candidates scoring at least the median, the one farthest from
    every pick so far: a stream not yet heard counts as farthest; within a stream, the
    distance is the time to the nearest pick as a fraction of the stream's duration.
    Picks keep a window's length apart on a stream (adjacent windows are mostly the same
    sound); where that leaves fewer than ``k``, the rest only must not overlap.
    """
    if k <= 0 or not candidates:
        return []
    ranked = sorted(candidates, key=lambda c: (-c.score, c.stream, c.start))
    median = float(np.median([c.score for c in candidates]))
    pool = [c for c in ranked if c.score >= median]
    picks: list[Candidate] = []
    why: list[str] = []
    for gap in (1.0, 0.0):
        for c in ranked:
            if len(picks) >= math.ceil(k / 2):
                break
            if not any(_near(c, p, gap) for p in picks):
                picks.append(c)
                why.append("best")
        while len(picks) < k:
            far = _farthest(pool, picks, durations, gap)
            if far is None:
                break
            picks.append(far)
            why.append("spread")
    return list(zip(picks, why, strict=True))


def _farthest(pool: list[Candidate], picks: list[Candidate], durations: dict[str, float],
              gap: float) -> Candidate | None:
    best, best_key = None, None
    for c in pool:
        if any(_near(c, p, gap) for p in picks):
            continue
        same = [p for p in picks if p.stream == c.stream]
        if same:
            span = max(durations.get(c.stream, 0.0), c.end, 1e-9)
            distance = min(abs(c.start - p.start) for p in same) / span
        else:
            distance = 2.0  # a stream not heard yet beats any distance within one
        key = (distance, c.score)
        if best_key is None or key > best_key:
            best, best_key = c, key
    return best


class AudioFile:
    """An audio file read a window at a time; opening it checks that it can be read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise AudioError(self.path, "no such file")
        if self.path.is_dir():
            raise AudioError(self.path, "is a folder, not an audio file")
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as exc:
            raise AudioError(self.path, f"not readable as audio ({exc})") from exc
        if info.frames <= 0:
            raise AudioError(self.path, "contains no samples")
        self.sample_rate = int(info.samplerate)
        self.frames = int(info.frames)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def read(self, start: float, end: float) -> np.ndarray:
        """Mono float32 samples of [start, end) seconds (clipped to the file)."""
        lo = max(0, round(start * self.sample_rate))
        hi = min(self.frames, round(end * self.sample_rate))
        if hi <= lo:
            raise AudioError(self.path, f"{start:.2f}-{end:.2f} s is past its end "
                             f"({self.duration:.2f} s)")
        try:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(lo)
                x = f.read(hi - lo, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(self.path, f"cannot read {start:.2f}-{end:.2f} s ({exc})") from exc
        x = to_mono_float(x)
        if x.size == 0:
            raise AudioError(self.path, f"no samples at {start:.2f}-{end:.2f} s (truncated?)")
        if not np.isfinite(x).all():
            raise AudioError(self.path, f"NaN or infinite samples at {start:.2f}-{end:.2f} s")
        return x


@dataclass(frozen=True)
class Clip:
    """A snippet ready for the page: encoded audio and its spectrogram thumbnail."""

    audio: bytes
    mime: str
    image: bytes  # PNG
    seconds: float


_HAS_VORBIS = "VORBIS" in sf.available_subtypes("OGG")
#: Peak level snippets are brought to, and the most gain that may take (quiet windows stay
#: quiet rather than becoming hiss).
_PEAK = 10 ** (-1 / 20)
_MAX_GAIN = 10 ** (30 / 20)


def encode(x: np.ndarray, sample_rate: int, width: int = 180, height: int = 72) -> Clip:
    """A playable clip of ``x`` (peak-normalised, 5 ms fades) and its spectrogram."""
    x = np.asarray(x, dtype=np.float32)
    y = x.copy()
    fade = min(y.size // 2, round(0.005 * sample_rate))
    if fade > 0:  # a window cut mid-sound would click
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0:
        y *= min(_MAX_GAIN, _PEAK / peak)
    # Chromium's Vorbis decoder drops up to a packet (~8 ms here) at the end of a stream:
    # a little silence after the sound keeps the end of the sound.
    y = np.concatenate([y, np.zeros(round(0.025 * sample_rate), np.float32)])
    buf = io.BytesIO()
    # Ogg Vorbis at the file's own rate: ~5 KB per second of sound; libsndfile's Opus
    # writer would be half the size but took 5x as long per snippet here.
    if _HAS_VORBIS:
        sf.write(buf, y, sample_rate, format="OGG", subtype="VORBIS")
        mime = "audio/ogg"
    else:
        sf.write(buf, y, sample_rate, format="FLAC", subtype="PCM_16")
        mime = "audio/flac"
    return Clip(buf.getvalue(), mime, spectrogram_png(x, sample_rate, width, height),
                x.size / sample_rate)


# A perceptually ordered dark-to-light colour ramp (black, indigo, crimson, orange, pale
# yellow) for spectrograms; 64 levels keep the PNGs small.
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)
_LEVELS = 64
_PALETTE = np.stack([np.interp(np.linspace(0, 1, _LEVELS), np.linspace(0, 1, len(_RAMP)),
                               _RAMP[:, ch]) for ch in range(3)], axis=1).round().astype(np.uint8)
_DYNAMIC_RANGE_DB = 80.0


def spectrogram_png(x: np.ndarray, sample_rate: int, width: int, height: int) -> bytes:
    """A log-power spectrogram, mel-spaced rows (low frequencies at the bottom), as PNG."""
    n_fft = 2 ** max(6, round(math.log2(0.025 * sample_rate)))  # ~25 ms
    hop = n_fft // 4
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    # A picture, not a model input: plain numpy frames (models/frontend.py is the models'
    # STFT and needs torch, which the streaming install does not have).
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    z = np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1).T
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    power_db = 10 * np.log10(np.maximum(np.abs(z) ** 2, 1e-12))
    top = power_db.max()
    level = np.clip((power_db - (top - _DYNAMIC_RANGE_DB)) / _DYNAMIC_RANGE_DB, 0, 1)

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    # rows at equal mel steps, columns at equal time steps, both by linear interpolation
    fm = mel(freqs)
    rows = _interpolate_rows(level, fm, np.linspace(fm[0], fm[-1], height))
    steps = np.arange(level.shape[1], dtype=np.float64)
    grid = _interpolate_rows(rows.T, steps, np.linspace(0, steps[-1], width)).T
    index = np.clip((grid * (_LEVELS - 1)).round(), 0, _LEVELS - 1).astype(np.uint8)
    return png_indexed(index[::-1], _PALETTE)


def _interpolate_rows(a: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """np.interp along axis 0 of ``a`` for every column at once: rows at increasing ``src``
    positions to rows at ``dst`` (two gathers; a dense interpolation matrix would go
    through BLAS, whose threads cost more than the arithmetic here)."""
    if src.size == 1:
        return np.repeat(a, dst.size, axis=0)
    hi = np.clip(np.searchsorted(src, dst, side="right"), 1, src.size - 1)
    lo = hi - 1
    frac = np.clip((dst - src[lo]) / np.maximum(src[hi] - src[lo], 1e-12), 0, 1)[:, None]
    return a[lo] * (1 - frac) + a[hi] * frac


def png_indexed(pixels: np.ndarray, palette: np.ndarray) -> bytes:
    """An 8-bit palette PNG of ``pixels`` (H, W) uint8 indices into ``palette`` (N, 3)."""
    h, w = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, np.uint8))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", np.ascontiguousarray(palette, np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))
