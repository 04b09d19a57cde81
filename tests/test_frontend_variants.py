"""The frontend settings pretrained encoders need, against librosa, and the encoders built
for them (CNN14, aisfx) under padding.

Tolerances as tests/test_frontend.py: |Δ log| <= 1e-4 where the mel power is above 1e-6
of the clip's peak (the quietest bins are where float32 rounding shows).
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audioclust.models.audio import load_audio
from audioclust.models.encoders import build_encoder
from audioclust.models.frontend import FrontendConfig, LogMelFrontend, mel_filterbank


@pytest.mark.parametrize(("norm", "librosa_norm"), [("sum", 1.0), ("none", None),
                                                    ("slaney", "slaney")])
def test_htk_filterbanks_match_librosa(norm, librosa_norm):
    ours = mel_filterbank(44100, 2048, 96, 0.0, 22050.0, scale="htk", norm=norm)
    ref = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0,
                              htk=True, norm=librosa_norm)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ["byola", "panns", "aisfx"])
def test_variants_match_librosa_on_speech(fsdd_dir, case):
    c = {
        "byola": FrontendConfig(mel_scale="htk", mel_norm="none", pad_mode="reflect",
                                compression="ln_eps", log_floor=float(np.finfo(np.float32).eps)),
        "panns": FrontendConfig(n_fft=512, win_length=512, f_min=50.0, f_max=8000.0,
                                pad_mode="reflect", compression="db"),
        "aisfx": FrontendConfig(sample_rate=44100, n_fft=2048, win_length=2048,
                                hop_length=1024, n_mels=96, f_min=0.0, f_max=22050.0,
                                mel_scale="htk", mel_norm="sum", compression="log10_shift",
                                peak_normalize=True),
    }[case]
    x = load_audio(fsdd_dir / "3_jackson_7.wav", sr=c.sample_rate)
    ours = LogMelFrontend(c)(torch.from_numpy(x)[None])[0, 0].numpy().astype(np.float64)
    y = x / np.abs(x).max() if c.peak_normalize else x
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
        win_length=c.win_length, center=True, pad_mode=c.pad_mode, power=2.0,
        n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max, htk=c.mel_scale == "htk",
        norm={"none": None, "sum": 1.0, "slaney": "slaney"}[c.mel_norm])
    ref = {"ln_eps": lambda m: np.log(m + c.log_floor),
           "db": lambda m: 10 * np.log10(np.maximum(m, c.log_floor)),
           "log10_shift": lambda m: np.log10(1e4 * m + 1)}[c.compression](mel)
    assert ours.shape == ref.shape == (c.n_mels, c.num_frames(len(x)))
    loud = mel > mel.max() * 1e-6
    scale = 10 / np.log(10) if c.compression == "db" else 1.0
    assert np.abs(ours - ref)[loud].max() <= 1e-4 * scale


def test_reflect_padding_with_lengths_is_exact_per_row(fsdd_dir):
    frontend = LogMelFrontend(FrontendConfig(pad_mode="reflect"))
    clips = [load_audio(fsdd_dir / n) for n in ("0_george_0.wav", "5_lucas_11.wav")]
    batch = torch.zeros(2, max(map(len, clips)))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    lengths = torch.tensor([len(c) for c in clips])
    out = frontend(batch, lengths)
    for i, c in enumerate(clips):
        alone = frontend(torch.from_numpy(c)[None])[0]
        torch.testing.assert_close(out[i, :, :, : alone.shape[-1]], alone, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pad_mode must be one of constant, reflect"):
        FrontendConfig(pad_mode="edge")


@pytest.mark.parametrize(("name", "config", "n_mels"),
                         [("cnn14", {"channels": 4}, 64), ("aisfx", {"channels": 4}, 96)])
def test_pretrained_architectures_ignore_padding(name, config, n_mels):
    torch.manual_seed(0)
    encoder = build_encoder(name, config).eval()
    g = torch.Generator().manual_seed(1)
    lengths = [encoder.min_frames, 37, 160, 251]
    clips = [torch.randn(1, 1, n_mels, n, generator=g) for n in lengths]
    padded = torch.full((4, 1, n_mels, 260), -3.0)
    for i, clip in enumerate(clips):
        padded[i, ..., : clip.shape[-1]] = clip
    with torch.no_grad():
        batch = encoder(padded, torch.tensor(lengths))
        alone = torch.cat([encoder(clip) for clip in clips])
    assert batch.shape == (4, encoder.embed_dim)
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected log-mel"):
        encoder(torch.zeros(1, 1, n_mels + 1, 64))
