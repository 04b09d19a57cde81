"""Log-mel frontend: waveform (B, T) -> log-mel (B, 1, n_mels, frames).

Plain torch (no torchaudio), so it exports into the ONNX model graph. The STFT is a
strided convolution with fixed Hann-windowed DFT kernels: it exports as a single Conv
node and runs fast on every ONNX Runtime provider. Framing matches librosa's
``center=True``: frames = 1 + T // hop.

:func:`stft_power` is the one STFT of the project: every spectrogram frontend calls it.
The defaults of :class:`FrontendConfig` are the project's own log-mel (BYOL-A's settings,
Slaney mel, natural log); its other fields reproduce the frontends pretrained encoders
were trained with (``models/pretrained.py`` names them): HTK mel
bands with or without area normalisation (torchaudio's and librosa's ``htk=True``),
reflect padding at the clip edges (torchlibrosa, torchaudio), decibels, ``log(x + eps)``
and ``log10(1e4 x + 1)`` compression, and per-clip peak normalisation of the waveform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FrontendConfig", "LogMelFrontend", "compress", "dft_kernels", "kaldi_mel_banks",
           "mel_filterbank", "peak_normalize", "stft_power"]

MEL_SCALES = ("slaney", "htk")
#: "slaney": each triangle scaled to unit area (2 / width in Hz, librosa's norm="slaney");
#: "sum": each filter's weights sum to 1 (librosa's norm=1); "none": peak 1 (torchaudio).
MEL_NORMS = ("slaney", "sum", "none")
PAD_MODES = ("constant", "reflect")
#: "ln": ln(max(x, floor)); "ln_eps": ln(x + floor); "db": 10 log10(max(x, floor));
#: "log10_shift": log10(1e4 x + 1) (Essentia's shift_scale_log; floor unused).
COMPRESSIONS = ("ln", "ln_eps", "db", "log10_shift")


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel parameters; the defaults are the research notes' (BYOL-A's) settings."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    # Power floor before the log: -138 dB, far below 16-bit quantisation noise, so
    # digital silence maps to a finite value instead of -inf.
    log_floor: float = 1e-10
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    pad_mode: str = "constant"  # how center=True pads the clip's two edges
    compression: str = "ln"
    peak_normalize: bool = False  # divide each clip by its peak |sample| first

    def __post_init__(self) -> None:
        for name, allowed in (("mel_scale", MEL_SCALES), ("mel_norm", MEL_NORMS),
                              ("pad_mode", PAD_MODES), ("compression", COMPRESSIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}"
            )
        if min(self.hop_length, self.n_mels, self.n_fft) <= 0 or self.log_floor <= 0:
            raise ValueError("hop_length, n_mels, n_fft and log_floor must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    @property
    def min_samples(self) -> int:
        """Shortest clip the padding accepts: reflection needs more than n_fft // 2."""
        return self.n_fft // 2 + 1 if self.pad_mode == "reflect" else 1


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's auditory scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz,
        min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
        f / f_sp,
    )


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * f_sp)


def _hz_to_mel_htk(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                   scale: str = "slaney", norm: str = "slaney") -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft//2 + 1); see :data:`MEL_NORMS`."""
    to_mel, to_hz = ((_hz_to_mel, _mel_to_hz) if scale == "slaney"
                     else (_hz_to_mel_htk, _mel_to_hz_htk))
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = to_hz(np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2))
    widths = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    elif norm == "sum":
        sums = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, sums, out=weights, where=sums > 0)
    return weights


def dft_kernels(window: np.ndarray, n_fft: int,
                premap: np.ndarray | None = None) -> torch.Tensor:
    """The STFT's kernels (2 * bins, 1, len(window)) for :func:`stft_power`: the windowed
    cosine and negated sine rows of an ``n_fft``-point DFT of a ``len(window)``-sample
    frame (zero-padded to ``n_fft`` when shorter). ``premap`` (L, L), a linear map applied
    to each frame before the window (Kaldi's DC removal and pre-emphasis), folds in."""
    t = np.arange(len(window))
    k = np.arange(n_fft // 2 + 1)
    phase = 2 * np.pi * np.outer(k, t) / n_fft
    kernels = np.concatenate([np.cos(phase), -np.sin(phase)]) * window  # (2*bins, L)
    if premap is not None:
        kernels = kernels @ premap
    return torch.tensor(kernels[:, None, :], dtype=torch.float32)


def stft_power(
    waveform: torch.Tensor,
    kernels: torch.Tensor,
    hop_length: int,
    pad_mode: str = "constant",
    lengths: torch.Tensor | None = None,
    center: bool = True,
) -> torch.Tensor:
    """Power spectrogram (B, bins, frames) of ``waveform`` (B, T); the project's one STFT.

    ``kernels`` (2 * bins, 1, L) come from :func:`dft_kernels`. ``center``: frames are
    centred on every hop (padding L // 2 each side: 1 + T // hop frames); else they start
    at sample 0 and stop inside the clip (1 + (T - L) // hop, Kaldi's snip_edges).
    ``pad_mode="reflect"`` mirrors each clip at its edges; with ``lengths`` (B,) the end
    of each zero-padded row is mirrored at its own length, so every frame of a row that
    its clip alone would have is computed exactly as for that clip alone.
    """
    half = kernels.shape[-1] // 2 if center else 0
    if pad_mode == "constant" or not center:
        x = F.pad(waveform.unsqueeze(1), (half, half))
    elif lengths is None:
        x = F.pad(waveform.unsqueeze(1), (half, half), mode="reflect")
    else:
        # Gather the mirrored samples: position i (in -half .. T + half) reads sample |i|,
        # folded back at the row's last sample 2 (L - 1) - i beyond its length L.
        total = waveform.shape[1]
        pos = torch.arange(-half, total + half, device=waveform.device).abs()[None, :]
        last = (lengths.to(device=waveform.device, dtype=torch.long) - 1)[:, None]
        idx = torch.where(pos > last, 2 * last - pos, pos).clamp(0, total - 1)
        x = torch.gather(waveform, 1, idx).unsqueeze(1)
    spec = F.conv1d(x, kernels, stride=hop_length)  # (B, 2*bins, frames)
    n_bins = kernels.shape[0] // 2
    return spec[:, :n_bins] ** 2 + spec[:, n_bins:] ** 2


def kaldi_mel_banks(n_mels: int, n_fft: int, sr: float, f_min: float = 20.0,
                    f_max: float = 0.0) -> np.ndarray:
    """Kaldi's mel filters (n_mels, n_fft//2 + 1): triangles in mel space (1127 ln(1 + f/700))
    evenly between ``f_min`` and ``f_max`` (<= 0: relative to Nyquist), peak 1; the
    Nyquist bin gets no weight (Kaldi's num_fft_bins = n_fft / 2)."""
    nyquist = sr / 2
    high = f_max if f_max > 0 else nyquist + f_max

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = mel(f_min), mel(high)
    delta = (hi - lo) / (n_mels + 1)
    left = lo + np.arange(n_mels)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    bins = mel(sr / n_fft * np.arange(n_fft // 2))[None, :]
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    weights = np.maximum(0.0, np.minimum(up, down))
    return np.pad(weights, ((0, 0), (0, 1)))


def compress(mel: torch.Tensor, kind: str, floor: float) -> torch.Tensor:
    """Log compression of mel power; see :data:`COMPRESSIONS`."""
    if kind == "ln":
        return torch.log(torch.clamp(mel, min=floor))
    if kind == "ln_eps":
        return torch.log(mel + floor)
    if kind == "db":
        return 10.0 * torch.log10(torch.clamp(mel, min=floor))
    if kind == "log10_shift":
        return torch.log10(mel * 1e4 + 1.0)
    raise ValueError(f"unknown compression {kind!r}; known: {', '.join(COMPRESSIONS)}")


def peak_normalize(waveform: torch.Tensor) -> torch.Tensor:
    """Each row divided by its peak |sample|; silent rows unchanged. Zero padding never
    raises a peak, so padded rows scale as their clips would alone."""
    peak = waveform.abs().amax(dim=1, keepdim=True)
    return waveform / torch.where(peak > 0, peak, torch.ones_like(peak))


class LogMelFrontend(nn.Module):
    """Waveform (B, T) float in [-1, 1] -> log mel power (B, 1, n_mels, 1 + T//hop)."""

    def __init__(self, config: FrontendConfig | None = None):
        super().__init__()
        self.config = config or FrontendConfig()
        c = self.config
        window = np.zeros(c.n_fft)
        offset = (c.n_fft - c.win_length) // 2
        # Periodic Hann, as scipy/librosa use for spectral analysis.
        window[offset : offset + c.win_length] = np.hanning(c.win_length + 1)[:-1]
        self.register_buffer("dft", dft_kernels(window, c.n_fft), persistent=False)
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale,
                            c.mel_norm)
        self.register_buffer("mel", torch.tensor(fb, dtype=torch.float32), persistent=False)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,): real samples per zero-padded row (reflect padding needs it)."""
        c = self.config
        if c.peak_normalize:
            waveform = peak_normalize(waveform)
        power = stft_power(waveform, self.dft, c.hop_length, c.pad_mode, lengths)
        mel = torch.matmul(self.mel, power)  # (B, n_mels, frames)
        return compress(mel, c.compression, c.log_floor).unsqueeze(1)
