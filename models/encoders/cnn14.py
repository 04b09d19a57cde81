"""CNN14: the AudioSet tagging CNN of PANNs (Kong et al., 2020), as a clip encoder.

Log-mel (B, 1, n_mels, T) -> embedding (B, d), layer for layer as the reference Cnn14
(audioset_tagging_cnn, ``pytorch/models.py``) computes its ``embedding`` output:

1. ``bn0``: BatchNorm over the mel bands (each band its own statistics);
2. six conv blocks, each (3x3 conv, no bias -> BatchNorm -> ReLU) twice, then 2x2 average
   pooling (none after the sixth), dropout 0.2 in training; channels 64, 128, ..., 2048
   (``channels`` x 1, 2, 4, 8, 16, 32);
3. mean over frequency, then max plus mean over time; dropout 0.5; ``fc1`` -> ReLU
   (dropout 0.5 again in training).

The reference convolves the spectrogram as (time, frequency) images: so does this module
(it transposes its log-mel input), so released weights load unchanged. The AudioSet
classifier (``fc_audioset``) is not part of the encoder.

Variable length, as :class:`~audioclust.models.encoders.audiontt.AudioNTT`: with
``lengths`` (valid frames per row), frames past a row's length are zeroed before every
conv and left out of the time pooling, so in eval mode a padded row gives its clip's own
embedding. Minimum input: 32 frames (five 2x poolings leave one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError

from .audiontt import check_logmel, frame_mask

__all__ = ["Cnn14", "Cnn14Config", "ConvBlock"]

_POOLED_BLOCKS = 5
MIN_FRAMES = 2**_POOLED_BLOCKS


@dataclass(frozen=True)
class Cnn14Config:
    """CNN14's shape; ``channels`` 64 is the released network (2048-d embeddings)."""

    n_mels: int = 64
    channels: int = 64

    def __post_init__(self) -> None:
        if self.n_mels < MIN_FRAMES or self.channels < 1:
            raise ConfigError(f"n_mels must be >= {MIN_FRAMES} and channels >= 1, got "
                              f"{self.n_mels}, {self.channels}")

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) x 2, padded frames zeroed after each (``mask``
    (B, T), None for none); the reference's parameter names. aiSFX uses it too."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = _zero_invalid(F.relu(self.bn1(self.conv1(x))), mask)
        return _zero_invalid(F.relu(self.bn2(self.conv2(x))), mask)


def _zero_invalid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames (dim 2 of (B, C, T, F)) that ``mask`` (B, T) marks as padding."""
    if mask is None:
        return x
    return torch.where(mask[:, None, :, None], x, torch.zeros((), dtype=x.dtype))


class Cnn14(nn.Module):
    """CNN14 encoder: log-mel (B, 1, n_mels, T >= 32) -> (B, 32 * channels)."""

    def __init__(self, config: Cnn14Config | None = None):
        super().__init__()
        self.config = config or Cnn14Config()
        c = self.config
        widths = [c.channels * 2**i for i in range(6)]
        self.embed_dim: int = widths[-1]
        self.min_frames: int = MIN_FRAMES
        self.bn0 = nn.BatchNorm2d(c.n_mels)
        for i, width in enumerate(widths):
            self.add_module(f"conv_block{i + 1}", ConvBlock(1 if i == 0 else widths[i - 1],
                                                            width))
        self.fc1 = nn.Linear(widths[-1], widths[-1])

    def forward(self, logmel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        check_logmel(logmel, lengths, self.config.n_mels, self.min_frames, "CNN14")
        mask = None
        if lengths is not None:
            lengths = lengths.to(device=logmel.device, dtype=torch.long)
            mask = frame_mask(lengths, logmel.shape[-1])
        x = logmel.transpose(2, 3)  # (B, 1, T, F): the reference's layout
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        x = _zero_invalid(x, mask)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, mask)
            if i < _POOLED_BLOCKS:
                x = F.avg_pool2d(x, 2)
                if lengths is not None:
                    lengths = lengths // 2
                    mask = frame_mask(lengths, x.shape[2])
            x = F.dropout(x, 0.2, self.training)
        x = x.mean(dim=3)  # (B, C, T')
        if mask is None:
            pooled = x.amax(dim=2) + x.mean(dim=2)
        else:
            valid = mask[:, None, :]
            count = valid.sum(dim=2).to(x.dtype)
            peak = torch.where(valid, x, torch.full((), float("-inf"), dtype=x.dtype))
            total = torch.where(valid, x, torch.zeros((), dtype=x.dtype)).sum(dim=2)
            pooled = peak.amax(dim=2) + total / count
        pooled = F.dropout(pooled, 0.5, self.training)
        return F.dropout(F.relu(self.fc1(pooled)), 0.5, self.training)
