"""Exponential moving averages of networks: the EMA teachers and targets of BYOL-A, MSN,
SLICER and TEMI."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update"]


def ema_update(target: nn.Module, online: nn.Module, momentum: float,
               buffers: bool = True) -> None:
    """target <- momentum * target + (1 - momentum) * online for the parameters; buffers
    (BatchNorm statistics) are copied over unless ``buffers=False``."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
        if buffers:
            for t, o in zip(target.buffers(), online.buffers(), strict=True):
                t.copy_(o)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's target momentum schedule: from ``base`` up to 1 along a cosine."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0
