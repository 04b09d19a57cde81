"""Log-mel frontend: matches librosa, exports to ONNX, and keeps its shape contract.

Tolerance versus librosa (float64 reference, same parameters, log with the same floor):
|Δ log-mel| <= 1e-4 wherever the mel power is above 1e-6 of the clip's peak, and <= 1e-2
everywhere (the quietest bins are where float32 rounding shows).
"""

from __future__ import annotations

import librosa
import numpy as np
import onnxruntime as ort
import pytest
import torch

from audioclust.models.audio import load_audio
from audioclust.models.frontend import FrontendConfig, LogMelFrontend, mel_filterbank
from audioclust.models.onnx_export import export_onnx

CFG = FrontendConfig()


def _librosa_logmel(x: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=16000, n_fft=1024, hop_length=160, win_length=1024,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=64,
        fmin=60.0, fmax=7800.0, htk=False, norm="slaney",
    )
    return np.log(np.maximum(mel, CFG.log_floor))


def test_filterbank_matches_librosa():
    ours = mel_filterbank(16000, 1024, 64, 60.0, 7800.0)
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=60.0, fmax=7800.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["0_george_0.wav", "7_jackson_12.wav", "9_yweweler_40.wav"])
def test_matches_librosa_on_speech(fsdd_dir, name):
    x = load_audio(fsdd_dir / name)
    ours = LogMelFrontend()(torch.from_numpy(x)[None])[0, 0].numpy()
    ref = _librosa_logmel(x)
    assert ours.shape == ref.shape == (64, 1 + len(x) // 160)
    loud = ref > ref.max() + np.log(1e-6)
    assert loud.mean() > 0.5
    assert np.abs(ours - ref)[loud].max() <= 1e-4
    assert np.abs(ours - ref).max() <= 1e-2


def test_matches_librosa_on_noise_and_silence():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(12345) * 0.1).astype(np.float32)
    x[4000:6000] = 0.0  # digital silence reaches the floor, not -inf
    ours = LogMelFrontend()(torch.from_numpy(x)[None])[0, 0].numpy()
    ref = _librosa_logmel(x)
    assert np.isfinite(ours).all()
    assert ours.min() >= np.log(CFG.log_floor) - 1e-6
    loud = ref > ref.max() + np.log(1e-6)
    assert np.abs(ours - ref)[loud].max() <= 1e-4


@pytest.mark.parametrize("samples", [1, 159, 160, 1024, 16000, 16001])
def test_frame_count(samples):
    y = LogMelFrontend()(torch.zeros(3, samples))
    assert y.shape == (3, 1, 64, CFG.num_frames(samples)) == (3, 1, 64, 1 + samples // 160)


def test_batch_rows_are_independent():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((4, 8000)).astype(np.float32))
    fe = LogMelFrontend()
    batched = fe(x)
    for i in range(4):
        torch.testing.assert_close(batched[i : i + 1], fe(x[i : i + 1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"win_length": 2048}, {"f_max": 9000.0}, {"f_min": 8000.0}, {"hop_length": 0},
     {"log_floor": 0.0}],
)
def test_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        FrontendConfig(**kwargs)


def test_onnx_matches_torch(tmp_path):
    fe = LogMelFrontend()
    path = export_onnx(
        fe, (torch.zeros(2, 16000),), tmp_path / "frontend.onnx", ["waveform"], ["logmel"],
        {"waveform": {0: "batch", 1: "samples"}}, metadata={"sample_rate": "16000"},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["sample_rate"] == "16000"
    rng = np.random.default_rng(2)
    for batch, samples in [(1, 1600), (1, 16000), (3, 8123), (32, 4800)]:
        x = (rng.standard_normal((batch, samples)) * 0.2).astype(np.float32)
        got = sess.run(None, {"waveform": x})[0]
        with torch.inference_mode():
            want = fe(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
