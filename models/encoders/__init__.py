"""Audio encoders: log-mel (B, 1, n_mels, T) -> clip embedding (B, d).

Every encoder takes ``forward(x, lengths=None)`` with ``lengths`` (B,) the valid frames of
each zero-padded clip, and exposes ``embed_dim`` (d), ``min_frames`` (shortest accepted
T) and ``config`` (its frozen config dataclass).

Registry: :func:`build_encoder` makes one by name ("audiontt", "vit", and the pretrained
architectures "cnn14" (PANNs) and "aisfx") from a plain dict of config overrides (unknown
keys are an error). ``models/pretrained.py`` loads released weights into them.

Checkpoints are one ``.safetensors`` file: the state dict as tensors, and in the file's
string metadata ``format`` = "audioclust-encoder", ``format_version``, ``encoder`` (the
registry name) and ``config`` (the full config as JSON). No pickle is involved, and the
file alone rebuilds the module: :func:`load_encoder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import read_checked_metadata, write_safetensors
from ..config import build_config
from .aisfx import Aisfx, AisfxConfig
from .audiontt import AudioNTT, AudioNTTConfig
from .cnn14 import Cnn14, Cnn14Config
from .vit import ViT, ViTConfig

__all__ = [
    "CHECKPOINT_FORMAT",
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
    "load_encoder",
    "read_encoder_metadata",
    "save_encoder",
]

CHECKPOINT_FORMAT = "audioclust-encoder"
_FORMAT_VERSION = "1"

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
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None


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


def save_encoder(
    module: nn.Module,
    name: str,
    config: Mapping[str, Any] | None,
    path: str | os.PathLike,
) -> Path:
    """Write ``module`` as a self-describing ``.safetensors`` checkpoint at ``path``.

    ``config`` (overrides, as given to :func:`build_encoder`) is checked against the
    module's own config, so a checkpoint can never describe another architecture; None
    takes the module's config as it is. The file is replaced atomically.
    """
    if encoder_name(module) != name:
        raise ValueError(f"module is a {encoder_name(module)!r} encoder, not {name!r}")
    module_config = module.config
    if config is not None and encoder_config(name, config) != module_config:
        raise ValueError(f"config {dict(config)} does not describe this module ({module_config})")
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": _FORMAT_VERSION,
        "encoder": name,
        "config": json.dumps(asdict(module_config), sort_keys=True),
    }
    return write_safetensors(path, module.state_dict(), metadata)


def read_encoder_metadata(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(encoder name, config dict) stored in a checkpoint written by :func:`save_encoder`."""
    metadata = read_checked_metadata(path, CHECKPOINT_FORMAT, _FORMAT_VERSION,
                                     "encoder checkpoint")
    return metadata["encoder"], json.loads(metadata["config"])


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the encoder saved at ``path``, on ``device``, in eval mode."""
    name, config = read_encoder_metadata(path)
    module = build_encoder(name, config)
    module.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return module.to(device).eval()
