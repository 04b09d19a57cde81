"""Released pretrained log-mel encoders, loaded from the files users have, without pickle code.

Each becomes an :class:`~audioclust.models.embedder.Embedder` (frontend + normalisation +
encoder from the registry), so it embeds, trains heads, fine-tunes and exports like an
encoder trained here:

- **aisfx**: the sound-effects CNN of Ma and Lerch, "Representation Learning for the
  Automatic Indexing of Sound Effects Libraries", ISMIR 2022 (weights CC BY 4.0, shipped in
  the ``aisfx`` wheel as ``aisfx/models/checkpoint.pth``). Frontend as the package's
  librosa path: peak-normalised 44.1 kHz audio, 2048-point Hann frames every 1024
  samples, 96 HTK mel bands 0-22,050 Hz each summing to 1, ``log10(1e4 x + 1)``, then
  min-max normalisation with the published constants (0, 9.4578).
- **panns**: CNN14 of Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks
  for Audio Pattern Recognition", 2020 (``Cnn14_mAP=0.431.pth``, 32 kHz, or
  ``Cnn14_16k_mAP=0.438.pth``, 16 kHz; ``{'model': state_dict}``). Frontend as
  torchlibrosa's: reflect-padded Hann STFT (1024/320 at 32 kHz, 512/160 at 16 kHz), 64
  Slaney mel bands 50-14,000 Hz (50-8,000 Hz), power in dB (floor 1e-10); ``bn0`` is part
  of the encoder. The variant is read from the file's own frontend tensors, which must
  equal the ones this module computes.
- **byola**: AudioNTT2020 of Niizumi et al., "BYOL for Audio", IJCNN 2021
  (``AudioNTT2020-BYOLA-64x96d{512,1024,2048}.pth``). Frontend as its torchaudio
  ``MelSpectrogram``: 16 kHz, 1024-point Hann frames every 160 samples, reflect padding,
  64 HTK mel bands 60-7,800 Hz with unnormalised triangles, ``ln(x + eps)`` with float32
  eps; normalised with the statistics of BYOL-A's README (mean -5.4919195, std 5.0389895).

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers
only, plus, for aisfx, exactly the numpy scalar type it holds (int64 dataset indices); a
file holding anything else is refused with one line, and no pickle code runs. Keys and
shapes are checked strictly against the architecture; a file that does not fit gets one
line naming the keys or shapes that differ.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audioclust.models.errors import ModelError

from .embedder import Embedder
from .encoders import Aisfx, AudioNTT, AudioNTTConfig, Cnn14
from .frontend import FrontendConfig, dft_kernels, mel_filterbank, window_samples

__all__ = [
    "AISFX_CREDIT",
    "AISFX_FRONTEND",
    "BYOLA_FRONTEND",
    "PANNS_FRONTENDS",
    "PRETRAINED_CREDITS",
    "aisfx_checkpoint_path",
    "load_aisfx",
    "load_byola",
    "load_panns",
    "load_torch_checkpoint",
]

AISFX_FRONTEND = FrontendConfig(
    sample_rate=44100, n_fft=2048, win_length=2048, hop_length=1024, n_mels=96, f_min=0.0,
    f_max=22050.0, mel_scale="htk", mel_norm="sum", compression="log10_shift",
    peak_normalize=True,
)
#: The package's "original" min-max normalisation: min 0, max over its training data.
AISFX_MIN_MAX = (0.0, 9.457798957824707)
AISFX_CREDIT = ("aiSFX (Alison B. Ma and Alexander Lerch, 'Representation Learning for the "
                "Automatic Indexing of Sound Effects Libraries', ISMIR 2022), weights CC BY 4.0, "
                "from the aisfx 0.1.2 package")

PANNS_FRONTENDS = {
    "32k": FrontendConfig(sample_rate=32000, n_fft=1024, win_length=1024, hop_length=320,
                          n_mels=64, f_min=50.0, f_max=14000.0, pad_mode="reflect",
                          compression="db"),
    "16k": FrontendConfig(sample_rate=16000, n_fft=512, win_length=512, hop_length=160,
                          n_mels=64, f_min=50.0, f_max=8000.0, pad_mode="reflect",
                          compression="db"),
}
PANNS_CREDIT = ("PANNs CNN14 (Qiuqiang Kong et al., 'PANNs: Large-Scale Pretrained Audio "
                "Neural Networks for Audio Pattern Recognition', IEEE/ACM TASLP 2020)")

BYOLA_FRONTEND = FrontendConfig(
    sample_rate=16000, n_fft=1024, win_length=1024, hop_length=160, n_mels=64, f_min=60.0,
    f_max=7800.0, log_floor=float(np.finfo(np.float32).eps), mel_scale="htk", mel_norm="none",
    pad_mode="reflect", compression="ln_eps",
)
BYOLA_STATS = (-5.4919195, 5.0389895)
BYOLA_CREDIT = ("BYOL-A AudioNTT2020 (Daisuke Niizumi et al., 'BYOL for Audio: Self-Supervised "
                "Learning for General-Purpose Audio Representation', IJCNN 2021)")

PRETRAINED_CREDITS = {"aisfx": AISFX_CREDIT, "panns": PANNS_CREDIT, "byola": BYOLA_CREDIT}


# --- reading torch checkpoints without running pickle code ---------------------------------


def _numpy_scalar_globals() -> list[Any]:
    """The numpy globals a pickled int64 scalar needs, under both numpy 1 and 2 names."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, np.dtypes.Int64DType]


def load_torch_checkpoint(path: str | os.PathLike, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allowed`` extra globals; one-line
    FileNotFoundError / ModelError for a missing file, a file that is not a checkpoint,
    or one that holds any other object."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(exc))
        if found is None:
            raise ModelError(p, "not a readable PyTorch checkpoint (unpickling failed)"
                             ) from None
        what = next(g for g in found.groups() if g)
        raise ModelError(p, f"refused: the checkpoint holds {what}, which is neither a "
                         "tensor, a plain container nor an allowed numpy scalar (its pickle "
                         "code is not run)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(p, f"not a readable PyTorch checkpoint ({first})") from None


def _listed(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state_strict(module: nn.Module, state: Mapping[str, Any], path: Path, what: str,
                      display: Callable[[str], str] = str) -> None:
    """Load ``state`` into ``module`` if keys and shapes match exactly; else one line
    saying which keys are missing or unexpected and which shapes differ (keys shown as
    ``display`` names them: the file's own names)."""
    expected = module.state_dict()
    missing = [display(k) for k in expected if k not in state]
    unexpected = [display(k) for k in state if k not in expected]
    shapes = [f"{display(k)} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items()
              if k in state and (not torch.is_tensor(state[k]) or state[k].shape != v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape(s) differ: {_listed(shapes, 2)}")
    if problems:
        raise ModelError(path, f"not {what}: " + "; ".join(problems))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _state_dict(obj: Any, path: Path, keys: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensor mapping in ``obj``, unwrapped from the first of ``keys`` it has."""
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj:
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        nest = " or ".join(f"{{'{k}': state_dict}}" for k in keys)
        raise ModelError(path, "expected a state dict of named tensors"
                         + (f" (or {nest})" if keys else ""))
    return dict(obj)


# --- aisfx ---------------------------------------------------------------------------------


def aisfx_checkpoint_path() -> Path:
    """The checkpoint inside the installed ``aisfx`` package (found without importing it)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("aisfx: the aisfx package is not installed (pip install "
                                "--no-deps aisfx==0.1.2, as make setup does), or give "
                                "aisfx:PATH/TO/checkpoint.pth")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"
    if not path.is_file():
        raise FileNotFoundError(f"aisfx: {path}: the package has no checkpoint")
    return path


def load_aisfx(path: str | os.PathLike | None = None) -> Embedder:
    """The aiSFX embedder from its released checkpoint (the installed package's by default).

    The file is a tuple (state dict, {dataset: (index, classes)}); the 512-d embedding net
    (``embedding_net.*``) is loaded, the per-dataset classifiers (``fc.*``) are not used.
    """
    p = Path(path) if path is not None else aisfx_checkpoint_path()
    obj = load_torch_checkpoint(p, _numpy_scalar_globals())
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Mapping):
        obj = obj[0]
    state = _state_dict(obj, p)
    prefix = "embedding_net."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    others = [k for k in state if not k.startswith(prefix) and not k.startswith("fc.")]
    if others:
        raise ModelError(p, f"not an aisfx checkpoint: unexpected {len(others)} key(s): "
                         f"{_listed(others)}")
    encoder = Aisfx()
    load_state_strict(encoder, encoder_state, p, "an aisfx checkpoint (embedding_net.*)")
    lo, hi = AISFX_MIN_MAX
    return Embedder(encoder, AISFX_FRONTEND, mean=lo, std=hi - lo).eval()


# --- PANNs CNN14 ---------------------------------------------------------------------------

_PANNS_FRONTEND_KEYS = ("spectrogram_extractor.stft.conv_real.weight",
                        "spectrogram_extractor.stft.conv_imag.weight",
                        "logmel_extractor.melW")


def _panns_variant(state: Mapping[str, torch.Tensor], path: Path) -> str:
    """The variant whose frontend tensors the file holds (checked value by value)."""
    missing = [k for k in _PANNS_FRONTEND_KEYS if k not in state]
    if missing:
        raise ModelError(path, f"not a PANNs CNN14 checkpoint: missing {len(missing)} "
                         f"key(s): {_listed(missing)}")
    mel = state["logmel_extractor.melW"]
    for variant, c in PANNS_FRONTENDS.items():
        if tuple(mel.shape) != (c.n_fft // 2 + 1, c.n_mels):
            continue
        # torchlibrosa's STFT: the direct DFT's cosine and sine kernels, (bins, 1, n_fft).
        dft = torch.tensor(dft_kernels(window_samples("hann", c.win_length, c.n_fft), c.n_fft),
                           dtype=torch.float32)[:, None, :]
        bins = c.n_fft // 2 + 1
        want = {"spectrogram_extractor.stft.conv_real.weight": dft[:bins],
                "spectrogram_extractor.stft.conv_imag.weight": dft[bins:],
                "logmel_extractor.melW": torch.tensor(mel_filterbank(
                    c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max).T, dtype=torch.float32)}
        for key, value in want.items():
            got = state[key].float()
            if got.shape != value.shape or not torch.allclose(got, value, rtol=1e-3, atol=1e-5):
                raise ModelError(path, f"{key} is not the {variant} CNN14 frontend's (shape "
                                 f"{tuple(got.shape)}): not a released PANNs CNN14 checkpoint")
        return variant
    shapes = ", ".join(f"{v}: ({c.n_fft // 2 + 1}, {c.n_mels})" for v, c in
                       PANNS_FRONTENDS.items())
    raise ModelError(path, f"logmel_extractor.melW has shape {tuple(mel.shape)}; the released "
                     f"CNN14 variants have {shapes}")


def load_panns(path: str | os.PathLike) -> Embedder:
    """A released PANNs CNN14 checkpoint (16 or 32 kHz) as an embedder (2048-d)."""
    p = Path(path)
    state = _state_dict(load_torch_checkpoint(p), p, keys=("model",))
    variant = _panns_variant(state, p)
    encoder_state = {k: v for k, v in state.items()
                     if k not in _PANNS_FRONTEND_KEYS and not k.startswith("fc_audioset.")}
    encoder = Cnn14()
    load_state_strict(encoder, encoder_state, p, f"a PANNs CNN14 ({variant}) checkpoint")
    return Embedder(encoder, PANNS_FRONTENDS[variant]).eval()


# --- BYOL-A AudioNTT2020 -------------------------------------------------------------------

# BYOL-A's nn.Sequential indices -> this project's AudioNTT modules
_BYOLA_LAYERS = {"features.0": "blocks.0.conv", "features.1": "blocks.0.bn",
                 "features.4": "blocks.1.conv", "features.5": "blocks.1.bn",
                 "features.8": "blocks.2.conv", "features.9": "blocks.2.bn",
                 "fc.0": "fc.0", "fc.3": "fc.3"}


def load_byola(path: str | os.PathLike) -> Embedder:
    """A released BYOL-A AudioNTT2020 checkpoint (64 mels; d 512, 1024 or 2048).

    As BYOL-A's own loader: a bare state dict or ``{'state_dict': ...}``; only the
    ``features.*`` and ``fc.*`` keys count, after any prefix (a training snapshot's
    ``online_encoder.`` and the like); two keys that land on one name are an error.
    """
    p = Path(path)
    state = _state_dict(load_torch_checkpoint(p), p, keys=("state_dict",))
    renamed: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for key, value in state.items():
        found = re.search(r"(?:^|\.)((?:features|fc)\..*)$", key)
        if found is None:
            continue
        name = found.group(1)
        if name in seen:
            raise ModelError(p, f"two keys end in {name} (an online and a target network?); "
                             "keep one network's weights")
        seen.add(name)
        layer, _, param = name.rpartition(".")
        renamed[f"{_BYOLA_LAYERS.get(layer, layer)}.{param}"] = value
    if not renamed:
        raise ModelError(p, "not a BYOL-A AudioNTT2020 checkpoint: no features.* or fc.* "
                         "keys")
    fc = renamed.get("fc.0.weight")
    if fc is None or fc.dim() != 2 or fc.shape[1] % 64:
        raise ModelError(p, f"not a BYOL-A AudioNTT2020 checkpoint: fc.0.weight missing or "
                         f"of shape {None if fc is None else tuple(fc.shape)}")
    n_mels = fc.shape[1] // 64 * 8
    if n_mels != BYOLA_FRONTEND.n_mels:
        raise ModelError(p, f"an AudioNTT2020 for {n_mels} mel bands; the released BYOL-A "
                         f"weights take {BYOLA_FRONTEND.n_mels} (64x96)")
    encoder = AudioNTT(AudioNTTConfig(n_mels=n_mels, channels=64, embed_dim=int(fc.shape[0]),
                                      conv_bias=True, flatten="band_channel"))
    back = {v: k for k, v in _BYOLA_LAYERS.items()}

    def released_name(key: str) -> str:
        layer, _, param = key.rpartition(".")
        return f"{back.get(layer, layer)}.{param}"

    load_state_strict(encoder, renamed, p, "a BYOL-A AudioNTT2020 checkpoint", released_name)
    mean, std = BYOLA_STATS
    return Embedder(encoder, BYOLA_FRONTEND, mean=mean, std=std).eval()
