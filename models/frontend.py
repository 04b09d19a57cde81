"""Spectrogram frontends in plain torch (no torchaudio), so they export into the ONNX graph.

:class:`STFT` (and the :func:`stft` function in front of it) is the one short-time Fourier
transform of the project: every spectrogram frontend calls it (the log-mel below, the
pretrained encoders' frontends in ``models/pretrained.py``, the Kaldi fbank and CLAP mel
in ``models/hf.py``). It computes exactly the one-sided DFT of windowed frames, as
``librosa.stft`` / ``torch.stft`` do, but as a two-stage Cooley-Tukey factorisation
written with the operators every ONNX Runtime provider runs fast: a grouped convolution
over the waveform cut into blocks of ``N2`` samples (the first ``N1``-point DFT, with the
window and the twiddle factors folded into its kernels, only the ``N1/2 + 1`` outputs a
real input needs) and one matrix product (the ``N2``-point DFTs, each also giving the
mirrored half of the bins). With ``n_fft = N1 * N2`` a frame costs about
``n_fft * (N1 + 2 * N2)`` multiply-adds instead of the direct DFT's ``n_fft * (n_fft + 2)``:
10x fewer for ``n_fft = 1024`` (N1 = 64, N2 = 16). The factorisation needs ``N2`` to divide
the hop, and a frame that is the window times the samples; when no useful ``N2`` divides
the hop, or a per-frame linear map (``premap``: Kaldi's DC removal and pre-emphasis) mixes
the samples first, the direct DFT (one strided convolution) is used: same results, more
arithmetic. ONNX's own DFT and STFT operators are exact too, but ONNX Runtime 1.32's CPU
provider runs them slower than even the direct DFT convolution (docs/benchmarks.md).

Framing covers what the pretrained frontends need: centred frames with zero or reflect
padding (reflected per row at its own length when ``lengths`` are given, so a zero-padded
batch row gives its clip's frames exactly), or frames from sample 0 that stop inside the
clip (Kaldi's snip_edges), and frames shorter than ``n_fft`` zero-padded at their end (Kaldi
reads 400 samples into a 512-point DFT).

:class:`LogMelFrontend` is the project's log-mel: waveform (B, T) -> log mel power
(B, 1, n_mels, 1 + T // hop), framing as librosa's ``center=True``. The defaults of
:class:`FrontendConfig` are the project's own (BYOL-A's settings, Slaney mel, zero
padding, natural log); its other fields reproduce the frontends pretrained encoders were
trained with: HTK mel bands with or without area normalisation (torchaudio's and
librosa's ``htk=True``), reflect padding at the clip edges (torchlibrosa, torchaudio),
decibels, ``log(x + eps)`` and ``log10(1e4 x + 1)`` compression, and per-clip peak
normalisation of the waveform.
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

from audioclust.models.errors import ConfigError, DataError

__all__ = [
    "STFT",
    "FrontendConfig",
    "LogMelFrontend",
    "compress",
    "dft_kernels",
    "kaldi_mel_banks",
    "mel_filterbank",
    "peak_normalize",
    "stft",
    "window_samples",
]

MEL_SCALES = ("slaney", "htk")
#: "slaney": each triangle scaled to unit area (2 / width in Hz, librosa's norm="slaney");
#: "sum": each filter's weights sum to 1 (librosa's norm=1); "none": peak 1 (torchaudio).
MEL_NORMS = ("slaney", "sum", "none")
PAD_MODES = ("constant", "reflect")
#: "ln": ln(max(x, floor)); "ln_eps": ln(x + floor); "db": 10 log10(max(x, floor));
#: "log10_shift": log10(1e4 x + 1) (Essentia's shift_scale_log; floor unused).
COMPRESSIONS = ("ln", "ln_eps", "db", "log10_shift")

#: A window by name ("hann", "hamming": periodic, as librosa and scipy use for spectra;
#: "rectangular") or its samples (length ``win_length``).
Window = str | Sequence[float] | np.ndarray


def window_samples(window: Window, win_length: int, n_fft: int) -> np.ndarray:
    """The analysis window as ``n_fft`` float64 samples: ``win_length`` of them centred in
    zeros, as ``librosa.stft`` and ``torch.stft`` place a window shorter than ``n_fft``."""
    if not 0 < win_length <= n_fft:
        raise ConfigError(f"need 0 < win_length <= {n_fft} (the frame), got {win_length}")
    if isinstance(window, str):
        n = np.arange(win_length)
        shapes = {
            "hann": lambda: 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length),
            "hamming": lambda: 0.54 - 0.46 * np.cos(2 * np.pi * n / win_length),
            "rectangular": lambda: np.ones(win_length),
        }
        if window not in shapes:
            raise ConfigError(f"unknown window {window!r}; use one of {sorted(shapes)} or "
                              "pass its samples")
        w = shapes[window]()
    else:
        w = np.asarray(window, dtype=np.float64)
        if w.shape != (win_length,):
            raise ConfigError(f"window has shape {w.shape}, expected ({win_length},)")
    out = np.zeros(n_fft)
    offset = (n_fft - win_length) // 2
    out[offset : offset + win_length] = w
    return out


def dft_kernels(window: np.ndarray, n_fft: int, premap: np.ndarray | None = None) -> np.ndarray:
    """The direct DFT's kernels (2 * (n_fft // 2 + 1), L), float64: the windowed cosine and
    negated sine rows of an ``n_fft``-point DFT of an L-sample frame (``window`` has the L
    samples; zero-padded to ``n_fft`` at the end when shorter). ``premap`` (L, L), a linear
    map applied to each frame before the window, folds in."""
    t = np.arange(len(window))
    k = np.arange(n_fft // 2 + 1)
    phase = 2 * np.pi * np.outer(k, t) / n_fft
    kernels = np.concatenate([np.cos(phase), -np.sin(phase)]) * np.asarray(window)
    return kernels if premap is None else kernels @ premap


def _split(n_fft: int, hop: int, taps: int) -> int | None:
    """The block size N2 of the cheapest factorisation ``n_fft = N1 * N2`` (N2 divides the
    hop, both even), or None when the direct DFT (``taps`` samples a frame) costs less."""
    bins = n_fft // 2 + 1
    best, best_cost = None, 2 * bins * taps  # direct: 2 * bins outputs x taps
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


def _reflect_rows(waveform: torch.Tensor, lengths: torch.Tensor, half: int) -> torch.Tensor:
    """(B, T) -> (B, T + 2 half): each row reflected at sample 0 and at its own last sample
    ``lengths - 1``, as its clip alone would be padded (the zero padding beyond is unread
    by every frame the clip alone has)."""
    total = waveform.shape[1]
    # Position i (in -half .. T + half) reads sample |i|, folded back at the row's last
    # sample to 2 (L - 1) - i beyond its length L.
    pos = torch.arange(-half, total + half, device=waveform.device).abs()[None, :]
    last = (lengths.to(device=waveform.device, dtype=torch.long) - 1)[:, None]
    idx = torch.where(pos > last, 2 * last - pos, pos).clamp(0, total - 1)
    return torch.gather(waveform, 1, idx)


class STFT(nn.Module):
    """Short-time Fourier transform of (B, T) float waveforms, exact and cheap to run.

    ``forward`` gives (real, imag), each (B, n_fft // 2 + 1, frames), as ``torch.stft``
    with the same centred window, ``onesided=True`` and no normalisation. A frame reads
    ``frame_length`` samples (default ``n_fft``; a shorter frame is zero-padded to
    ``n_fft`` at its end, as Kaldi pads it), the window (``win_length`` samples) centred
    in it. With ``center`` the signal is padded by frame_length // 2 on both sides
    (``pad_mode`` "constant" (zeros) or "reflect") and frames = 1 + T // hop_length (for
    an even frame); else frames start at sample 0 and stop inside the clip: 1 + (T -
    frame_length) // hop_length. ``premap`` (frame_length, frame_length) is a linear map
    applied to every frame before the window (Kaldi's DC removal and pre-emphasis).

    :meth:`power` gives |X|^2 and :meth:`filtered_power` a filterbank applied to it, both
    without putting the bins in order first. Each takes ``lengths`` (B,), the real samples
    of zero-padded rows, which reflect padding needs to mirror each row at its own end.

    ``block`` is N2, the factorisation's block size: "auto" takes the cheapest, None the
    direct DFT (one strided convolution with frame_length-tap kernels), which a
    ``premap`` always takes.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None,
                 window: Window = "hann", center: bool = True, pad_mode: str = "constant",
                 block: int | str | None = "auto", frame_length: int | None = None,
                 premap: np.ndarray | None = None):
        super().__init__()
        frame_length = n_fft if frame_length is None else frame_length
        win_length = frame_length if win_length is None else win_length
        if n_fft < 2 or hop_length < 1:
            raise ConfigError(f"need n_fft >= 2 and hop_length >= 1, got {n_fft}, {hop_length}")
        if not 0 < frame_length <= n_fft:
            raise ConfigError(f"need 0 < frame_length <= n_fft, got {frame_length}, {n_fft}")
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.frame_length, self.center, self.pad_mode = frame_length, center, pad_mode
        self.n_bins = n_fft // 2 + 1
        w = window_samples(window, win_length, frame_length)
        if premap is not None:
            premap = np.asarray(premap, dtype=np.float64)
            if premap.shape != (frame_length, frame_length):
                raise ConfigError(f"premap has shape {premap.shape}, expected ({frame_length}, "
                                  f"{frame_length})")
            if block not in ("auto", None):
                raise ConfigError("a premap mixes each frame's samples: it needs the direct DFT "
                                  f"(block None), got block {block}")
            block = None
        elif block == "auto":
            block = _split(n_fft, hop_length, frame_length)
        elif block is not None and (block < 2 or block % 2 or hop_length % block
                                    or n_fft % block or (n_fft // block) % 2):
            raise ConfigError(f"block {block} must be even and divide the hop {hop_length} and "
                              f"n_fft {n_fft} into an even number of blocks")
        self.block: int | None = block
        if self.block is None:
            stage1, stage2 = dft_kernels(w, n_fft, premap)[:, None, :], None
            bins = np.arange(self.n_bins)
        else:
            frame = np.zeros(n_fft)
            frame[:frame_length] = w
            stage1, stage2, bins = _factorised_kernels(frame, self.block)
        # Samples a frame's kernels span: the direct DFT's the frame, the factorised n_fft.
        self.taps = frame_length if self.block is None else n_fft
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

    @property
    def min_samples(self) -> int:
        """Shortest waveform framed: a whole frame without centring, more than half a
        frame to reflect."""
        if not self.center:
            return self.frame_length
        return self.frame_length // 2 + 1 if self.pad_mode == "reflect" else 1

    @property
    def _reach(self) -> int:
        """Padded samples minus frame length, less the clip's length: the last frame
        starts at most ``T + _reach`` in (0 for a centred even frame)."""
        if self.center:
            return 2 * (self.frame_length // 2) - self.frame_length
        return -self.frame_length

    def num_frames(self, num_samples: int) -> int:
        reach = self._reach
        return 1 + (num_samples + reach if reach else num_samples) // self.hop_length

    def _framed(self, waveform: torch.Tensor, lengths: torch.Tensor | None
                ) -> tuple[torch.Tensor, int]:
        """The padded waveform cut to exactly the samples the frames' kernels cover (a
        whole number of blocks), and the number of frames."""
        if waveform.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got {tuple(waveform.shape)}")
        t = waveform.shape[1]
        if not torch.compiler.is_exporting() and t < self.min_samples:
            raise DataError(f"the STFT needs at least {self.min_samples} samples, got {t}")
        frames = self.num_frames(t)
        # The kernels read hop * (frames - 1) + taps samples of the padded clip; written
        # so that the exported graph's shape arithmetic stays one Mod and one Sub.
        reach = self._reach
        spare = (t + reach if reach else t) % self.hop_length
        half = self.frame_length // 2 if self.center else 0
        if self.center and self.pad_mode == "reflect":
            if lengths is None:
                x = F.pad(waveform.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
            else:
                x = _reflect_rows(waveform, lengths, half)
            return F.pad(x, (0, reach + self.taps - 2 * half - spare)), frames
        # Zero padding: one Pad both pads and (negative on the right) cuts.
        return F.pad(waveform, (half, reach + self.taps - half - spare)), frames

    def _spectrum(self, waveform: torch.Tensor,
                  lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, 2, rows, frames): real and imaginary parts in the transform's own
        row order (:attr:`bins` gives each row's bin; -1: a row nothing needs)."""
        x, frames = self._framed(waveform, lengths)
        b = x.shape[0]
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

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self._in_bin_order(self._spectrum(waveform, lengths), 2)
        return spec[:, 0], spec[:, 1]

    def power(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """|STFT|^2, (B, n_fft // 2 + 1, frames)."""
        spec = self._spectrum(waveform, lengths)
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

    def filtered_power(self, waveform: torch.Tensor, filterbank: torch.Tensor,
                       lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``weights @ |STFT|^2``, (B, n_filters, frames), ``filterbank`` from
        :meth:`filterbank` (``weights``)."""
        spec = self._spectrum(waveform, lengths)
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
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    pad_mode: str = "constant"  # how center=True pads the clip's two edges
    compression: str = "ln"
    peak_normalize: bool = False  # divide each clip by its peak |sample| first

    def __post_init__(self) -> None:
        for name, allowed in (("mel_scale", MEL_SCALES), ("mel_norm", MEL_NORMS),
                              ("pad_mode", PAD_MODES), ("compression", COMPRESSIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}"
            )
        if min(self.hop_length, self.n_mels, self.n_fft) <= 0 or self.log_floor <= 0:
            raise ConfigError("hop_length, n_mels, n_fft and log_floor must be positive")

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
        self.stft = STFT(c.n_fft, c.hop_length, c.win_length, "hann", pad_mode=c.pad_mode)
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale,
                            c.mel_norm)
        self.register_buffer("mel", self.stft.filterbank(fb), persistent=False)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,): real samples per zero-padded row (reflect padding needs it)."""
        c = self.config
        if c.peak_normalize:
            waveform = peak_normalize(waveform)
        mel = self.stft.filtered_power(waveform, self.mel, lengths)  # (B, n_mels, frames)
        return compress(mel, c.compression, c.log_floor).unsqueeze(1)
