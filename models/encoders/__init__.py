"""Audio encoders: log-mel (B, 1, n_mels, T) -> clip embedding (B, d).

Every encoder takes ``forward(x, lengths=None)`` with ``lengths`` (B,) the valid frames of
each zero-padded clip, and exposes ``embed_dim`` (d), ``min_frames`` (shortest accepted
T) and ``config`` (its frozen config dataclass).

Registry: :func:`build_encoder` makes one by name ("audiontt", "vit", and the pretrained
architectures "cnn14" (PANNs) and "aisfx") from a plain dict of config overrides (unknown
keys are an error). ``models/pretrained.py`` loads released weights into them.

An encoder is saved inside its embedder (frontend, normalisation, encoder):
:func:`audioclust.models.embedder.save_embedder`, one ``.safetensors`` file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from audioclust.models.errors import ConfigError

from ..config import build_config
from .aisfx import Aisfx, AisfxConfig
from .audiontt import AudioNTT, AudioNTTConfig
from .cnn14 import Cnn14, Cnn14Config
from .vit import ViT, ViTConfig

__all__ = [
    "ENCODERS",
    "Aisfx",
    "AisfxConfig",
    "AudioNTT",
    "AudioNTTConfig",
    "Cnn14",
    "Cnn14Config",
    "Encoder",
    "ViT",
    "ViTConfig",
    "build_encoder",
    "encoder_config",
    "encoder_name",
]

# name -> (module class, config dataclass)
ENCODERS: dict[str, tuple[type[nn.Module], type]] = {
    "audiontt": (AudioNTT, AudioNTTConfig),
    "vit": (ViT, ViTConfig),
    "cnn14": (Cnn14, Cnn14Config),
    "aisfx": (Aisfx, AisfxConfig),
}


@runtime_checkable
class Encoder(Protocol):
    """What the trainers and the exporter rely on."""

    embed_dim: int
    min_frames: int
    config: Any

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor: ...


def _entry(name: str) -> tuple[type[nn.Module], type]:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None


def encoder_config(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """The config dataclass of encoder ``name``: defaults overridden by ``config``."""
    _, config_cls = _entry(name)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping or None, got {type(config).__name__}")
    return build_config(config_cls, overrides=dict(config or {}))


def build_encoder(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised encoder ``name`` (a key of :data:`ENCODERS`)."""
    module_cls, _ = _entry(name)
    return module_cls(encoder_config(name, config))


def encoder_name(module: nn.Module) -> str:
    """The registry name of ``module``'s class."""
    for name, (module_cls, _) in ENCODERS.items():
        if type(module) is module_cls:
            return name
    raise ValueError(f"{type(module).__name__} is not a registered encoder")
