"""Log-mel frontend: 16 kHz waveform (B, T) -> log-mel (B, 1, n_mels, frames).

Plain torch (no torchaudio), so it exports into the ONNX model graph. The STFT is a
strided convolution with fixed Hann-windowed DFT kernels: it exports as a single Conv
node and runs fast on every ONNX Runtime provider. Framing matches librosa's
``center=True`` with zero padding: frames = 1 + T // hop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FrontendConfig", "LogMelFrontend", "mel_filterbank"]


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

    def __post_init__(self) -> None:
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


def mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular Slaney-scale, area-normalised mel filters, shape (n_mels, n_fft//2 + 1)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    return weights


class LogMelFrontend(nn.Module):
    """Waveform (B, T) float in [-1, 1] -> natural-log mel power (B, 1, n_mels, 1 + T//hop)."""

    def __init__(self, config: FrontendConfig | None = None):
        super().__init__()
        self.config = config or FrontendConfig()
        c = self.config
        n_bins = c.n_fft // 2 + 1
        window = np.zeros(c.n_fft)
        offset = (c.n_fft - c.win_length) // 2
        # Periodic Hann, as scipy/librosa use for spectral analysis.
        window[offset : offset + c.win_length] = np.hanning(c.win_length + 1)[:-1]
        t = np.arange(c.n_fft)
        k = np.arange(n_bins)
        phase = 2 * np.pi * np.outer(k, t) / c.n_fft
        kernels = np.concatenate([np.cos(phase), -np.sin(phase)]) * window  # (2*bins, n_fft)
        self.register_buffer(
            "dft", torch.tensor(kernels[:, None, :], dtype=torch.float32), persistent=False
        )
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max)
        self.register_buffer("mel", torch.tensor(fb, dtype=torch.float32), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = F.pad(waveform.unsqueeze(1), (c.n_fft // 2, c.n_fft // 2))
        spec = F.conv1d(x, self.dft, stride=c.hop_length)  # (B, 2*bins, frames)
        n_bins = c.n_fft // 2 + 1
        power = spec[:, :n_bins] ** 2 + spec[:, n_bins:] ** 2
        mel = torch.matmul(self.mel, power)  # (B, n_mels, frames)
        return torch.log(torch.clamp(mel, min=c.log_floor)).unsqueeze(1)
