"""Reading audio: any format libsndfile reads, mixed to mono, resampled, checked.

Everything that turns bytes into samples goes through :func:`decode_audio`, so a file on
disk, a Kafka message with a WAV/FLAC container and a test fixture fail the same way:
with an :class:`AudioError` that names the source and the reason.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audioclust.models.errors import DataError, UserError

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "decode_audio",
    "find_audio_files",
    "load_audio",
    "prepare_audio",
    "resample",
    "to_mono_float",
]


class AudioError(UserError, ValueError):
    """Audio that cannot be used: missing, empty, truncated, not audio, or not finite."""

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Integer or float PCM, (T,) or (T, channels), to float32 mono in [-1, 1] for ints."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        # Unsigned PCM (8-bit WAV) is centred on the middle of its range.
        offset = (info.max + 1) / 2 if info.min == 0 else 0.0
        x = (x.astype(np.float64) - offset) / (info.max + 1 - offset)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise DataError(f"expected (samples,) or (samples, channels), got shape {x.shape}")
    return x


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); a no-op when the rates agree."""
    if orig_sr == target_sr:
        return x
    if orig_sr <= 0 or target_sr <= 0:
        raise DataError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    return soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def _wav_declared_data_bytes(head: bytes) -> int | None:
    """The size of a RIFF/WAVE file's data chunk as its header declares it, if findable."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"data":
            return size
        pos += 8 + size + (size & 1)
    return None


def _check_wav_complete(data: bytes, source: str) -> None:
    # libsndfile quietly reads what is there from a cut-off WAV; a stream that lost its
    # tail must not pass as a shorter recording, so compare with the declared size.
    declared = _wav_declared_data_bytes(data[:65536])
    if declared is None or declared in (0, 0xFFFFFFFF):  # 0 / -1: streaming writers
        return
    start = data.find(b"data", 12)
    have = len(data) - (start + 8)
    if have < declared:
        raise AudioError(source, f"truncated: header declares {declared} data bytes, found {have}")


def decode_audio(data: bytes, sr: int | None = 16000, source: str = "<bytes>") -> np.ndarray:
    """Decode a complete audio file held in memory to float32 mono at ``sr`` (None: native).

    Raises :class:`AudioError` for empty, truncated, undecodable or non-finite audio.
    """
    if len(data) == 0:
        raise AudioError(source, "empty (0 bytes)")
    _check_wav_complete(data, source)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            native_sr = f.samplerate
            declared_frames = f.frames
            samples = f.read(always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(source, f"not readable as audio ({exc})") from exc
    if samples.shape[0] == 0:
        raise AudioError(source, "contains no samples")
    if 0 < declared_frames < 2**62 and samples.shape[0] < declared_frames:
        raise AudioError(
            source, f"truncated: header declares {declared_frames} frames, read {samples.shape[0]}"
        )
    return prepare_audio(samples, native_sr, sr, source)


def prepare_audio(samples: np.ndarray, sr: int, target_sr: int | None,
                  source: str = "<array>") -> np.ndarray:
    """Samples at ``sr`` ((T,) or (T, channels), integer or float PCM) as float32 mono at
    ``target_sr`` (None: ``sr``); :class:`AudioError` naming ``source`` for NaN or infinite
    samples."""
    x = to_mono_float(samples)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(source, f"{bad} samples are NaN or infinite")
    if target_sr is not None:
        x = resample(x, sr, target_sr)
    return x


def load_audio(path: str | os.PathLike, sr: int | None = 16000) -> np.ndarray:
    """Read an audio file (wav, flac, ogg, mp3, ...) as float32 mono at ``sr`` Hz.

    ``sr=None`` keeps the file's own rate. Raises :class:`AudioError` naming the file and
    the reason for a missing, empty, truncated, non-audio or non-finite file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise AudioError(p, "no such file") from exc
    except IsADirectoryError as exc:
        raise AudioError(p, "is a directory, not an audio file") from exc
    except PermissionError as exc:
        raise AudioError(p, "permission denied") from exc
    return decode_audio(data, sr=sr, source=str(p))


#: File endings treated as audio when a folder is scanned (all formats libsndfile reads).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"}
)


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files below ``root`` (recursively), sorted for a stable order."""
    r = Path(root)
    if not r.exists():
        raise FileNotFoundError(f"{r}: no such file or folder")
    if r.is_file():
        return [r]
    return sorted(p for p in r.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
