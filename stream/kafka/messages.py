"""The Kafka message format for audio: raw PCM or a WAV/FLAC container, described by headers.

One message is one chunk of one stream. The value is the audio; the headers (UTF-8 text)
say what it is. ``docs/kafka.md`` is the reference; in short:

=================  ========  ==================================================================
header             required  meaning
=================  ========  ==================================================================
``stream-id``      yes [1]_  the stream the chunk belongs to (also the message key), at most
                             :data:`~audioclust.stream.sources.MAX_STREAM_ID_BYTES` bytes
``seq``            yes       per-stream sequence number, 0, 1, 2, ... (decimal integer >= 0)
``content-type``   no        ``audio/pcm`` (default), ``audio/wav`` or ``audio/flac``
``sample-rate``    PCM       Hz, one of :data:`SUPPORTED_RATES`; containers carry their own
``dtype``          PCM       ``int16`` or ``float32``, little-endian, interleaved channels
``channels``       no        1 (default) to 8; mixed down to mono
``offset``         no        first sample's index on the stream clock, in ``sample-rate`` units
``timestamp``      no        capture time of the first sample, Unix seconds (float)
``end-of-stream``  no        ``1`` on a stream's last chunk: its tail window is emitted
=================  ========  ==================================================================

.. [1] the message key is used when the header is absent.

:func:`decode_message` checks everything and raises :class:`MessageError` with a short
machine ``reason`` (the dead-letter header) and a human message.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from audioclust.models.audio import AudioError, decode_audio, resample, to_mono_float
from audioclust.models.errors import ConfigError
from audioclust.stream.sources import MAX_STREAM_ID_BYTES, check_stream_id

__all__ = [
    "CONTENT_TYPES",
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "SUPPORTED_RATES",
    "AudioMessage",
    "EncodedMessage",
    "MessageError",
    "decode_message",
    "encode_container",
    "encode_pcm",
    "header_dict",
]

#: Sample rates accepted in a header (and inside a container). Anything else is taken for a
#: producer bug rather than resampled: an "absurd" rate usually means a wrong header.
SUPPORTED_RATES = frozenset(
    {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000}
)
CONTENT_TYPES = ("audio/pcm", "audio/wav", "audio/flac")
_DTYPES = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MAX_CHANNELS = 8
#: Default largest value accepted (4 MiB: 65 s of 16 kHz int16 mono); bigger is ``too_large``.
MAX_MESSAGE_BYTES = 4 << 20

#: Every reason code :class:`MessageError` can carry, with what it means.
REASONS: dict[str, str] = {
    "empty": "the message has no audio bytes",
    "odd_length": "the byte count is not a whole number of frames for dtype and channels",
    "nan": "samples that are NaN or infinite",
    "bad_rate": "sample rate missing a number, or not one of the supported rates",
    "bad_dtype": "dtype header other than int16 or float32",
    "bad_channels": "channels header not an integer from 1 to 8",
    "too_large": "value larger than the configured maximum",
    "truncated_container": "a WAV/FLAC container cut short",
    "missing_header": "a required header is absent",
    "not_audio": "unknown content-type, or container bytes that are not audio",
    "bad_seq": "sequence number not a non-negative integer",
    "bad_offset": "offset header not a non-negative integer",
    "bad_timestamp": "timestamp header not a finite number",
    "bad_header": "a header value that is not UTF-8 text",
    "bad_stream_id": f"stream id longer than {MAX_STREAM_ID_BYTES} bytes of UTF-8",
}


class MessageError(ValueError):
    """A message that cannot be turned into audio; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class EncodedMessage:
    """What a producer sends: key, value and headers, ready for ``KafkaProducer.send``."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class AudioMessage:
    """A decoded message: float32 mono at the target rate, positioned on the stream clock."""

    stream: str
    seq: int
    samples: np.ndarray
    sample_rate: int  # the target rate the samples are at
    source_rate: int  # the rate the producer sent
    offset: int | None  # first sample on the stream clock, in target-rate samples
    timestamp: float | None
    end_of_stream: bool = False


def _headers(stream: str, seq: int, extra: Mapping[str, object]) -> list[tuple[str, bytes]]:
    problem = check_stream_id(stream)
    if problem:
        raise ConfigError(problem)
    if seq < 0:
        raise ValueError(f"seq must be >= 0, got {seq}")
    out = [("stream-id", stream.encode()), ("seq", str(int(seq)).encode())]
    for k, v in extra.items():
        if v is None or v is False:
            continue
        if v is True:
            v = 1
        out.append((k, (repr(v) if isinstance(v, float) else str(v)).encode()))
    return out


def encode_pcm(samples: np.ndarray, *, stream: str, seq: int, sample_rate: int,
               dtype: str = "int16", offset: int | None = None,
               timestamp: float | None = None, end_of_stream: bool = False) -> EncodedMessage:
    """Raw PCM message from float samples in [-1, 1], shape (T,) or (T, channels).

    ``offset`` is the first frame's index on the stream clock at ``sample_rate``.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be int16 or float32, got {dtype!r}")
    x = np.asarray(samples, dtype=np.float32)
    channels = 1 if x.ndim == 1 else x.shape[1]
    if dtype == "int16":
        # Round to the nearest step and clip, so a full-scale 1.0 doesn't wrap around.
        pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    else:
        pcm = x.astype("<f4")
    headers = _headers(stream, seq, {
        "content-type": "audio/pcm", "sample-rate": int(sample_rate), "dtype": dtype,
        "channels": channels, "offset": offset, "timestamp": timestamp,
        "end-of-stream": end_of_stream,
    })
    return EncodedMessage(stream.encode(), pcm.tobytes(), headers)


def encode_container(samples: np.ndarray, *, stream: str, seq: int, sample_rate: int,
                     fmt: str = "wav", offset: int | None = None,
                     timestamp: float | None = None,
                     end_of_stream: bool = False) -> EncodedMessage:
    """WAV (16-bit PCM) or FLAC message; the container carries rate and channels."""
    if fmt not in ("wav", "flac"):
        raise ConfigError(f"container must be wav or flac, got {fmt!r}")
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), int(sample_rate),
             format=fmt.upper(), subtype="PCM_16")
    headers = _headers(stream, seq, {
        "content-type": f"audio/{fmt}", "offset": offset, "timestamp": timestamp,
        "end-of-stream": end_of_stream,
    })
    return EncodedMessage(stream.encode(), buf.getvalue(), headers)


def header_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as text; the last value wins when a key repeats. Keys are lower-cased."""
    out: dict[str, str] = {}
    for k, v in headers or ():
        try:
            out[k.lower()] = "" if v is None else bytes(v).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("bad_header", f"header {k!r} is not UTF-8 text") from exc
    return out


def _int_header(h: Mapping[str, str], name: str, reason: str, *, required: bool,
                lo: int | None = None, hi: int | None = None) -> int | None:
    text = h.get(name)
    if text is None or text.strip() == "":
        if required:
            raise MessageError("missing_header", f"no {name!r} header")
        return None
    try:
        value = int(text.strip(), 10)
    except ValueError as exc:
        raise MessageError(reason, f"{name} {text[:40]!r} is not an integer") from exc
    if lo is not None and value < lo:
        raise MessageError(reason, f"{name} {value} is below {lo}")
    if hi is not None and value > hi:
        raise MessageError(reason, f"{name} {value} is above {hi}")
    return value


def _check_rate(rate: int) -> None:
    if rate not in SUPPORTED_RATES:
        raise MessageError("bad_rate", f"sample rate {rate} Hz is not supported (one of "
                           f"{', '.join(str(r) for r in sorted(SUPPORTED_RATES))})")


def _to_target(x: np.ndarray, rate: int, target: int, offset: int | None) -> tuple[np.ndarray,
                                                                                  int | None]:
    """Resample to ``target`` and map the offset onto the target clock.

    Each chunk is resampled on its own; its length is set to the exact span its first and
    one-past-last samples map to, so consecutive chunks tile the target clock with neither
    gap nor overlap (which the windower would otherwise report).
    """
    if rate == target:
        return x, offset
    start = 0 if offset is None else offset
    lo = round(start * target / rate)
    n = round((start + x.size) * target / rate) - lo
    y = resample(x, rate, target)
    if y.size >= n:
        y = y[:n]
    else:
        y = np.concatenate([y, np.full(n - y.size, y[-1] if y.size else 0.0, np.float32)])
    return np.ascontiguousarray(y, dtype=np.float32), (None if offset is None else lo)


def decode_message(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                   *, target_rate: int, key: bytes | None = None,
                   max_bytes: int = MAX_MESSAGE_BYTES) -> AudioMessage:
    """Check and decode one message to float32 mono at ``target_rate``.

    Raises :class:`MessageError`; the checks run cheapest first so a flood of junk costs
    little (headers, then size, then decoding).
    """
    h = header_dict(headers)
    stream = h.get("stream-id") or (key.decode("utf-8", "replace") if key else "")
    if not stream:
        raise MessageError("missing_header", "no 'stream-id' header and no message key")
    problem = check_stream_id(stream)
    if problem:
        raise MessageError("bad_stream_id", f"{problem} (starts {stream[:40]!r})")
    seq = _int_header(h, "seq", "bad_seq", required=True, lo=0)
    offset = _int_header(h, "offset", "bad_offset", required=False, lo=0)
    timestamp = None
    if h.get("timestamp"):
        try:
            timestamp = float(h["timestamp"])
        except ValueError:
            timestamp = math.nan
        if not math.isfinite(timestamp):
            raise MessageError("bad_timestamp", f"timestamp {h['timestamp'][:40]!r}")
    eos = h.get("end-of-stream", "").strip().lower() in ("1", "true", "yes")
    ctype = (h.get("content-type") or "audio/pcm").split(";")[0].strip().lower()
    if ctype not in CONTENT_TYPES:
        raise MessageError("not_audio", f"content-type {ctype[:60]!r} (expected one of "
                           f"{', '.join(CONTENT_TYPES)})")
    data = value or b""
    if len(data) == 0:
        raise MessageError("empty", "message has no audio bytes")
    if len(data) > max_bytes:
        raise MessageError("too_large", f"{len(data)} bytes > the maximum {max_bytes}")
    if ctype == "audio/pcm":
        rate = _int_header(h, "sample-rate", "bad_rate", required=True)
        assert rate is not None
        _check_rate(rate)
        dtype_name = h.get("dtype")
        if dtype_name is None:
            raise MessageError("missing_header", "no 'dtype' header for raw PCM")
        dtype = _DTYPES.get(dtype_name.strip().lower())
        if dtype is None:
            raise MessageError("bad_dtype", f"dtype {dtype_name[:40]!r} (expected int16 or "
                               "float32)")
        channels = _int_header(h, "channels", "bad_channels", required=False, lo=1,
                               hi=MAX_CHANNELS) or 1
        frame = dtype.itemsize * channels
        if len(data) % frame:
            raise MessageError("odd_length", f"{len(data)} bytes is not a whole number of "
                               f"{frame}-byte frames ({dtype_name}, {channels} channel(s))")
        pcm = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
        if dtype.kind == "f" and not np.isfinite(pcm).all():
            bad = int((~np.isfinite(pcm)).sum())
            raise MessageError("nan", f"{bad} samples are NaN or infinite")
        x = to_mono_float(pcm.astype(np.int16) if dtype.kind == "i" else pcm)
    else:
        try:
            info = sf.info(io.BytesIO(data))
            rate = int(info.samplerate)
        except (sf.LibsndfileError, RuntimeError, TypeError):
            rate = None  # not decodable: decode_audio below says why
        if rate is not None:
            _check_rate(rate)
        try:
            x = decode_audio(data, sr=None, source="message")
        except AudioError as exc:
            reason = exc.reason
            if reason.startswith("truncated"):
                raise MessageError("truncated_container", reason) from exc
            if "NaN" in reason:
                raise MessageError("nan", reason) from exc
            raise MessageError("not_audio", reason) from exc
        if rate is None:  # decodable by libsndfile only after all; trust it
            rate = int(sf.info(io.BytesIO(data)).samplerate)
    x, offset = _to_target(x, rate, target_rate, offset)
    return AudioMessage(stream=stream, seq=seq, samples=x, sample_rate=target_rate,
                        source_rate=rate, offset=offset, timestamp=timestamp,
                        end_of_stream=eos)
