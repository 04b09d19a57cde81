"""Vision Transformer over log-mel patches, the encoder for MSN (Assran et al., 2022).

Log-mel (B, 1, n_mels, T) -> clip embedding (B, width):

- patch stem: a Conv2d with kernel = stride = patch size cuts the log-mel into
  ``patch_freq x patch_time`` patches (default 16 x 8: 4 frequency x T // 8 time
  patches) and projects each to ``width``. Trailing frames that do not fill a whole patch
  are dropped, so the minimum input is ``patch_time`` frames (80 ms by default);
- positions: a learnable frequency embedding (one per frequency patch) plus a learnable
  time embedding (one per time patch, up to ``max_frames // patch_time``), added per
  patch. Factorising them lets any number of time patches up to the maximum share one
  table, without interpolating position embeddings at inference. Inputs with more time
  patches than the table are rejected rather than silently extrapolated (in an exported
  ONNX graph they fail in the position lookup);
- a learnable [CLS] token, ``depth`` pre-norm transformer blocks (multi-head
  self-attention and a GELU MLP, each behind a LayerNorm and a residual);
- output: the [CLS] token after a final LayerNorm.

Variable length: ``forward(logmel, lengths)`` turns each clip's valid frame count into a key
padding mask over its time patches (``lengths // patch_time`` of them), so padded patches
are never attended to; in eval mode a padded clip embeds as the clip alone (to float
rounding).

MSN's anchor views drop patches: ``forward(logmel, mask_ratio=r)`` keeps a random subset of
``round((1 - r) * n)`` of each clip's ``n`` valid patch tokens (at least one), with its
own random subset per clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError, DataError

__all__ = ["ViT", "ViTConfig"]


@dataclass(frozen=True)
class ViTConfig:
    """ViT hyperparameters; the defaults are a tiny CPU-sized model (1.8 M weights)."""

    n_mels: int = 64
    patch_freq: int = 16
    patch_time: int = 8  # 64-frame crops give 32 tokens: MSN needs tokens left to mask
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    # Length of the time position table, in frames: 1024 frames = 10.24 s at hop 160.
    max_frames: int = 1024
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if min(self.patch_freq, self.patch_time, self.width, self.depth, self.heads) <= 0:
            raise ConfigError("patch sizes, width, depth and heads must be positive")
        if self.n_mels <= 0 or self.n_mels % self.patch_freq:
            raise ConfigError(
                f"n_mels ({self.n_mels}) must be a positive multiple of patch_freq "
                f"({self.patch_freq})"
            )
        if self.width % self.heads:
            raise ConfigError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.max_frames < self.patch_time:
            raise ConfigError(f"max_frames ({self.max_frames}) < patch_time ({self.patch_time})")
        if self.mlp_ratio <= 0 or self.layer_norm_eps <= 0:
            raise ConfigError("mlp_ratio and layer_norm_eps must be positive")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            raise ConfigError("dropout rates must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, c: ViTConfig):
        super().__init__()
        hidden = int(c.width * c.mlp_ratio)
        self.norm1 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.attn = _Attention(c.width, c.heads, c.attention_dropout)
        self.norm2 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(c.width, hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(hidden, c.width),
        )
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """ViT encoder: log-mel (B, 1, n_mels, T >= patch_time) -> [CLS] embedding (B, width)."""

    def __init__(self, config: ViTConfig | None = None):
        super().__init__()
        self.config = config or ViTConfig()
        c = self.config
        self.embed_dim: int = c.width
        self.min_frames: int = c.patch_time
        self.max_frames: int = c.max_frames
        self.freq_patches = c.n_mels // c.patch_freq
        self.max_time_patches = c.max_frames // c.patch_time
        patch = (c.patch_freq, c.patch_time)
        self.patch_embed = nn.Conv2d(1, c.width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.freq_pos = nn.Parameter(torch.zeros(self.freq_patches, c.width))
        self.time_pos = nn.Parameter(torch.zeros(self.max_time_patches, c.width))
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT initialisation: truncated normal (std 0.02) tokens, positions and linears."""
        for p in (self.cls_token, self.freq_pos, self.time_pos):
            nn.init.trunc_normal_(p, std=0.02)
        # The stem is a linear map of flattened patches; initialise it like one.
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != c.n_mels:
            raise ValueError(f"expected log-mel (B, 1, {c.n_mels}, T), got {tuple(x.shape)}")
        if torch.compiler.is_exporting():
            # Exported graphs get their length bounds from the dynamic-shape constraints.
            return
        if not self.min_frames <= x.shape[-1]:
            raise ValueError(f"ViT needs at least {self.min_frames} frames, got {x.shape[-1]}")
        if x.shape[-1] // c.patch_time > self.max_time_patches:
            usable = self.max_time_patches * c.patch_time
            raise DataError(
                f"ViT positions cover at most {usable} frames ({self.max_time_patches} time "
                f"patches of {c.patch_time}), got {x.shape[-1]}; raise max_frames"
            )
        if lengths is not None:
            if lengths.shape != (x.shape[0],):
                raise ValueError(
                    f"lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}"
                )
            if bool((lengths < self.min_frames).any()) or bool((lengths > x.shape[-1]).any()):
                raise ValueError(
                    f"every length must be in [{self.min_frames}, {x.shape[-1]}], "
                    f"got {lengths.tolist()}"
                )

    def patch_tokens(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position-encoded patch tokens (B, N, width) and their validity (B, N) or None.

        Tokens are ordered frequency-major: token ``f * Tp + t`` is frequency patch ``f``
        of time patch ``t``, for ``Tp = T // patch_time`` time patches.
        """
        self._check(x, lengths)
        tokens = self.patch_embed(x)  # (B, D, Fp, Tp)
        b, d, fp, tp = tokens.shape
        # A gather (not a slice) keeps the exported graph free of a guard tying the
        # dynamic patch count to the table size.
        time_pos = self.time_pos.index_select(0, torch.arange(tp, device=x.device))
        pos = self.freq_pos[:, None, :] + time_pos[None, :, :]  # (Fp, Tp, D)
        tokens = tokens.permute(0, 2, 3, 1) + pos
        valid = None
        if lengths is not None:
            valid_patches = lengths.to(device=x.device, dtype=torch.long) // self.config.patch_time
            valid = torch.arange(tp, device=x.device) < valid_patches[:, None]  # (B, Tp)
            valid = valid[:, None, :].expand(b, fp, tp).reshape(b, fp * tp)
        return tokens.reshape(b, fp * tp, d), valid

    @staticmethod
    def keep_random_tokens(
        tokens: torch.Tensor,
        valid: torch.Tensor | None,
        mask_ratio: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` share of each sample's valid tokens.

        Returns the kept tokens (B, K, D), their validity (B, K) (None when every sample
        keeps K tokens) and the kept positions (B, K) into the original token axis. A
        sample with ``n`` valid tokens keeps ``max(1, round((1 - mask_ratio) * n))``.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        b, n, d = tokens.shape
        gen_device = generator.device if generator is not None else tokens.device
        noise = torch.rand(b, n, generator=generator, device=gen_device).to(tokens.device)
        if valid is None:
            n_valid = torch.full((b,), n, device=tokens.device)
        else:
            n_valid = valid.sum(dim=1)
            # Padding sorts after every real token (noise < 1), so it is never kept first.
            noise = torch.where(valid, noise, torch.full_like(noise, 2.0))
        keep = torch.clamp(torch.round((1.0 - mask_ratio) * n_valid), min=1).long()
        k = int(keep.max())
        order = torch.argsort(noise, dim=1)[:, :k]
        kept = torch.gather(tokens, 1, order[..., None].expand(b, k, d))
        kept_valid = torch.arange(k, device=tokens.device) < keep[:, None]
        return kept, (None if bool(kept_valid.all()) else kept_valid), order

    def forward(
        self,
        logmel: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """[CLS] embeddings (B, width).

        ``lengths`` (B,) counts each clip's valid frames; ``mask_ratio`` > 0 drops that
        share of patch tokens at random (MSN anchor views), drawn from ``generator``. The
        argument names are the exported ONNX graph's input names.
        """
        tokens, valid = self.patch_tokens(logmel, lengths)
        if mask_ratio > 0.0:
            tokens, valid, _ = self.keep_random_tokens(tokens, valid, mask_ratio, generator)
        b = tokens.shape[0]
        h = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        h = self.pos_drop(h)
        attn_mask = None
        if valid is not None:
            keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, 1 + N): True = attend
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.norm(h[:, 0])
