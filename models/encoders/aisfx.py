"""The aiSFX sound-effects CNN (Ma and Lerch, ISMIR 2022) as a clip encoder.

Normalised log-mel (B, 1, n_mels, T) -> embedding (B, 8 * channels), as the ``aisfx``
package computes it (``EmbeddingNet('max', 3, 1, 64)`` and its ``blocking``):

1. the clip's frames are cut into blocks of ``block_frames`` (100, about 2.3 s at hop
   1024 / 44.1 kHz) every ``block_hop`` frames (50); a trailing partial block is dropped,
   and a clip shorter than one block is one block zero-padded at the end;
2. each block, as a (time, frequency) image, goes through four conv blocks, each
   (3x3 conv, no bias -> BatchNorm -> ReLU) twice, then 2x2 max pooling (none after the
   fourth); channels 64, 128, 256, 512;
3. mean over frequency, max over time: one 512-d vector per block;
4. the clip's embedding is the mean of its blocks' vectors.

Zero is silence in the normalised spectrogram (``log10(1e4 * 0 + 1) = 0``), which is what
the package's block padding fills in. With ``lengths``, frames past a row's length are
zeroed and the row's blocks counted from its own length, so a padded row gives its clip's
embedding. Any length from one frame up is accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError

from .audiontt import check_logmel, frame_mask
from .cnn14 import ConvBlock

__all__ = ["Aisfx", "AisfxConfig"]


@dataclass(frozen=True)
class AisfxConfig:
    """The aiSFX network's shape and blocking; the defaults are the released model's."""

    n_mels: int = 96
    channels: int = 64
    block_frames: int = 100
    block_hop: int = 50

    def __post_init__(self) -> None:
        if self.n_mels < 8 or self.channels < 1:
            raise ConfigError(f"n_mels must be >= 8 and channels >= 1, got {self.n_mels}, "
                              f"{self.channels}")
        if self.block_frames < 8 or not 1 <= self.block_hop <= self.block_frames:
            raise ConfigError(f"need block_frames >= 8 and 1 <= block_hop <= block_frames, "
                              f"got {self.block_frames}, {self.block_hop}")

    def to_dict(self) -> dict:
        return asdict(self)


class Aisfx(nn.Module):
    """aiSFX encoder: normalised log-mel (B, 1, n_mels, T >= 1) -> (B, 8 * channels)."""

    def __init__(self, config: AisfxConfig | None = None):
        super().__init__()
        self.config = config or AisfxConfig()
        c = self.config
        widths = [c.channels * 2**i for i in range(4)]
        self.embed_dim: int = widths[-1]
        self.min_frames: int = 1
        for i, width in enumerate(widths):  # the same blocks as CNN14's (one lineage)
            self.add_module(f"conv_block{i + 1}", ConvBlock(1 if i == 0 else widths[i - 1],
                                                            width))

    def block_counts(self, lengths: torch.Tensor) -> torch.Tensor:
        """Blocks of each clip of ``lengths`` frames: whole blocks only, at least one."""
        c = self.config
        whole = torch.div(lengths - c.block_frames, c.block_hop, rounding_mode="floor") + 1
        return whole.clamp(min=1)

    def block_embeddings(self, blocks: torch.Tensor) -> torch.Tensor:
        """(N, block_frames, n_mels) blocks -> (N, embed_dim)."""
        x = blocks.unsqueeze(1)
        for i in range(4):
            x = getattr(self, f"conv_block{i + 1}")(x, None)
            if i < 3:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=3).amax(dim=2)

    def forward(self, logmel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        check_logmel(logmel, lengths, c.n_mels, self.min_frames, "aisfx")
        b, frames = logmel.shape[0], logmel.shape[-1]
        x = logmel[:, 0].transpose(1, 2)  # (B, T, F): the package's layout
        if lengths is None:
            lengths = torch.full((b,), frames, dtype=torch.long, device=x.device)
        else:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            x = torch.where(frame_mask(lengths, frames)[:, :, None], x,
                            torch.zeros((), dtype=x.dtype))
        # A block may reach past the end: pad one block of silence, as the package does.
        x = F.pad(x, (0, 0, 0, c.block_frames))
        if torch.compiler.is_exporting():
            n_blocks = frames // c.block_hop + 1  # every start inside the clip; masked below
        else:
            n_blocks = max(1, (frames - c.block_frames) // c.block_hop + 1)
        starts = torch.arange(n_blocks, device=x.device) * c.block_hop
        index = (starts[:, None] + torch.arange(c.block_frames, device=x.device)).reshape(-1)
        blocks = x[:, index].reshape(b * n_blocks, c.block_frames, c.n_mels)
        emb = self.block_embeddings(blocks).reshape(b, n_blocks, self.embed_dim)
        valid = (torch.arange(n_blocks, device=x.device)[None, :]
                 < self.block_counts(lengths)[:, None])
        total = torch.where(valid[..., None], emb, torch.zeros((), dtype=emb.dtype)).sum(dim=1)
        return total / valid.sum(dim=1, keepdim=True).to(emb.dtype)
