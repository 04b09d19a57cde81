"""Spectrogram frontends in plain torch (no torchaudio), so they export into the ONNX graph.

:func:`stft` (and the :class:`STFT` module behind it) is the one short-time Fourier
transform of the project: every spectrogram frontend calls it. It computes exactly the
one-sided DFT of Hann- (or any-) windowed frames, as ``librosa.stft`` / ``torch.stft``
do, but as a two-stage Cooley-Tukey factorisation written with the operators every ONNX
Runtime provider runs fast: a grouped convolution over the waveform cut into blocks of
``N2`` samples (the first ``N1``-point DFT, with the window and the twiddle factors folded
into its kernels, only the ``N1/2 + 1`` outputs a real input needs) and one matrix product
(the ``N2``-point DFTs, each also giving the mirrored half of the bins). With
``n_fft = N1 * N2`` a frame costs about ``n_fft * (N1 + 2 * N2)`` multiply-adds instead
of the direct DFT's ``n_fft * (n_fft + 2)``: 10x fewer for ``n_fft = 1024`` (N1 = 64,
N2 = 16). The factorisation needs ``N2`` to divide the hop; when no useful ``N2`` does,
the direct DFT (one strided convolution) is used: same results, more arithmetic. ONNX's
own DFT and STFT operators are exact too, but ONNX Runtime 1.32's CPU provider runs them
slower than even the direct DFT convolution (docs/benchmarks.md).

:class:`LogMelFrontend` is the project's log-mel: 16 kHz waveform (B, T) -> log mel power
(B, 1, n_mels, 1 + T // hop), framing as librosa's ``center=True`` with zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "STFT",
    "FrontendConfig",
    "LogMelFrontend",
    "mel_filterbank",
    "stft",
    "window_samples",
]

#: A window by name ("hann", "hamming": periodic, as librosa and scipy use for spectra;
#: "rectangular") or its samples (length ``win_length``).
Window = str | Sequence[float] | np.ndarray


def window_samples(window: Window, win_length: int, n_fft: int) -> np.ndarray:
    """The analysis window as ``n_fft`` float64 samples: ``win_length`` of them centred in
    zeros, as ``librosa.stft`` and ``torch.stft`` place a window shorter than ``n_fft``."""
    if not 0 < win_length <= n_fft:
        raise ValueError(f"need 0 < win_length <= n_fft, got {win_length}, {n_fft}")
    if isinstance(window, str):
        n = np.arange(win_length)
        shapes = {
            "hann": lambda: 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length),
            "hamming": lambda: 0.54 - 0.46 * np.cos(2 * np.pi * n / win_length),
            "rectangular": lambda: np.ones(win_length),
        }
        if window not in shapes:
            raise ValueError(f"unknown window {window!r}; use one of {sorted(shapes)} or "
                             "pass its samples")
        w = shapes[window]()
    else:
        w = np.asarray(window, dtype=np.float64)
        if w.shape != (win_length,):
            raise ValueError(f"window has shape {w.shape}, expected ({win_length},)")
    out = np.zeros(n_fft)
    offset = (n_fft - win_length) // 2
    out[offset : offset + win_length] = w
    return out


def _split(n_fft: int, hop: int) -> int | None:
    """The block size N2 of the cheapest factorisation ``n_fft = N1 * N2`` (N2 divides the
    hop, both even), or None when the direct DFT costs less."""
    bins = n_fft // 2 + 1
    best, best_cost = None, 2 * bins * n_fft  # direct: 2 * bins outputs x n_fft taps
    for n2 in range(2, math.gcd(n_fft, hop) + 1, 2):
        n1 = n_fft // n2
        if hop % n2 or n_fft % n2 or n1 % 2:
            continue
        k1 = n1 // 2 + 1
        cost = n2 * 2 * k1 * n1 + 4 * (n2 + 1) * n2 * k1  # stage 1 + stage 2 per frame
        if cost < best_cost:
            best, best_cost = n2, cost
    return best


def _factorised_kernels(w: np.ndarray, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage-1 conv kernels, stage-2 matrix and the output rows' bins of n_fft = N1 * N2.

    Sample n = N2 n1 + n2 of a frame, bin k = k1 + N1 k2. Stage 1 (per n2, over n1):
    Y[k1, n2] = W_N^(n2 k1) sum_n1 W_N1^(n1 k1) w[n] x[n] for k1 = 0..N1/2. Stage 2 (over
    n2): X[k1 + N1 k2] = sum_n2 W_N2^(n2 k2) Y[k1, n2] ("direct" rows), and, since the
    input is real, X[N1 - k1 + N1 k2] = sum_n2 W_N2^(n2 (k2 + 1)) conj(Y[k1, n2])
    ("mirrored" rows). W_M = exp(-2 pi i / M).
    """
    n_fft = w.size
    n1_size = n_fft // n2
    k1_count = n1_size // 2 + 1
    n1 = np.arange(n1_size)
    k1 = np.arange(k1_count)
    stage1 = np.empty((n2, 2, k1_count, n1_size))
    for r in range(n2):
        phase = 2 * np.pi * (np.outer(k1, n1) / n1_size + (k1 * r / n_fft)[:, None])
        taper = w[n2 * n1 + r]
        stage1[r, 0] = np.cos(phase) * taper
        stage1[r, 1] = -np.sin(phase) * taper
    direct, mirrored = n2 // 2 + 1, n2 // 2
    rows = direct + mirrored
    n2_idx = np.arange(n2)
    stage2 = np.zeros((2, rows, n2, 2))  # (re/im out, row, n2, re/im in)
    bins = np.full((rows, k1_count), -1)
    for q in range(rows):
        mirror = q >= direct
        k2 = q - direct if mirror else q
        theta = 2 * np.pi * n2_idx * (k2 + mirror) / n2
        c, s = np.cos(theta), np.sin(theta)
        sign = -1.0 if mirror else 1.0  # conj(Y) flips the sign of Y's imaginary part
        stage2[0, q, :, 0], stage2[0, q, :, 1] = c, sign * s
        stage2[1, q, :, 0], stage2[1, q, :, 1] = -s, sign * c
        for j in range(k1_count):
            if mirror:
                # k1 = 0 and N1/2 mirror onto bins their direct rows already give
                k = n1_size - j + n1_size * k2 if 0 < j < n1_size // 2 else -1
            else:
                k = j + n1_size * k2
            if k <= n_fft // 2:
                bins[q, j] = k
    return (stage1.reshape(n2 * 2 * k1_count, 1, n1_size), stage2.reshape(2 * rows, 2 * n2),
            bins.reshape(-1))


class STFT(nn.Module):
    """Short-time Fourier transform of (B, T) float waveforms, exact and cheap to run.

    ``forward`` gives (real, imag), each (B, n_fft // 2 + 1, frames), as ``torch.stft``
    with the same centred window, ``onesided=True`` and no normalisation:
    frames = 1 + T // hop_length with ``center`` (the signal padded by n_fft // 2 on both
    sides, ``pad_mode`` "constant" (zeros) or "reflect"), else 1 + (T - n_fft) // hop_length.
    :meth:`power` gives |X|^2 and :meth:`filtered_power` a filterbank applied to it, both
    without putting the bins in order first.

    ``block`` is N2, the factorisation's block size: "auto" takes the cheapest, None the
    direct DFT (one strided convolution with n_fft-tap kernels).
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None,
                 window: Window = "hann", center: bool = True, pad_mode: str = "constant",
                 block: int | str | None = "auto"):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_fft >= 2 and hop_length >= 1, got {n_fft}, {hop_length}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.center, self.pad_mode = center, pad_mode
        self.n_bins = n_fft // 2 + 1
        w = window_samples(window, win_length, n_fft)
        if block == "auto":
            block = _split(n_fft, hop_length)
        elif block is not None and (block < 2 or block % 2 or hop_length % block
                                    or n_fft % block or (n_fft // block) % 2):
            raise ValueError(f"block {block} must be even and divide the hop {hop_length} and "
                             f"n_fft {n_fft} into an even number of blocks")
        self.block: int | None = block
        if self.block is None:
            t, k = np.arange(n_fft), np.arange(self.n_bins)
            phase = 2 * np.pi * np.outer(k, t) / n_fft
            stage1 = (np.concatenate([np.cos(phase), -np.sin(phase)]) * w)[:, None, :]
            stage2, bins = None, np.arange(self.n_bins)
        else:
            stage1, stage2, bins = _factorised_kernels(w, self.block)
        # Constants: persistent=False keeps them out of state dicts (rebuilt from the config).
        self.register_buffer("stage1", torch.tensor(stage1, dtype=torch.float32),
                             persistent=False)
        if stage2 is not None:
            self.register_buffer("stage2", torch.tensor(stage2, dtype=torch.float32),
                                 persistent=False)
        self.rows = bins.size  # computed rows per real/imaginary part, some unused (-1)
        self.bins = bins
        order = np.zeros(self.n_bins, dtype=np.int64)
        order[bins[bins >= 0]] = np.flatnonzero(bins >= 0)
        self.in_order = bool(np.array_equal(order, np.arange(self.rows)))
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def _spectrum(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, 2, rows, frames): real and imaginary parts in the transform's own
        row order (:attr:`bins` gives each row's bin; -1: a row nothing needs)."""
        if waveform.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got {tuple(waveform.shape)}")
        b, t = waveform.shape
        half = self.n_fft // 2
        frames = 1 + (t // self.hop_length if self.center
                      else (t - self.n_fft) // self.hop_length)
        # Exactly the samples the frames cover, a whole number of blocks: with zero
        # padding one Pad both pads and (negative on the right) cuts.
        if self.center and self.pad_mode == "constant":
            x = F.pad(waveform, (half, half - t % self.hop_length))
        else:
            x = waveform
            if self.center:
                x = F.pad(x.unsqueeze(1), (half, half), mode=self.pad_mode).squeeze(1)
            x = x[:, : self.hop_length * (frames - 1) + self.n_fft]
        if self.block is None:
            spec = F.conv1d(x.unsqueeze(1), self.stage1, stride=self.hop_length)
            return spec.reshape(b, 2, self.n_bins, frames)
        n2 = self.block
        blocks = x.reshape(b, -1, n2).transpose(1, 2)  # (B, N2, samples / N2)
        y = F.conv1d(blocks, self.stage1, stride=self.hop_length // n2, groups=n2)
        k1 = self.stage1.shape[0] // (2 * n2)
        z = torch.matmul(self.stage2, y.reshape(b, 2 * n2, k1 * frames))
        return z.reshape(b, 2, self.rows, frames)

    def _in_bin_order(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x if self.in_order else torch.index_select(x, dim, self.order)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self._in_bin_order(self._spectrum(waveform), 2)
        return spec[:, 0], spec[:, 1]

    def power(self, waveform: torch.Tensor) -> torch.Tensor:
        """|STFT|^2, (B, n_fft // 2 + 1, frames)."""
        spec = self._spectrum(waveform)
        return self._in_bin_order(spec[:, 0] ** 2 + spec[:, 1] ** 2, 1)

    def filterbank(self, weights: np.ndarray) -> torch.Tensor:
        """``weights`` (n_filters, n_fft // 2 + 1) rearranged for :meth:`filtered_power`."""
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != self.n_bins:
            raise ValueError(f"filterbank has shape {weights.shape}, expected (n_filters, "
                             f"{self.n_bins})")
        out = np.zeros((weights.shape[0], self.rows))
        used = self.bins >= 0
        out[:, used] = weights[:, self.bins[used]]
        # Both halves: the matrix product adds real^2 and imag^2 while it filters.
        return torch.tensor(np.concatenate([out, out], axis=1), dtype=torch.float32)

    def filtered_power(self, waveform: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
        """``weights @ |STFT|^2``, (B, n_filters, frames), ``filterbank`` from
        :meth:`filterbank` (``weights``)."""
        spec = self._spectrum(waveform)
        b, _, rows, frames = spec.shape
        return torch.matmul(filterbank, (spec * spec).reshape(b, 2 * rows, frames))


@lru_cache(maxsize=16)
def _cached_stft(n_fft: int, hop_length: int, win_length: int | None, window: str | tuple,
                 center: bool, pad_mode: str) -> STFT:
    return STFT(n_fft, hop_length, win_length, window if isinstance(window, str)
                else np.asarray(window), center, pad_mode)


def stft(waveform: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None,
         window: Window = "hann", center: bool = True,
         pad_mode: str = "constant") -> tuple[torch.Tensor, torch.Tensor]:
    """Short-time Fourier transform: (B, T) -> (real, imag), each (B, n_fft//2 + 1, frames).

    The same transform as ``torch.stft(waveform, n_fft, hop_length, win_length, window,
    center, pad_mode, onesided=True, return_complex=True)`` (librosa's ``stft`` likewise),
    with the window given by name or by its ``win_length`` samples. Modules that run it on
    every call (and export it) hold an :class:`STFT` instead; this builds one per setting
    once.
    """
    key = window if isinstance(window, str) else tuple(float(v) for v in window)
    module = _cached_stft(n_fft, hop_length, win_length, key, center, pad_mode)
    return module.to(device=waveform.device)(waveform.float())


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
        self.stft = STFT(c.n_fft, c.hop_length, c.win_length, "hann")
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max)
        self.register_buffer("mel", self.stft.filterbank(fb), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.stft.filtered_power(waveform, self.mel)  # (B, n_mels, frames)
        return torch.log(torch.clamp(mel, min=self.config.log_floor)).unsqueeze(1)
