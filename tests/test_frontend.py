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
from audioclust.models.frontend import (
    STFT,
    FrontendConfig,
    LogMelFrontend,
    mel_filterbank,
    stft,
    window_samples,
)
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


# --- the shared STFT ----------------------------------------------------------------------

STFT_SETTINGS = [
    # n_fft, hop, win_length, window, center, pad_mode
    (1024, 160, 1024, "hann", True, "constant"),  # the log-mel frontend's
    (1024, 320, 1024, "hann", True, "reflect"),  # PANNs-style
    (1024, 160, 800, "hamming", True, "reflect"),
    (512, 160, 400, "hann", False, "constant"),  # 25 ms frames at 16 kHz, not centred
    (400, 160, 400, "rectangular", True, "constant"),
    (1024, 441, 1024, "hann", True, "constant"),  # no block divides the hop: direct DFT
]


def _torch_stft(x: np.ndarray, n_fft, hop, win, window, center, pad_mode) -> torch.Tensor:
    w = torch.from_numpy(window_samples(window, win, n_fft)[(n_fft - win) // 2:][:win])
    return torch.stft(torch.from_numpy(x).double(), n_fft, hop, win, w, center=center,
                      pad_mode=pad_mode, onesided=True, return_complex=True)


@pytest.mark.parametrize("setting", STFT_SETTINGS)
def test_stft_matches_torch_stft(setting):
    n_fft, hop, win, window, center, pad_mode = setting
    x = (np.random.default_rng(n_fft + hop).standard_normal((3, 7001)) * 0.3).astype(np.float32)
    ref = _torch_stft(x, *setting)
    re, im = stft(torch.from_numpy(x), n_fft, hop, win, window, center, pad_mode)
    assert re.shape == im.shape == ref.shape
    scale = ref.abs().max().item()
    assert (re.double() - ref.real).abs().max().item() <= 1e-6 * scale * np.sqrt(n_fft)
    assert (im.double() - ref.imag).abs().max().item() <= 1e-6 * scale * np.sqrt(n_fft)


@pytest.mark.parametrize("block", [None, 4, 16, 32])
def test_stft_paths_agree(block):
    # every factorisation and the direct DFT compute the same spectrum (float32 rounding:
    # the direct DFT's 1024-term sums are the least precise)
    x = torch.from_numpy((np.random.default_rng(3).standard_normal((2, 16000)) * 0.1)
                         .astype(np.float32))
    module = STFT(1024, 160, block=block)
    assert module.block == block
    ref = _torch_stft(x.numpy(), 1024, 160, 1024, "hann", True, "constant")
    power = module.power(x).double()
    assert (power - ref.abs() ** 2).abs().max().item() <= 1e-5 * (ref.abs() ** 2).max().item()
    fb = mel_filterbank(16000, 1024, 64, 60.0, 7800.0)
    filtered = module.filtered_power(x, module.filterbank(fb)).double()
    want = torch.from_numpy(fb) @ ref.abs() ** 2
    assert (filtered - want).abs().max().item() <= 1e-5 * want.max().item()


def test_stft_chooses_a_cheap_factorisation():
    assert STFT(1024, 160).block == 16
    assert STFT(1024, 441).block is None  # gcd(1024, 441) = 1
    fe = LogMelFrontend()
    assert fe.stft.block is not None and fe.stft.stage1.shape[-1] < CFG.n_fft


@pytest.mark.parametrize(
    "kwargs, match",
    [({"window": "kaiser"}, "unknown window"), ({"window": np.ones(10)}, "shape"),
     ({"win_length": 2048}, "win_length"), ({"block": 6}, "block"), ({"block": 3}, "block"),
     ({"pad_mode": "edge"}, "pad_mode")],
)
def test_stft_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STFT(1024, 160, **kwargs)


def test_stft_exports_to_onnx(tmp_path):
    module = STFT(512, 160, 400, center=False)

    class Power(torch.nn.Module):
        def forward(self, waveform):
            return module.power(waveform)

    path = export_onnx(Power(), (torch.zeros(2, 4000),), tmp_path / "stft.onnx", ["waveform"],
                       ["power"], {"waveform": {0: "batch", 1: "samples"}},
                       min_sizes={"samples": 512})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(4).standard_normal((3, 5555)) * 0.2).astype(np.float32)
    got = sess.run(None, {"waveform": x})[0]
    want = (_torch_stft(x, 512, 160, 400, "hann", False, "constant").abs() ** 2).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * want.max())


# --- framing the pretrained frontends need ------------------------------------------------


def _kaldi_premap(frame: int) -> np.ndarray:
    """DC removal, then pre-emphasis 0.97 (the first sample against itself), per frame."""
    eye = np.eye(frame)
    shift = np.eye(frame, k=-1)
    shift[0, 0] = 1.0
    return (eye - 0.97 * shift) @ (eye - 1.0 / frame)


def _framed_reference(x: np.ndarray, frame: int, n_fft: int, hop: int, window: np.ndarray,
                      premap: np.ndarray | None = None) -> np.ndarray:
    """|rfft|^2 of each ``frame``-sample frame from sample 0 (not centred), the frame
    mapped by ``premap``, windowed, zero-padded to ``n_fft`` at its end; float64."""
    frames = 1 + (x.shape[-1] - frame) // hop
    idx = hop * np.arange(frames)[:, None] + np.arange(frame)[None, :]
    f = x.astype(np.float64)[:, idx]  # (B, frames, frame)
    if premap is not None:
        f = f @ premap.T
    return (np.abs(np.fft.rfft(f * window, n=n_fft, axis=-1)) ** 2).transpose(0, 2, 1)


@pytest.mark.parametrize("block", ["auto", None])
def test_stft_frames_shorter_than_n_fft(block):
    # Kaldi's framing: 400-sample frames from sample 0 every 160, each zero-padded at its
    # end into a 512-point DFT; the factorisation (N2 | 160) and the direct DFT both give it
    x = (np.random.default_rng(5).standard_normal((2, 5123)) * 0.3).astype(np.float32)
    window = np.hanning(400)
    module = STFT(512, 160, window=window, center=False, frame_length=400, block=block)
    assert (module.block is None) == (block is None) and module.num_frames(5123) == 30
    ref = _framed_reference(x, 400, 512, 160, window)
    got = module.power(torch.from_numpy(x)).double().numpy()
    assert got.shape == ref.shape == (2, 257, 30)
    assert np.abs(got - ref).max() <= 1e-5 * ref.max()
    with pytest.raises(ValueError, match="at least 400 samples"):
        module.power(torch.zeros(1, 399))


def test_stft_premap_takes_the_direct_dft():
    x = (np.random.default_rng(6).standard_normal((2, 4000)) * 0.3 + 0.2).astype(np.float32)
    window, premap = np.hanning(400), _kaldi_premap(400)
    module = STFT(512, 160, window=window, center=False, frame_length=400, premap=premap)
    assert module.block is None and module.stage1.shape == (2 * 257, 1, 400)
    ref = _framed_reference(x, 400, 512, 160, window, premap)
    got = module.power(torch.from_numpy(x)).double().numpy()
    assert np.abs(got - ref).max() <= 1e-5 * ref.max()
    with pytest.raises(ValueError, match="needs the direct DFT"):
        STFT(512, 160, window=window, center=False, frame_length=400, premap=premap, block=16)
    with pytest.raises(ValueError, match="premap has shape"):
        STFT(512, 160, frame_length=400, premap=np.eye(512))
    with pytest.raises(ValueError, match="frame_length"):
        STFT(512, 160, frame_length=600)


@pytest.mark.parametrize("n_fft, hop", [(1024, 160), (1024, 441)])
def test_stft_reflects_each_row_at_its_length(n_fft, hop):
    # a zero-padded batch row with its length gives exactly its clip's own frames
    rng = np.random.default_rng(7)
    clips = [(rng.standard_normal(n) * 0.2).astype(np.float32) for n in (9000, 5301, 700)]
    batch = torch.zeros(3, 9000)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    module = STFT(n_fft, hop, pad_mode="reflect")
    padded = module.power(batch, torch.tensor([len(c) for c in clips]))
    for i, c in enumerate(clips):
        alone = _torch_stft(c[None], n_fft, hop, n_fft, "hann", True, "reflect").abs() ** 2
        got = padded[i, :, : alone.shape[-1]].double()
        assert (got - alone[0]).abs().max().item() <= 1e-5 * alone.max().item()
    assert padded.shape[-1] == module.num_frames(9000)
