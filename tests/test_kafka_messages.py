"""The Kafka audio message format: round trips, resampling, and every malformed kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from audioclust.stream.kafka.messages import (
    REASONS,
    SUPPORTED_RATES,
    MessageError,
    decode_message,
    encode_container,
    encode_pcm,
)
from audioclust.stream.window import Chunk, Windower


def _noise(n: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, channels) if channels > 1 else n)
    return x.astype(np.float32)


def _decode(m, rate: int = 16000, **kw):
    return decode_message(m.value, m.headers, key=m.key, target_rate=rate, **kw)


@pytest.mark.parametrize("dtype,tol", [("int16", 1 / 32768), ("float32", 0.0)])
def test_pcm_round_trip(dtype: str, tol: float) -> None:
    x = _noise(4000)
    m = encode_pcm(x, stream="s1", seq=7, sample_rate=16000, dtype=dtype, offset=12000,
                   timestamp=1700000000.25, end_of_stream=True)
    assert m.key == b"s1"
    got = _decode(m)
    assert (got.stream, got.seq, got.offset, got.timestamp, got.end_of_stream) == (
        "s1", 7, 12000, 1700000000.25, True)
    assert got.samples.dtype == np.float32 and got.samples.shape == x.shape
    np.testing.assert_allclose(got.samples, x, atol=tol)


def test_int16_full_scale_does_not_wrap() -> None:
    got = _decode(encode_pcm(np.array([1.0, -1.0, 0.0], np.float32), stream="s", seq=0,
                             sample_rate=16000))
    assert got.samples[0] > 0.99 and got.samples[1] == -1.0


def test_stereo_is_mixed_to_mono() -> None:
    x = _noise(1000, channels=2)
    got = _decode(encode_pcm(x, stream="s", seq=0, sample_rate=16000, dtype="float32"))
    np.testing.assert_allclose(got.samples, x.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_container_round_trip(fmt: str) -> None:
    x = _noise(3000)
    m = encode_container(x, stream="c", seq=2, sample_rate=16000, fmt=fmt, offset=3000)
    assert dict(m.headers)["content-type"] == f"audio/{fmt}".encode()
    got = _decode(m)
    assert (got.seq, got.offset, got.source_rate) == (2, 3000, 16000)
    np.testing.assert_allclose(got.samples, x, atol=1 / 16384)


def test_message_key_stands_in_for_missing_stream_header() -> None:
    m = encode_pcm(_noise(100), stream="k", seq=0, sample_rate=16000)
    headers = [(k, v) for k, v in m.headers if k != "stream-id"]
    assert decode_message(m.value, headers, key=b"k", target_rate=16000).stream == "k"


def test_resampled_chunks_tile_the_target_clock() -> None:
    """8 kHz chunks of odd sizes resampled to 16 kHz: offsets and lengths leave no gaps."""
    x = _noise(8000 * 3)
    sizes = [1001, 333, 4000, 2666, 8000, 8000]
    w = Windower(16000, 8000, 16000)
    lo, events, total = 0, [], 0
    for seq, n in enumerate(sizes):
        got = _decode(encode_pcm(x[lo : lo + n], stream="r", seq=seq, sample_rate=8000,
                                 offset=lo))
        assert got.offset == round(lo * 2) and got.source_rate == 8000
        total += got.samples.size
        _, ev = w.push(Chunk("r", got.samples, offset=got.offset))
        events += ev
        lo += n
    assert total == 2 * x.size
    assert events == []  # no gap, no overlap at any chunk boundary


def test_windows_do_not_depend_on_chunking() -> None:
    x = _noise(16000 * 3)

    def windows(chunk: int) -> list[np.ndarray]:
        w, out = Windower(16000, 8000, 16000), []
        for seq, lo in enumerate(range(0, x.size, chunk)):
            got = _decode(encode_pcm(x[lo : lo + chunk], stream="w", seq=seq,
                                     sample_rate=16000, offset=lo))
            items, _ = w.push(Chunk("w", got.samples, offset=got.offset))
            out += [i.samples for i in items if hasattr(i, "samples")]
        return out

    a, b = windows(4000), windows(1234)
    assert len(a) == len(b) == 5
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def _wav(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _hdr(**kw: object) -> list[tuple[str, bytes]]:
    base = {"stream-id": "s", "seq": "0", "sample-rate": "16000", "dtype": "int16",
            "channels": "1"}
    base.update({k.replace("_", "-"): v for k, v in kw.items()})
    return [(k, str(v).encode()) for k, v in base.items() if v is not None]


GOOD = np.zeros(100, "<i2").tobytes()

#: (reason, value, headers): one malformed message of each kind the issue names, and more.
MALFORMED = [
    ("empty", b"", _hdr()),
    ("odd_length", b"\x00\x01\x02", _hdr()),
    ("nan", np.array([0.1, np.nan, 0.2], "<f4").tobytes(), _hdr(dtype="float32")),
    ("nan", np.array([0.1, np.inf], "<f4").tobytes(), _hdr(dtype="float32")),
    ("bad_rate", GOOD, _hdr(sample_rate=12345)),
    ("bad_rate", GOOD, _hdr(sample_rate="fast")),
    ("bad_rate", _wav(np.zeros(100, np.float32), rate=1234),
     _hdr(content_type="audio/wav", sample_rate=None)),
    ("bad_dtype", GOOD, _hdr(dtype="int24")),
    ("too_large", b"\x00" * 4096, _hdr()),
    ("truncated_container", _wav(np.zeros(800, np.float32))[:1000],
     _hdr(content_type="audio/wav")),
    ("missing_header", GOOD, []),
    ("missing_header", GOOD, _hdr(seq=None)),
    ("missing_header", GOOD, _hdr(dtype=None)),
    ("missing_header", GOOD, _hdr(sample_rate=None)),
    ("not_audio", b"<html>hello</html>" * 10, _hdr(content_type="audio/wav")),
    ("not_audio", GOOD, _hdr(content_type="text/plain")),
    ("bad_seq", GOOD, _hdr(seq="-1")),
    ("bad_seq", GOOD, _hdr(seq="3.5")),
    ("bad_channels", GOOD, _hdr(channels=0)),
    ("bad_offset", GOOD, _hdr(offset="x")),
    ("bad_timestamp", GOOD, _hdr(timestamp="nan")),
    ("bad_header", GOOD, [*_hdr(), ("offset", b"\xff\xfe")]),
    ("bad_stream_id", GOOD, _hdr(stream_id="x" * 70_000)),
    ("bad_stream_id", GOOD, [(k, v) for k, v in _hdr() if k != "stream-id"]
     + [("stream-id", "é".encode() * 513)]),  # 1,026 bytes, 513 characters
]


@pytest.mark.parametrize("reason,value,headers", MALFORMED,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(MALFORMED)])
def test_malformed_messages_raise_their_reason(reason: str, value: bytes,
                                                headers: list) -> None:
    with pytest.raises(MessageError) as info:
        decode_message(value, headers, target_rate=16000, max_bytes=2048)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{reason}: ")


def test_every_reason_is_exercised() -> None:
    assert {r for r, _, _ in MALFORMED} == set(REASONS)


def test_good_message_with_the_same_headers_decodes() -> None:
    got = decode_message(GOOD, _hdr(), target_rate=16000, max_bytes=2048)
    assert got.samples.size == 100 and got.offset is None and got.timestamp is None


def test_the_stream_id_limit_is_bytes_of_utf8() -> None:
    from audioclust.stream.sources import MAX_STREAM_ID_BYTES

    at_limit = "é" * (MAX_STREAM_ID_BYTES // 2)
    got = decode_message(GOOD, _hdr(stream_id=at_limit), target_rate=16000)
    assert got.stream == at_limit
    # the key stands in for the header, under the same limit
    headers = [(k, v) for k, v in _hdr() if k != "stream-id"]
    assert decode_message(GOOD, headers, key=b"\0k", target_rate=16000).stream == "\0k"
    with pytest.raises(MessageError, match="bad_stream_id"):
        decode_message(GOOD, headers, key=b"k" * (MAX_STREAM_ID_BYTES + 1), target_rate=16000)
    with pytest.raises(ValueError, match="stream id"):
        encode_pcm(_noise(10), stream="s" * (MAX_STREAM_ID_BYTES + 1), seq=0,
                   sample_rate=16000)


_header_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"0", b"1", b"16000", b"8000", b"int16", b"float32", b"audio/pcm",
                     b"audio/wav", b"audio/flac", b"-1", b"nan", b"1e400", b"2", b"9"]),
    st.integers(-10, 10**20).map(lambda i: str(i).encode()))
_header_names = st.sampled_from(["stream-id", "seq", "content-type", "sample-rate", "dtype",
                                 "channels", "offset", "timestamp", "end-of-stream",
                                 "Stream-ID", "other"])


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=3000),
                       st.sampled_from([GOOD, _wav(np.zeros(300, np.float32)),
                                        _wav(np.zeros(300, np.float32))[:60]])),
       headers=st.lists(st.tuples(_header_names, st.one_of(st.none(), _header_values)),
                        max_size=10),
       key=st.one_of(st.none(), st.binary(max_size=20)))
def test_any_message_decodes_or_raises_a_message_error(value, headers, key) -> None:
    """Whatever arrives, decoding gives audio or a dead-letter reason, nothing else."""
    try:
        got = decode_message(value, headers, target_rate=16000, key=key, max_bytes=2048)
    except MessageError as exc:
        assert exc.reason in REASONS and "\n" not in str(exc)
        return
    assert got.stream and got.seq >= 0
    assert got.samples.dtype == np.float32 and got.samples.ndim == 1
    assert np.isfinite(got.samples).all()
    assert got.offset is None or got.offset >= 0


@settings(max_examples=200, deadline=None)
@given(stream=st.text(min_size=1, max_size=60),
       seq=st.integers(0, 2**62), offset=st.one_of(st.none(), st.integers(0, 2**50)),
       n=st.integers(1, 400), rate=st.sampled_from(sorted(SUPPORTED_RATES)))
def test_encoded_messages_decode_to_what_was_sent(stream, seq, offset, n, rate) -> None:
    x = _noise(n, seed=n)
    got = _decode(encode_pcm(x, stream=stream, seq=seq, sample_rate=rate, dtype="float32",
                             offset=offset), rate=rate)
    assert (got.stream, got.seq, got.offset) == (stream, seq, offset)
    np.testing.assert_array_equal(got.samples, x)


def test_encoders_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        encode_pcm(_noise(10), stream="s", seq=0, sample_rate=16000, dtype="int8")
    with pytest.raises(ValueError):
        encode_pcm(_noise(10), stream="", seq=0, sample_rate=16000)
    with pytest.raises(ValueError):
        encode_container(_noise(10), stream="s", seq=0, sample_rate=16000, fmt="mp3")
