"""Clustering heads: clip embedding (B, d) -> cluster posterior (B, K).

A :class:`ClusterHead` holds ``n_heads`` independent MLP heads (TEMI, SPICE and
DeepCluster all train several and keep the best), the input standardisation they were
trained with, the index of the head to use, a softmax temperature and the learned cluster
prior (TEMI's EMA prior; the empirical cluster frequencies for the others), which the
streaming service starts its own prior from.

Checkpoint: one ``.safetensors`` file, weights and buffers as tensors, and in the string
metadata ``format`` = "audioclust-head", the config as JSON, ``method``, the SHA-256 of the
encoder checkpoint the head was trained on, and a free-form ``info``. No pickle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError

from ..checkpoint import file_sha256, read_checked_metadata, write_safetensors

__all__ = [
    "HEAD_FORMAT",
    "ClusterHead",
    "HeadConfig",
    "file_sha256",
    "init_linear",
    "load_head",
    "read_head_metadata",
    "save_head",
]

HEAD_FORMAT = "audioclust-head"
_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a clustering head."""

    in_dim: int
    n_clusters: int
    n_heads: int = 1
    hidden_dim: int = 512
    n_layers: int = 2  # hidden layers; 0 = a linear head
    l2_normalize: bool = True  # L2-normalise (after standardising) before the MLP

    def __post_init__(self) -> None:
        if min(self.in_dim, self.n_clusters, self.n_heads, self.hidden_dim) < 1:
            raise ConfigError(f"in_dim, n_clusters, n_heads, hidden_dim must be >= 1: {self}")
        if self.n_clusters < 2:
            raise ConfigError(f"need at least 2 clusters, got {self.n_clusters}")
        if self.n_layers < 0:
            raise ConfigError(f"n_layers must be >= 0, got {self.n_layers}")


def _mlp(c: HeadConfig) -> nn.Sequential:
    """The MLP with uninitialised weights (see :func:`init_linear`)."""
    layers: list[nn.Module] = []
    dim = c.in_dim
    for _ in range(c.n_layers):
        layers += [nn.utils.skip_init(nn.Linear, dim, c.hidden_dim), nn.GELU()]
        dim = c.hidden_dim
    layers.append(nn.utils.skip_init(nn.Linear, dim, c.n_clusters))
    return nn.Sequential(*layers)


@torch.no_grad()
def init_linear(layer: nn.Linear, generator: torch.Generator | None = None) -> None:
    """PyTorch's default ``nn.Linear`` initialisation, drawn from ``generator`` (the global
    RNG when None): weights Kaiming-uniform with a = sqrt(5), biases U(+-1/sqrt(fan_in))."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class ClusterHead(nn.Module):
    """``n_heads`` MLP heads over standardised embeddings.

    ``all_logits(z)`` gives (n_heads, B, K) for training; ``forward(z)`` gives the selected
    head's posterior (B, K) = softmax(logits / temperature), which is what is exported.
    Weights are drawn from ``generator`` (the global RNG when None).
    """

    def __init__(self, config: HeadConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.heads = nn.ModuleList(_mlp(config) for _ in range(config.n_heads))
        for module in self.heads.modules():
            if isinstance(module, nn.Linear):
                init_linear(module, generator)
        self.register_buffer("input_mean", torch.zeros(config.in_dim))
        self.register_buffer("input_std", torch.ones(config.in_dim))
        self.register_buffer("prior", torch.full((config.n_clusters,), 1.0 / config.n_clusters))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("selected", torch.tensor(0, dtype=torch.long))
        # The buffer stores the choice in checkpoints; the int mirrors it so forward (and
        # the exported graph) index the ModuleList with a constant, not a tensor.
        self._selected_index = 0
        self.register_load_state_dict_post_hook(ClusterHead._sync_selected)

    @staticmethod
    def _sync_selected(module: nn.Module, incompatible_keys) -> None:
        module._selected_index = int(module.selected)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardisation statistics of the training embeddings (std floored).

        ReLU encoders leave dimensions that are constant (dead) or nearly so on the
        training clips but not on augmented views, on new audio, nor once an encoder is
        fine-tuned. Divided by their own tiny std they would dominate every standardised
        vector (on FSDD with BYOL-A, augmented views lost nearly all nearest-neighbour
        agreement with a 1e-6 floor; SPICE stage 3 on a random encoder collapsed to one
        cluster as dead units woke up). So the std is floored at the median std of the
        live dimensions (std above 1e-3 of the largest): every dimension counts at most
        like a typical one. Flooring twice changes nothing.
        """
        live = std[std > 1e-3 * std.max()]
        floor = float(live.median()) if live.numel() else 1.0
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(max(floor, 1e-6)))

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        x = (z - self.input_mean) / self.input_std
        return F.normalize(x, dim=-1) if self.config.l2_normalize else x

    def all_logits(self, z: torch.Tensor) -> torch.Tensor:
        x = self.prepare(z)
        return torch.stack([head(x) for head in self.heads])

    def select(self, index: int) -> None:
        if not 0 <= index < self.config.n_heads:
            raise ValueError(f"head {index} out of range 0..{self.config.n_heads - 1}")
        self.selected.fill_(index)
        self._selected_index = index

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.prepare(z)
        logits = self.heads[self._selected_index](x)
        return torch.softmax(logits / self.temperature, dim=-1)


def save_head(
    head: ClusterHead,
    path: str | os.PathLike,
    method: str,
    encoder_sha256: str = "",
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``head`` as one self-describing ``.safetensors`` file, atomically."""
    metadata = {
        "format": HEAD_FORMAT,
        "format_version": _FORMAT_VERSION,
        "config": json.dumps(asdict(head.config), sort_keys=True),
        "method": method,
        "encoder_sha256": encoder_sha256,
        "info": json.dumps(dict(info or {}), sort_keys=True, default=str),
    }
    return write_safetensors(path, head.state_dict(), metadata)


def read_head_metadata(path: str | os.PathLike) -> dict[str, Any]:
    meta = read_checked_metadata(path, HEAD_FORMAT, _FORMAT_VERSION, "head checkpoint")
    return {
        "config": json.loads(meta["config"]),
        "method": meta["method"],
        "encoder_sha256": meta["encoder_sha256"],
        "info": json.loads(meta["info"]),
    }


def load_head(path: str | os.PathLike, device: str | torch.device = "cpu") -> ClusterHead:
    """Rebuild the head saved at ``path`` in eval mode."""
    meta = read_head_metadata(path)
    head = ClusterHead(HeadConfig(**meta["config"]))
    head.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return head.to(device).eval()
