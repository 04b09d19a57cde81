"""BYOL-A: bootstrap your own latent for audio (Niizumi et al.).

Two augmented views of each crop (mixup with past clips, random resized crop, random
linear fader, then re-normalisation); an online network (encoder, projector, predictor)
predicts the target network's projection of the other view; the target (encoder and
projector) is an EMA of the online one, its momentum rising from ``ema`` to 1 along a
cosine. Loss: the normalised MSE 2 - 2 cos(p, z'), symmetrised over the two views.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.training.augment import MixupBYOLA, RandomLinearFader, RandomResizedCrop
from audioclust.training.ema import cosine_momentum, ema_update
from audioclust.training.ssl.trainer import SSLMethod

__all__ = ["BYOLA", "mlp"]


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """BYOL's projector/predictor: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, dim_out),
    )


def _renorm(x: torch.Tensor) -> torch.Tensor:
    # BYOL-A normalises each view again after augmentation (post-norm), per batch.
    return (x - x.mean()) / (x.std() + 1e-6)


class BYOLA(SSLMethod):
    default_lr = 3e-4

    def __init__(
        self,
        encoder: nn.Module,
        generator: torch.Generator,
        crop_frames: int,
        projection_dim: int = 256,
        hidden_dim: int = 1024,
        ema: float = 0.99,
        mixup_ratio: float = 0.2,
        memory_size: int = 2048,
    ):
        super().__init__(encoder, generator)
        d = int(encoder.embed_dim)
        self.projector = mlp(d, hidden_dim, projection_dim)
        self.predictor = mlp(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.base_ema = ema
        self.mixup = MixupBYOLA(mixup_ratio, memory_size, generator=generator)
        self.crop = RandomResizedCrop(generator=generator)
        self.fader = RandomLinearFader(generator=generator)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return _renorm(self.fader(self.crop(self.mixup(x))))

    def _loss(self, online_view: torch.Tensor, target_view: torch.Tensor) -> torch.Tensor:
        p = F.normalize(self.predictor(self.projector(self.encoder(online_view))), dim=1)
        with torch.no_grad():
            z = F.normalize(self.target_projector(self.target_encoder(target_view)), dim=1)
        return (2 - 2 * (p * z).sum(dim=1)).mean()

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = self.augment(crops), self.augment(crops)
        loss = self._loss(v1, v2) + self._loss(v2, v1)
        return loss, {}

    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(self.base_ema, step, total_steps)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
