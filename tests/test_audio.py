"""load_audio / decode_audio: formats, mixdown, resampling, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import write

from audioclust.models.audio import AudioError, decode_audio, find_audio_files, load_audio


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "tol"),
    [
        ("wav", "WAV", "PCM_16", 1e-4),
        ("wav", "WAV", "PCM_24", 1e-6),
        ("wav", "WAV", "PCM_32", 1e-6),
        ("wav", "WAV", "FLOAT", 1e-7),
        ("wav", "WAV", "PCM_U8", 1e-2),
        ("flac", "FLAC", "PCM_16", 1e-4),
        ("ogg", "OGG", "VORBIS", None),
        ("mp3", "MP3", "MPEG_LAYER_III", None),
    ],
)
def test_reads_every_format(tmp_path, tone, suffix, fmt, subtype, tol):
    path = write(tmp_path / f"a.{suffix}", tone, 16000, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(_peak_hz(x, 16000) - 440) < 5
    if tol is not None:  # lossless formats give the samples back
        assert x.shape == tone.shape
        np.testing.assert_allclose(x, tone, atol=tol)
    else:  # lossy codecs keep the level and most of the length
        assert 0.9 * len(tone) <= len(x) <= 1.2 * len(tone)
        assert 0.3 < np.abs(x).max() < 0.7


def test_int_pcm_scaled_to_unit_range(tmp_path):
    ints = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    path = write(tmp_path / "i.wav", ints, 16000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(path), [0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1e-6)


def test_stereo_is_mixed_to_mono(tmp_path):
    left = np.full(1600, 0.6, dtype=np.float32)
    right = np.full(1600, -0.2, dtype=np.float32)
    path = write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), np.full(1600, 0.2), atol=1e-6)


@pytest.mark.parametrize("native_sr", [8000, 22050, 44100, 48000])
def test_resamples_to_target_rate(tmp_path, native_sr):
    t = np.arange(native_sr) / native_sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = write(tmp_path / "r.wav", x, native_sr, subtype="FLOAT")
    y = load_audio(path, sr=16000)
    assert abs(len(y) - 16000) <= 1
    assert abs(_peak_hz(y, 16000) - 1000) < 3
    assert load_audio(path, sr=None).shape == x.shape  # sr=None keeps the native rate


def test_fsdd_clip_loads(fsdd_dir):
    x = load_audio(fsdd_dir / "0_george_0.wav")
    info = sf.info(fsdd_dir / "0_george_0.wav")
    assert info.samplerate == 8000
    assert len(x) == info.frames * 2
    assert 0 < np.abs(x).max() <= 1


def _assert_error(path, reason_part: str):
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert str(path) in str(exc.value)
    assert reason_part in exc.value.reason
    assert exc.value.source == str(path)


def test_missing_file(tmp_path):
    _assert_error(tmp_path / "nope.wav", "no such file")


def test_directory(tmp_path):
    _assert_error(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    _assert_error(p, "empty")


def test_zero_samples(tmp_path):
    p = write(tmp_path / "zero.wav", np.zeros(0, dtype=np.int16), 16000)
    _assert_error(p, "no samples")


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("these are not the samples you are looking for\n" * 20)
    _assert_error(p, "not readable as audio")


def test_truncated_wav(tmp_path, fsdd_dir):
    data = (fsdd_dir / "3_lucas_5.wav").read_bytes()
    p = tmp_path / "cut.wav"
    p.write_bytes(data[: len(data) // 2])
    _assert_error(p, "truncated")


def test_truncated_flac(tmp_path, tone):
    full = write(tmp_path / "full.flac", np.tile(tone, 3), 16000, format="FLAC")
    p = tmp_path / "cut.flac"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioError) as exc:
        load_audio(p)
    assert str(p) in str(exc.value)


def test_truncated_mp3(tmp_path):
    noise = (np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32)
    full = write(tmp_path / "full.mp3", noise, 16000, format="MP3", subtype="MPEG_LAYER_III")
    p = tmp_path / "cut.mp3"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _assert_error(p, "truncated")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, tone, bad):
    x = tone.copy()
    x[100:103] = bad
    p = write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    _assert_error(p, "3 samples are NaN or infinite")


def test_decode_bytes_matches_file(tmp_path, tone):
    p = write(tmp_path / "b.flac", tone, 16000, format="FLAC")
    np.testing.assert_array_equal(decode_audio(p.read_bytes(), source="msg"), load_audio(p))
    with pytest.raises(AudioError, match="msg: empty"):
        decode_audio(b"", source="msg")


def test_find_audio_files(tmp_path, tone):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "b.wav", tone, 16000)
    write(tmp_path / "sub" / "a.FLAC", tone, 16000, format="FLAC")
    (tmp_path / "readme.txt").write_text("x")
    assert find_audio_files(tmp_path) == [tmp_path / "b.wav", tmp_path / "sub" / "a.FLAC"]
    with pytest.raises(FileNotFoundError):
        find_audio_files(tmp_path / "missing")
