"""Hugging Face audio encoders from a local folder (``hf:DIR``), feature extraction in torch.

The folder is what ``save_pretrained`` writes (``config.json``, the weights, and usually
``preprocessor_config.json``); it is read with ``local_files_only``, never downloaded.
Needs the ``pretrained`` extra (``transformers``). The feature extractors are rebuilt in
plain torch (torchaudio does not import here), so the whole waveform -> embedding path
exports to ONNX:

- **wav2vec2, HuBERT, WavLM, data2vec-audio** (``model_type`` wav2vec2, hubert, wavlm,
  data2vec-audio): 16 kHz waveform, zero-mean unit-variance per clip when the feature
  extractor's ``do_normalize`` says so (eps 1e-7); the embedding is the mean of the last
  hidden states over the clip's frames.
- **AST** (audio-spectrogram-transformer): Kaldi fbank as ``ASTFeatureExtractor`` computes
  it (25 ms Hann frames every 10 ms without centring, DC removal, pre-emphasis 0.97,
  512-point power spectrum, Kaldi mel banks from 20 Hz, natural log floored at float32
  eps), zero-padded or cut to the model's ``max_length`` frames, then ``(x - mean) / (2 std)``;
  the embedding is the pooled output (mean of the CLS and distillation tokens).
- **CLAP's audio tower** (clap, clap_audio_model): 48 kHz, each clip repeated to 10 s and
  zero-padded ("repeatpad"; longer clips are cut to their first 10 s), 1024-point frames
  every 480 samples with reflect padding, 64 mel bands (HTK unnormalised for
  ``truncation="fusion"``, Slaney otherwise), dB; the embedding is ``audio_embeds`` (the
  projection). A fused model's fusion branch only runs on clips over 10 s, which never
  reach it here, so it is switched off: for the clips it sees, that is the model's own
  computation.

Clips are embedded each at its own length (equal lengths batched), because several of
these models normalise over time with the padding included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audioclust.models.errors import ConfigError, ModelError

from .frontend import (
    STFT,
    FrontendConfig,
    LogMelFrontend,
    compress,
    kaldi_mel_banks,
)

__all__ = ["HF_MODEL_TYPES", "HFEncoder", "load_hf_encoder"]

WAVEFORM_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
HF_MODEL_TYPES = (*WAVEFORM_TYPES, "audio-spectrogram-transformer", "clap", "clap_audio_model")


def _transformers():
    try:
        import transformers
    except ModuleNotFoundError:
        raise ConfigError("hf: encoders need the pretrained extra: pip install "
                          "'audioclust[pretrained]' (transformers)") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # command output stays one line per step
    return transformers


class KaldiFbank(nn.Module):
    """Waveform (B, T) at 16 kHz -> Kaldi log fbank (B, frames, n_mels), as torchaudio's
    ``compliance.kaldi.fbank`` with AST's settings (no dither, no energy)."""

    def __init__(self, n_mels: int = 128, sample_rate: int = 16000):
        super().__init__()
        self.frame, self.hop, n_fft = 400, 160, 512
        # DC removal, then pre-emphasis (the first sample against itself), per frame.
        eye = np.eye(self.frame)
        dc = eye - 1.0 / self.frame
        shift = np.eye(self.frame, k=-1)
        shift[0, 0] = 1.0
        premap = (eye - 0.97 * shift) @ dc
        # Each frame: 400 samples into a 512-point DFT, not centred (snip_edges); the
        # premap makes it the STFT's direct DFT.
        self.stft = STFT(n_fft, self.hop, window=np.hanning(self.frame),  # symmetric: Kaldi's
                         center=False, frame_length=self.frame, premap=premap)
        banks = kaldi_mel_banks(n_mels, n_fft, sample_rate)
        self.register_buffer("mel", self.stft.filterbank(banks), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.stft.filtered_power(waveform, self.mel)
        return compress(mel, "ln", float(np.finfo(np.float32).eps)).transpose(1, 2)


def _mean_over(hidden: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return hidden.mean(dim=1)
    mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < valid[:, None])
    total = torch.where(mask[..., None], hidden, torch.zeros((), dtype=hidden.dtype)).sum(1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)


class HFEncoder(nn.Module):
    """A transformers audio model with its feature extraction: waveform (B, T) at
    :attr:`sample_rate`, ``lengths`` (B,) -> embedding (B, :attr:`embed_dim`)."""

    def __init__(self, model: nn.Module, model_type: str, preprocessor: dict[str, Any],
                 folder: Path):
        super().__init__()
        self.model = model.eval()
        self.model_type = model_type
        self.preprocessor = dict(preprocessor)
        self.folder = folder
        config = model.config
        if model_type in WAVEFORM_TYPES:
            self.sample_rate = int(preprocessor.get("sampling_rate", 16000))
            self.normalize = bool(preprocessor.get("do_normalize", True))
            receptive, stride = 1, 1
            for k, s in zip(config.conv_kernel, config.conv_stride, strict=True):
                receptive += (k - 1) * stride
                stride *= s
            self.min_samples = receptive
            self.embed_dim = int(config.hidden_size)
        elif model_type == "audio-spectrogram-transformer":
            self.sample_rate = int(preprocessor.get("sampling_rate", 16000))
            self.fbank = KaldiFbank(int(config.num_mel_bins), self.sample_rate)
            self.max_frames = int(config.max_length)
            self.ast_norm = (float(preprocessor.get("mean", -4.2677393)),
                             float(preprocessor.get("std", 4.5689974)),
                             bool(preprocessor.get("do_normalize", True)))
            self.min_samples = self.fbank.stft.min_samples
            self.embed_dim = int(config.hidden_size)
        else:  # CLAP's audio tower
            self.sample_rate = int(preprocessor.get("sampling_rate", 48000))
            fusion = preprocessor.get("truncation", "fusion") == "fusion"
            n_fft = int(preprocessor.get("fft_window_size", 1024))
            self.clap_mel = LogMelFrontend(FrontendConfig(
                sample_rate=self.sample_rate, n_fft=n_fft, win_length=n_fft,
                hop_length=int(preprocessor.get("hop_length", 480)),
                n_mels=int(preprocessor.get("feature_size", 64)),
                f_min=float(preprocessor.get("frequency_min", 0)),
                f_max=float(preprocessor.get("frequency_max", 14000)),
                mel_scale="htk" if fusion else "slaney", mel_norm="none" if fusion else "slaney",
                pad_mode="reflect", compression="db"))
            self.max_samples = int(preprocessor.get("max_length_s", 10)) * self.sample_rate
            self.min_samples = 1
            self.embed_dim = int(config.projection_dim)
            audio = model.audio_model.audio_encoder
            audio.enable_fusion = False
            audio.patch_embed.enable_fusion = False

    def describe(self) -> dict[str, Any]:
        return {"name": f"hf:{self.model_type}", "folder": self.folder.name,
                "architecture": type(self.model).__name__,
                "config": json.loads(self.model.config.to_json_string())}

    def randomised(self, seed: int) -> HFEncoder:
        """The same architecture, randomly initialised (the untrained control)."""
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG untouched
            torch.manual_seed(seed)
            model = type(self.model)(self.model.config)
        return HFEncoder(model, self.model_type, self.preprocessor, self.folder).eval()

    def _repeat_pad(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """CLAP's "repeatpad" to max_samples (cut at max_samples when longer)."""
        pos = torch.arange(self.max_samples, device=waveform.device)[None, :]
        length = lengths[:, None].clamp(min=1)
        repeats = torch.div(torch.full_like(length, self.max_samples), length,
                            rounding_mode="floor").clamp(min=1)
        idx = torch.remainder(pos, length).clamp(max=waveform.shape[1] - 1)
        x = torch.gather(waveform, 1, idx.expand(waveform.shape[0], -1))
        return torch.where(pos < repeats * length, x, torch.zeros((), dtype=x.dtype))

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, total = waveform.shape
        if lengths is None:
            lengths = torch.full((b,), total, dtype=torch.long, device=waveform.device)
        lengths = lengths.to(device=waveform.device, dtype=torch.long)
        valid = torch.arange(total, device=waveform.device)[None, :] < lengths[:, None]
        x = torch.where(valid, waveform, torch.zeros((), dtype=waveform.dtype))
        if self.model_type in WAVEFORM_TYPES:
            if self.normalize:
                n = lengths[:, None].to(x.dtype)
                mean = x.sum(1, keepdim=True) / n
                var = torch.where(valid, (x - mean) ** 2, torch.zeros((), dtype=x.dtype)
                                  ).sum(1, keepdim=True) / n
                x = torch.where(valid, (x - mean) / torch.sqrt(var + 1e-7),
                                torch.zeros((), dtype=x.dtype))
            hidden = self.model(input_values=x).last_hidden_state
            frames = self.model._get_feat_extract_output_lengths(lengths)
            return _mean_over(hidden, frames)
        if self.model_type == "audio-spectrogram-transformer":
            fbank = self.fbank(x)  # (B, frames, mels)
            frames = torch.div(lengths - self.fbank.frame, self.fbank.hop,
                               rounding_mode="floor") + 1
            keep = torch.arange(fbank.shape[1], device=x.device)[None, :] < frames[:, None]
            fbank = torch.where(keep[..., None], fbank, torch.zeros((), dtype=fbank.dtype))
            short = self.max_frames - fbank.shape[1]
            fbank = (torch.nn.functional.pad(fbank, (0, 0, 0, short)) if short > 0
                     else fbank[:, : self.max_frames])
            mean, std, normalise = self.ast_norm
            if normalise:
                fbank = (fbank - mean) / (std * 2)
            return self.model(input_values=fbank).pooler_output
        padded = self._repeat_pad(x, lengths)
        mel = self.clap_mel(padded)  # (B, 1, mels, frames)
        return self.model(input_features=mel.transpose(2, 3)).audio_embeds


def load_hf_encoder(folder: str | os.PathLike) -> HFEncoder:
    """The encoder saved in ``folder``; one-line errors for a missing folder, an
    unsupported model type or unreadable weights."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"hf:{path}: no config.json there (a folder written by "
                                "save_pretrained)")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"hf:{path}", f"unreadable config.json ({exc})") from None
    if model_type not in HF_MODEL_TYPES:
        raise ModelError(f"hf:{path}", f"model_type {model_type!r} is not supported; supported: "
                         f"{', '.join(HF_MODEL_TYPES)}")
    preprocessor: dict[str, Any] = {}
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            preprocessor = json.loads(pre.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"hf:{path}", f"unreadable preprocessor_config.json ({exc})") from None
    tf = _transformers()
    cls = (tf.ClapAudioModelWithProjection if model_type.startswith("clap")
           else tf.AutoModel)
    try:
        model = cls.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"hf:{path}", f"cannot load the model ({first})") from None
    return HFEncoder(model, model_type, preprocessor, path).eval()
