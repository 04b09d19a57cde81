"""The embedding model: 16 kHz waveform -> log-mel -> normalisation -> encoder -> (B, d).

This is what a trained encoder is used as everywhere downstream (evaluation, clustering
heads, ONNX export), so the normalisation statistics the encoder was trained with travel
with it. Its checkpoint is one ``.safetensors`` file: the encoder's weights under
``encoder.``, the statistics under ``norm.``, and in the string metadata the encoder name
and config, the frontend config and a free-form ``info`` (how it was trained). No pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .checkpoint import read_checked_metadata, write_safetensors
from .encoders import build_encoder, encoder_name
from .frontend import FrontendConfig, LogMelFrontend

__all__ = ["EMBEDDER_FORMAT", "Embedder", "embed_by_length", "embed_clips", "load_embedder",
           "save_embedder"]

EMBEDDER_FORMAT = "audioclust-embedder"
_FORMAT_VERSION = "1"


class Embedder(nn.Module):
    """Waveform (B, T) -> clip embedding (B, d).

    ``lengths`` (B,) gives each row's real samples when rows are zero-padded to a common T;
    the encoder then ignores the padded frames.
    """

    def __init__(
        self,
        encoder: nn.Module,
        frontend: FrontendConfig | None = None,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        if not std > 0:
            raise ValueError(f"normalisation std must be positive, got {std}")
        self.frontend = LogMelFrontend(frontend)
        self.encoder = encoder
        self.register_buffer("norm_mean", torch.tensor(float(mean)))
        self.register_buffer("norm_std", torch.tensor(float(std)))

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def min_samples(self) -> int:
        """Shortest waveform that yields the encoder's minimum number of frames (and that
        the frontend's edge padding accepts)."""
        frames = (int(self.encoder.min_frames) - 1) * self.frontend.config.hop_length
        return max(frames, self.frontend.stft.min_samples)

    def normalise(self, logmel: torch.Tensor) -> torch.Tensor:
        return (logmel - self.norm_mean) / self.norm_std

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalise(self.frontend(waveform, lengths))
        if lengths is None:
            return self.encoder(x)
        frames = 1 + torch.div(lengths, self.frontend.config.hop_length, rounding_mode="floor")
        return self.encoder(x, frames)


def save_embedder(
    embedder: Embedder, path: str | os.PathLike, info: Mapping[str, Any] | None = None
) -> Path:
    """Write ``embedder`` as one self-describing ``.safetensors`` file, atomically."""
    name = encoder_name(embedder.encoder)
    tensors = {f"encoder.{k}": v for k, v in embedder.encoder.state_dict().items()}
    tensors["norm.mean"] = embedder.norm_mean
    tensors["norm.std"] = embedder.norm_std
    metadata = {
        "format": EMBEDDER_FORMAT,
        "format_version": _FORMAT_VERSION,
        "encoder": name,
        "encoder_config": json.dumps(asdict(embedder.encoder.config), sort_keys=True),
        "frontend": json.dumps(embedder.frontend.config.to_dict(), sort_keys=True),
        "info": json.dumps(dict(info or {}), sort_keys=True, default=str),
    }
    return write_safetensors(path, tensors, metadata)


def read_embedder_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of an embedder checkpoint; clear errors for anything else."""
    meta = read_checked_metadata(path, EMBEDDER_FORMAT, _FORMAT_VERSION, "embedder checkpoint")
    return {
        "encoder": meta["encoder"],
        "encoder_config": json.loads(meta["encoder_config"]),
        "frontend": json.loads(meta["frontend"]),
        "info": json.loads(meta["info"]),
    }


def load_embedder(
    path: str | os.PathLike, device: str | torch.device = "cpu", random_init: int | None = None
) -> Embedder:
    """Rebuild the embedder saved at ``path`` in eval mode.

    ``random_init=SEED`` instead gives a randomly initialised encoder of the same
    architecture, with the same frontend and normalisation: the "untrained" control.
    """
    meta = read_embedder_metadata(path)
    tensors = load_file(str(path), device=str(device))
    if random_init is None:
        encoder = build_encoder(meta["encoder"], meta["encoder_config"])
    else:
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG untouched
            torch.manual_seed(random_init)
            encoder = build_encoder(meta["encoder"], meta["encoder_config"])
    if random_init is None:
        state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
        encoder.load_state_dict(state, strict=True)
    embedder = Embedder(
        encoder,
        FrontendConfig(**meta["frontend"]),
        mean=float(tensors["norm.mean"]),
        std=float(tensors["norm.std"]),
    )
    return embedder.to(device).eval()


@torch.inference_mode()
def embed_clips(
    embedder: nn.Module,
    clips: list[np.ndarray],
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Embed waveforms of any lengths; (n, d) float32.

    ``embedder``: an :class:`Embedder`, or any module with its contract (``forward(waveform,
    lengths)``, ``embed_dim``, ``min_samples``). Clips are sorted by length and batched
    with zero padding plus their lengths, so padding never changes an embedding; clips
    shorter than the encoder's minimum are zero-padded up to it (and counted as that long).
    """
    from tqdm.auto import tqdm

    embedder.eval()
    device = next(iter(embedder.state_dict().values())).device
    min_len = max(embedder.min_samples, 1)
    order = np.argsort([len(c) for c in clips], kind="stable")
    out = np.zeros((len(clips), embedder.embed_dim), dtype=np.float32)
    starts = range(0, len(clips), batch_size)
    for s in tqdm(starts, desc="embed", unit="batch", disable=not progress):
        idx = order[s : s + batch_size]
        lengths = [max(len(clips[i]), min_len) for i in idx]
        batch = np.zeros((len(idx), max(lengths)), dtype=np.float32)
        for row, i in enumerate(idx):
            batch[row, : len(clips[i])] = clips[i]
        emb = embedder(
            torch.from_numpy(batch).to(device), torch.tensor(lengths, device=device)
        )
        out[idx] = emb.float().cpu().numpy()
    return out


def embed_by_length(
    run: Callable[[np.ndarray], np.ndarray],
    clips: list[np.ndarray],
    dim: int,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """(n, dim) float32 embeddings by ``run`` ((B, T) float32 -> (B, dim)), batching only
    clips of equal length: for encoders that take no lengths, or that normalise over time
    with any padding included, so that no clip is ever padded."""
    from tqdm.auto import tqdm

    order = np.argsort([len(c) for c in clips], kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and len(clips[groups[-1][0]]) == len(clips[i]) and len(groups[-1]) < batch_size:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    out = np.zeros((len(clips), dim), dtype=np.float32)
    for group in tqdm(groups, desc="embed", unit="batch", disable=not progress):
        out[group] = run(np.stack([np.asarray(clips[i], dtype=np.float32) for i in group]))
    return out
