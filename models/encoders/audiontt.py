"""AudioNTT: the convolutional encoder of BYOL for Audio (Niizumi et al., 2021).

Log-mel (B, 1, n_mels, T) -> clip embedding (B, d):

1. three conv blocks, each 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool, so frequency
   and time shrink 8x (64 mels -> 8 bands, T frames -> T // 8 frames);
2. per frame, the channels x bands are flattened (channel-major; ``flatten="band_channel"``
   is band-major, the order of BYOL-A's released AudioNTT2020) and passed through
   Linear(d) -> ReLU -> Dropout -> Linear(d) -> ReLU;
3. temporal pooling: mean over frames + max over frames.

Minimum input length: :data:`MIN_FRAMES` = 8 frames (80 ms at hop 160 / 16 kHz), the
shortest input that leaves one frame after the three poolings.

Variable length: ``forward(logmel, lengths)`` gives each clip's count of valid frames. Padded
frames are zeroed before every conv block (so each conv sees exactly the zero padding it
would see at the end of the unpadded clip), excluded from the batch statistics of
BatchNorm in training, and excluded from the mean and max pooling. In eval mode the
embedding of a padded clip therefore equals the embedding of the clip alone. A clip of L
frames contributes ``L // 8`` frames to the pooling: its last ``L % 8`` frames are dropped
by the poolings' floor, exactly as they are without padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from audioclust.models.errors import ConfigError

__all__ = ["MIN_FRAMES", "AudioNTT", "AudioNTTConfig", "check_logmel", "frame_mask"]

_NUM_BLOCKS = 3
_REDUCTION = 2**_NUM_BLOCKS
MIN_FRAMES = _REDUCTION


@dataclass(frozen=True)
class AudioNTTConfig:
    """AudioNTT hyperparameters. ``embed_dim`` 512 suits CPU training; BYOL-A uses 2048."""

    n_mels: int = 64
    channels: int = 64
    embed_dim: int = 512
    dropout: float = 0.3
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    conv_bias: bool = False  # BYOL-A's released weights have conv biases
    flatten: str = "channel_band"  # or "band_channel" (BYOL-A's AudioNTT2020)

    def __post_init__(self) -> None:
        if self.flatten not in ("channel_band", "band_channel"):
            raise ConfigError(f"flatten must be channel_band or band_channel, got "
                              f"{self.flatten!r}")
        if self.n_mels < _REDUCTION or self.n_mels % _REDUCTION:
            raise ConfigError(
                f"n_mels must be a positive multiple of {_REDUCTION}, got {self.n_mels}"
            )
        if self.channels <= 0 or self.embed_dim <= 0:
            raise ConfigError("channels and embed_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.bn_momentum <= 1.0 or self.bn_eps <= 0:
            raise ConfigError("bn_momentum must be in (0, 1] and bn_eps positive")

    def to_dict(self) -> dict:
        return asdict(self)


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B,) valid-frame counts -> (B, num_frames) bool, True on valid frames."""
    return torch.arange(num_frames, device=lengths.device) < lengths[:, None]


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, F, T) with its padded frames (``mask`` (B, T) False) set to zero."""
    # A product with the 0/1 mask rather than a select: the same values for finite input,
    # and ONNX Runtime's broadcasting Mul runs faster than its Where (docs/benchmarks.md).
    return x * mask[:, None, None, :].to(x.dtype)


def check_logmel(x: torch.Tensor, lengths: torch.Tensor | None, n_mels: int, min_frames: int,
                 name: str) -> None:
    """One-line errors for input that is not log-mel (B, 1, n_mels, T >= min_frames), or
    ``lengths`` outside [min_frames, T]. Shared by the log-mel encoders."""
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != n_mels:
        raise ValueError(f"expected log-mel (B, 1, {n_mels}, T), got {tuple(x.shape)}")
    if torch.compiler.is_exporting():
        # Exported graphs get their minimum length from the dynamic-shape bounds.
        return
    if x.shape[-1] < min_frames:
        raise ValueError(f"{name} needs at least {min_frames} frames, got {x.shape[-1]}")
    if lengths is not None:
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"lengths must have shape ({x.shape[0]},), got "
                              f"{tuple(lengths.shape)}")
        if bool((lengths < min_frames).any()) or bool((lengths > x.shape[-1]).any()):
            raise ValueError(f"every length must be in [{min_frames}, {x.shape[-1]}], "
                              f"got {lengths.tolist()}")


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics can skip padded time frames.

    With ``mask`` (B, T) given in training mode, the batch mean and variance, and so the
    running statistics, come from the valid frames only; padding would otherwise pull
    them towards the padding's activations. Without a mask, or in eval mode, this is
    plain :class:`torch.nn.BatchNorm2d` (same parameters, same state dict).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        weight = mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, T)
        count = weight.sum() * x.shape[2]
        mean = (x * weight).sum(dim=(0, 2, 3)) / count
        centred = x - mean[None, :, None, None]
        var = (centred.square() * weight).sum(dim=(0, 2, 3)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                # Running variance is unbiased, as in BatchNorm2d.
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, momentum: float, eps: float,
                 bias: bool = False):
        super().__init__()
        # No conv bias by default: BatchNorm's shift replaces it.
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.bn = MaskedBatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x), mask)))


class AudioNTT(nn.Module):
    """AudioNTT encoder: log-mel (B, 1, n_mels, T >= 8) -> (B, embed_dim)."""

    def __init__(self, config: AudioNTTConfig | None = None):
        super().__init__()
        self.config = config or AudioNTTConfig()
        c = self.config
        self.embed_dim: int = c.embed_dim
        self.min_frames: int = MIN_FRAMES
        self.blocks = nn.ModuleList(
            _ConvBlock(1 if i == 0 else c.channels, c.channels, c.bn_momentum, c.bn_eps,
                       c.conv_bias)
            for i in range(_NUM_BLOCKS)
        )
        self.fc = nn.Sequential(
            nn.Linear(c.channels * (c.n_mels // _REDUCTION), c.embed_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(c.dropout),
            nn.Linear(c.embed_dim, c.embed_dim),
            nn.ReLU(inplace=True),
        )

    def _check(self, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
        check_logmel(x, lengths, self.config.n_mels, self.min_frames, "AudioNTT")

    def frame_embeddings(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-frame features (B, T // 8, d) and their validity mask (None without lengths)."""
        self._check(x, lengths)
        mask = None
        if lengths is not None:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            mask = frame_mask(lengths, x.shape[-1])
            # Whatever the padding holds, the convs must see zeros there.
            x = _zero_padding(x, mask)
        h = x
        for block in self.blocks:
            h = block(h, mask)
            if lengths is not None:
                lengths = lengths // 2
                mask = frame_mask(lengths, h.shape[-1])
                # Frames the unpadded clip would not have must be zero for the next conv.
                h = _zero_padding(h, mask)
        b, ch, bands, frames = h.shape
        order = (0, 3, 1, 2) if self.config.flatten == "channel_band" else (0, 3, 2, 1)
        h = h.permute(*order).reshape(b, frames, ch * bands)
        return self.fc(h), mask

    def forward(self, logmel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Clip embeddings (B, d); ``lengths`` (B,) counts each clip's valid frames.

        The argument names are the exported ONNX graph's input names.
        """
        frames, mask = self.frame_embeddings(logmel, lengths)
        if mask is None:
            return frames.mean(dim=1) + frames.amax(dim=1)
        valid = mask[..., None]
        count = valid.sum(dim=1).to(frames.dtype)
        mean = torch.where(valid, frames, torch.zeros((), dtype=frames.dtype)).sum(dim=1) / count
        peak = torch.where(valid, frames, torch.full((), float("-inf"), dtype=frames.dtype))
        return mean + peak.amax(dim=1)
