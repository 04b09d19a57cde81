"""Pretrained log-mel encoders loaded from their released files: aisfx, PANNs CNN14, BYOL-A.

aisfx: the real weights (the aisfx wheel's checkpoint.pth) against the package's own path
(its librosa spectrogram, normalisation, blocking and network) on FSDD and GM notes clips:
max |difference| <= 1e-4 per embedding value (values up to ~6; measured <= 2e-5).

PANNs and BYOL-A: checkpoints written here in the released layout (key names, nesting,
dtypes) with random weights, and their embeddings against a reference forward written
here from the published definitions (torchlibrosa STFT/log-mel + Cnn14; torchaudio
MelSpectrogram settings via librosa + AudioNTT2020): relative difference <= 1e-4.
"""

from __future__ import annotations

import datetime
import glob
from collections import OrderedDict
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from audioclust.models.audio import load_audio
from audioclust.models.encoder_spec import open_encoder
from audioclust.models.pretrained import (
    AISFX_FRONTEND,
    BYOLA_STATS,
    aisfx_checkpoint_path,
    load_aisfx,
    load_byola,
    load_panns,
    load_torch_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
GM_NOTES = REPO.parent / "shared" / "datasets" / "gm-notes"
AISFX_TOL = 1e-4


# --- aisfx: the real weights against the package ------------------------------------------


@pytest.fixture(scope="module")
def aisfx():
    return load_aisfx()


@pytest.fixture(scope="module")
def package_model():
    """The aisfx package's own network with the same weights (its classes, our loading)."""
    from aisfx.models.cnn2d import EmbeddingNet

    net = EmbeddingNet("max", 3, 1, 64)
    obj = load_torch_checkpoint(aisfx_checkpoint_path(), _aisfx_globals())
    net.load_state_dict({k[len("embedding_net."):]: v for k, v in obj[0].items()
                         if k.startswith("embedding_net.")})
    return net.eval()


def _aisfx_globals():
    from audioclust.models.pretrained import _numpy_scalar_globals

    return _numpy_scalar_globals()


def _package_embedding(path: Path, net) -> np.ndarray:
    """The package's librosa path: spectrogram, 'original' normalisation, blocking by 100
    frames every 50 (drop_partial_block), the network, mean over blocks. The package's
    compute_hopSize refuses clips under 51 frames; its blocking handles them (one padded
    block), so blocking is called directly."""
    from aisfx import preprocessing
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    spec = compute_spectrogram(str(path), 44100.0, 2048, 1024, 96, 0.0, 22050.0)
    spec = preprocessing.spectrogram_normalize(spec.T)  # (frames, bands), as essentia's
    blocks = preprocessing.blocking(spec, 100, 50, True)
    with torch.no_grad():
        return net(torch.tensor(blocks, dtype=torch.float32)).numpy().mean(axis=0)


def _aisfx_clips(fsdd_dir: Path, tmp_path: Path) -> list[Path]:
    import soundfile as sf

    notes = sorted(glob.glob(str(GM_NOTES / "*" / "*.flac")))
    picks = [fsdd_dir / "0_george_0.wav", fsdd_dir / "7_jackson_12.wav",
             fsdd_dir / "9_yweweler_40.wav", *map(Path, notes[::60][:5])]
    # A long clip (several blocks, a dropped partial block): notes end to end.
    long = np.concatenate([load_audio(p, sr=44100) for p in map(Path, notes[:4])])
    sf.write(tmp_path / "long.wav", long, 44100)
    return [*picks, tmp_path / "long.wav"]


def test_aisfx_matches_the_package_on_real_clips(aisfx, package_model, fsdd_dir, tmp_path):
    clips = _aisfx_clips(fsdd_dir, tmp_path)
    assert len(clips) == 9
    blocks_seen = set()
    for path in clips:
        x = load_audio(path, sr=44100)
        with torch.no_grad():
            ours = aisfx(torch.from_numpy(x)[None]).numpy()[0]
        ref = _package_embedding(path, package_model)
        assert ours.shape == (512,)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=AISFX_TOL, err_msg=str(path))
        frames = AISFX_FRONTEND.num_frames(len(x))
        blocks_seen.add(int(aisfx.encoder.block_counts(torch.tensor([frames]))))
    assert blocks_seen >= {1} and max(blocks_seen) >= 3  # short and multi-block clips


def test_aisfx_padded_batch_equals_each_clip_alone(aisfx, fsdd_dir):
    from audioclust.models.embedder import embed_clips

    clips = [load_audio(fsdd_dir / n, sr=44100) for n in
             ("0_george_0.wav", "3_theo_5.wav", "5_nicolas_30.wav")]
    clips.append(np.concatenate(clips * 4))  # 140+ frames: two blocks
    batch = embed_clips(aisfx, clips, batch_size=4)
    alone = np.concatenate([embed_clips(aisfx, [c], batch_size=1) for c in clips])
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-4)


def test_aisfx_spec_identity_and_credit():
    a, b = open_encoder("aisfx"), open_encoder(f"aisfx:{aisfx_checkpoint_path()}")
    assert a.sha256 == b.sha256 and a.sample_rate == 44100 and a.embed_dim == 512
    assert "CC BY 4.0" in a.description["credit"] and "Ma" in a.description["credit"]
    assert a.method == "pretrained:aisfx"


def test_aisfx_checkpoint_errors(tmp_path):
    obj = load_torch_checkpoint(aisfx_checkpoint_path(), _aisfx_globals())
    state = OrderedDict(obj[0])
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_aisfx(tmp_path / "missing.pth")
    # Anything beyond tensors, containers and int64 scalars is refused, unrun.
    torch.save((state, {"made": datetime.date(2022, 12, 4)}), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"refused: the checkpoint holds datetime\.date") as e:
        load_aisfx(tmp_path / "other.pth")
    assert "\n" not in str(e.value)
    broken = OrderedDict(state)
    del broken["embedding_net.conv_block2.conv1.weight"]
    broken["embedding_net.conv_block4.bn2.bias"] = torch.zeros(3)
    torch.save((broken, obj[1]), tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): conv_block2\.conv1\.weight; 1 "
                       r"shape\(s\) differ: conv_block4\.bn2\.bias \(3,\)") as e:
        load_aisfx(tmp_path / "broken.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_aisfx(tmp_path / "junk.pth")


# --- PANNs CNN14: the released layout, a reference forward ---------------------------------

PANNS = {"16k": (16000, 512, 160, 50.0, 8000.0), "32k": (32000, 1024, 320, 50.0, 14000.0)}
CNN14_WIDTHS = (64, 128, 256, 512, 1024, 2048)


def _bn(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_var": 1 + 0.1 * torch.rand(n, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(1000, dtype=torch.int64)}


def _torchlibrosa_frontend(sr: int, n_fft: int, fmin: float, fmax: float) -> dict:
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    w = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), np.arange(n_fft)) / n_fft)
    bins = n_fft // 2 + 1
    return {
        "spectrogram_extractor.stft.conv_real.weight":
            torch.tensor(np.real(w[:, :bins] * window[:, None]).T[:, None, :], dtype=torch.float32),
        "spectrogram_extractor.stft.conv_imag.weight":
            torch.tensor(np.imag(w[:, :bins] * window[:, None]).T[:, None, :], dtype=torch.float32),
        "logmel_extractor.melW": torch.tensor(
            librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=64, fmin=fmin, fmax=fmax).T),
    }


def _cnn14_state(variant: str, seed: int = 0) -> OrderedDict:
    """Cnn14's state dict as audioset_tagging_cnn names and shapes it, random weights."""
    g = torch.Generator().manual_seed(seed)
    sr, n_fft, _, fmin, fmax = PANNS[variant]
    state = OrderedDict(_torchlibrosa_frontend(sr, n_fft, fmin, fmax))
    state.update(_bn("bn0", 64, g))
    c_in = 1
    for i, c in enumerate(CNN14_WIDTHS, start=1):
        state[f"conv_block{i}.conv1.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * (
            2 / (9 * c_in)) ** 0.5
        state[f"conv_block{i}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g) * (
            2 / (9 * c)) ** 0.5
        state.update(_bn(f"conv_block{i}.bn1", c, g))
        state.update(_bn(f"conv_block{i}.bn2", c, g))
        c_in = c
    state["fc1.weight"] = torch.randn(2048, 2048, generator=g) / 2048**0.5
    state["fc1.bias"] = 0.01 * torch.randn(2048, generator=g)
    state["fc_audioset.weight"] = torch.randn(527, 2048, generator=g) / 2048**0.5
    state["fc_audioset.bias"] = torch.zeros(527)
    return state


def _bn_eval(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                        s[f"{p}.bias"], False, 0.0, 1e-5)


def _cnn14_reference(s: dict, x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Cnn14's embedding output in eval mode, from the published definition."""
    x = F.pad(x[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")
    real = F.conv1d(x, s["spectrogram_extractor.stft.conv_real.weight"], stride=hop)
    imag = F.conv1d(x, s["spectrogram_extractor.stft.conv_imag.weight"], stride=hop)
    spec = (real**2 + imag**2)[:, None].transpose(2, 3)  # (B, 1, T, bins)
    mel = spec @ s["logmel_extractor.melW"]
    h = 10 * torch.log10(torch.clamp(mel, min=1e-10))
    h = _bn_eval(h.transpose(1, 3), s, "bn0").transpose(1, 3)
    for i in range(1, 7):
        p = f"conv_block{i}"
        h = F.relu(_bn_eval(F.conv2d(h, s[f"{p}.conv1.weight"], padding=1), s, f"{p}.bn1"))
        h = F.relu(_bn_eval(F.conv2d(h, s[f"{p}.conv2.weight"], padding=1), s, f"{p}.bn2"))
        if i < 6:
            h = F.avg_pool2d(h, 2)
    h = h.mean(dim=3)
    h = h.amax(dim=2) + h.mean(dim=2)
    return F.relu(h @ s["fc1.weight"].T + s["fc1.bias"])


@pytest.fixture(scope="module")
def panns_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("panns")
    files = {}
    for variant in PANNS:
        state = _cnn14_state(variant)
        files[variant] = d / f"Cnn14_{variant}.pth"
        torch.save({"model": state}, files[variant])
    return files


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(PANNS))
def test_panns_released_layout_loads_and_matches_the_reference(panns_files, variant):
    sr, n_fft, hop, *_ = PANNS[variant]
    embedder = load_panns(panns_files[variant])
    assert embedder.frontend.config.sample_rate == sr and embedder.embed_dim == 2048
    g = torch.Generator().manual_seed(3)
    x = 0.1 * torch.randn(2, sr, generator=g)
    state = torch.load(panns_files[variant], weights_only=True)["model"]
    with torch.no_grad():
        ours, ref = embedder(x), _cnn14_reference(state, x, n_fft, hop)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    spec = open_encoder(f"panns:{panns_files[variant]}")
    assert spec.kind == "panns" and spec.sample_rate == sr and "Kong" in spec.description["credit"]


def test_panns_errors(panns_files, tmp_path):
    state = torch.load(panns_files["16k"], weights_only=True)["model"]
    bad = OrderedDict(state)
    del bad["conv_block3.bn1.running_var"]
    bad["fc1.weight"] = torch.zeros(2048, 1024)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): conv_block3\.bn1\.running_var; "
                       r"1 shape\(s\) differ: fc1\.weight \(2048, 1024\)"):
        load_panns(tmp_path / "bad.pth")
    other = OrderedDict(state)
    other["logmel_extractor.melW"] = torch.rand(257, 64)
    torch.save({"model": other}, tmp_path / "melw.pth")
    with pytest.raises(ValueError, match="is not the 16k CNN14 frontend's"):
        load_panns(tmp_path / "melw.pth")
    odd = OrderedDict(state)
    odd["logmel_extractor.melW"] = torch.rand(300, 64)
    torch.save({"model": odd}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"melW has shape \(300, 64\)"):
        load_panns(tmp_path / "odd.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "nest.pth")
    with pytest.raises(ValueError, match=r"expected a state dict of named tensors \(or "
                       r"\{'model': state_dict\}\)"):
        load_panns(tmp_path / "nest.pth")
    with pytest.raises(ValueError, match="give the checkpoint file"):
        open_encoder("panns:")


# --- BYOL-A AudioNTT2020 ----------------------------------------------------------------------


def _byola_state(d: int, seed: int = 0) -> OrderedDict:
    """AudioNTT2020's state dict as byol-a names and shapes it (n_mels 64), random."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for conv, bn, c_in in ((0, 1, 1), (4, 5, 64), (8, 9, 64)):
        state[f"features.{conv}.weight"] = torch.randn(64, c_in, 3, 3, generator=g) * (
            2 / (9 * c_in)) ** 0.5
        state[f"features.{conv}.bias"] = 0.1 * torch.randn(64, generator=g)
        state.update(_bn(f"features.{bn}", 64, g))
    state["fc.0.weight"] = torch.randn(d, 512, generator=g) / 512**0.5
    state["fc.0.bias"] = 0.01 * torch.randn(d, generator=g)
    state["fc.3.weight"] = torch.randn(d, d, generator=g) / d**0.5
    state["fc.3.bias"] = 0.01 * torch.randn(d, generator=g)
    return state


def _byola_reference(s: dict, x: np.ndarray) -> torch.Tensor:
    """BYOL-A's README recipe: torchaudio MelSpectrogram (HTK, no norm, reflect pad; here
    through librosa with those settings), log(x + eps), normalise, AudioNTT2020."""
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=16000, n_fft=1024, win_length=1024, hop_length=160,
        n_mels=64, fmin=60, fmax=7800, htk=True, norm=None, pad_mode="reflect", power=2.0)
    lms = np.log(mel + np.finfo(np.float32).eps)
    h = torch.tensor((lms - BYOLA_STATS[0]) / BYOLA_STATS[1], dtype=torch.float32)[None, None]
    for conv, bn in ((0, 1), (4, 5), (8, 9)):
        h = F.conv2d(h, s[f"features.{conv}.weight"], s[f"features.{conv}.bias"], padding=1)
        h = F.max_pool2d(F.relu(_bn_eval(h, s, f"features.{bn}")), 2)
    h = h.permute(0, 3, 2, 1)  # (batch, time, mel, ch)
    h = h.reshape(h.shape[0], h.shape[1], -1)
    h = F.relu(h @ s["fc.0.weight"].T + s["fc.0.bias"])
    h = F.relu(h @ s["fc.3.weight"].T + s["fc.3.bias"])
    return h.amax(dim=1) + h.mean(dim=1)


@pytest.mark.parametrize("d", [512, 2048])
def test_byola_released_layout_loads_and_matches_the_reference(tmp_path, fsdd_dir, d):
    state = _byola_state(d)
    path = tmp_path / f"AudioNTT2020-BYOLA-64x96d{d}.pth"
    torch.save(state, path)
    embedder = load_byola(path)
    assert embedder.embed_dim == d and embedder.encoder.config.flatten == "band_channel"
    for name in ("0_george_0.wav", "6_lucas_3.wav"):
        x = load_audio(fsdd_dir / name)
        with torch.no_grad():
            ours = embedder(torch.from_numpy(x)[None])
        ref = _byola_reference(state, x)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_byola_padded_batch_equals_each_clip_alone(tmp_path, fsdd_dir):
    from audioclust.models.embedder import embed_clips

    torch.save(_byola_state(512), tmp_path / "b.pth")
    embedder = load_byola(tmp_path / "b.pth")
    clips = [load_audio(fsdd_dir / n) for n in ("0_george_0.wav", "1_jackson_2.wav",
                                                "8_theo_9.wav")]
    batch = embed_clips(embedder, clips, batch_size=3)  # reflect padding at each row's end
    alone = np.concatenate([embed_clips(embedder, [c], batch_size=1) for c in clips])
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-4)


def test_byola_prefixed_snapshots_and_errors(tmp_path):
    state = _byola_state(1024)
    snapshot = {"state_dict": OrderedDict((f"model.online_encoder.{k}", v)
                                          for k, v in state.items())}
    snapshot["state_dict"]["model.projector.0.weight"] = torch.zeros(4, 4)  # not the encoder
    torch.save(snapshot, tmp_path / "snap.pth")
    assert load_byola(tmp_path / "snap.pth").embed_dim == 1024
    both = OrderedDict(snapshot["state_dict"])
    both.update((f"target.{k}", v) for k, v in state.items())
    torch.save(both, tmp_path / "both.pth")
    with pytest.raises(ValueError, match="two keys end in features"):
        load_byola(tmp_path / "both.pth")
    bad = OrderedDict(state)
    del bad["features.5.running_mean"]
    bad["fc.3.bias"] = torch.zeros(7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): features\.5\.running_mean; 1 "
                       r"shape\(s\) differ: fc\.3\.bias \(7,\)"):
        load_byola(tmp_path / "bad.pth")
    torch.save({"x": torch.zeros(2)}, tmp_path / "none.pth")
    with pytest.raises(ValueError, match=r"no features\.\* or fc\.\* keys"):
        load_byola(tmp_path / "none.pth")
    wide = OrderedDict(state)
    wide["fc.0.weight"] = torch.zeros(1024, 768)
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="for 96 mel bands"):
        load_byola(tmp_path / "wide.pth")
