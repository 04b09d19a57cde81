"""Fixed-size clip features for the classical baselines, cached on disk.

- ``logmel``: per-band mean and standard deviation of the log-mel over the clip's frames
  (2 x n_mels values).
- ``mfcc``: the first ``n_mfcc`` cepstral coefficients (orthonormal DCT-II of the log-mel
  in dB, as librosa computes MFCCs), mean and standard deviation over frames.
- :func:`embed_dataset`: an encoder's clip embeddings (any encoder spec: a trained
  checkpoint, a pretrained model; or its randomly initialised counterpart).

Statistics are taken over the clip's own frames, so clips of any length give comparable
vectors without padding. The cache key covers every file's path, size and modification
time, the feature settings and :data:`FEATURE_VERSION`; change any and it recomputes.
Embeddings are keyed on the encoder's identity (its checkpoint's SHA-256, or a digest of
a pretrained model's files) as well, never its path or time, so a retrained checkpoint at
the same path never serves stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.fft import dct
from tqdm.auto import tqdm

from audioclust.models.checkpoint import file_sha256
from audioclust.models.embedder import read_embedder_metadata
from audioclust.models.encoder_spec import WaveformEncoder, open_encoder
from audioclust.models.errors import ConfigError, ModelError
from audioclust.models.files import atomic_savez, default_cache_dir
from audioclust.models.frontend import FrontendConfig, LogMelFrontend
from audioclust.training.datasets import AudioFolder

__all__ = [
    "FEATURE_KINDS",
    "FEATURE_VERSION",
    "LogMelBank",
    "clip_features",
    "default_cache_dir",
    "embed_dataset",
    "embedder_checkpoint",
    "extract",
    "file_sha256",
    "logmel_bank",
]

FEATURE_VERSION = 1
FEATURE_KINDS = ("logmel", "mfcc")
FeatureKind = Literal["logmel", "mfcc"]


def clip_features(logmel: np.ndarray, kind: FeatureKind, n_mfcc: int = 20) -> np.ndarray:
    """Pool one clip's log-mel (n_mels, frames) into a fixed-size vector."""
    if kind == "logmel":
        m = logmel
    elif kind == "mfcc":
        db = logmel * (10.0 / np.log(10.0))
        m = dct(db, type=2, axis=0, norm="ortho")[:n_mfcc]
    else:
        raise ConfigError(f"unknown feature kind {kind!r}; known: {FEATURE_KINDS}")
    return np.concatenate([m.mean(axis=1), m.std(axis=1)]).astype(np.float32)


def _cache_key(dataset: AudioFolder, frontend: FrontendConfig, kinds: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FEATURE_VERSION, frontend.to_dict(), kinds]).encode())
    for clip in dataset.clips:
        st = clip.path.stat()
        h.update(f"{clip.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _cached(
    dataset: AudioFolder,
    frontend: FrontendConfig,
    tag: tuple[str, ...],
    compute: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None,
    on_cache: Callable[[Path, bool], None] | None = None,
) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, from the on-disk cache when the key matches.

    ``cache_dir=None`` uses :func:`default_cache_dir`; an empty string turns caching off.
    """
    if cache_dir == "":
        return compute()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = root / "features" / f"{_cache_key(dataset, frontend, tag)}.npz"
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if on_cache:
            on_cache(cache_file, True)
        return arrays
    arrays = compute()
    # atomic, with a temporary of its own: a killed run never leaves a half-written entry,
    # and writers of the same entry at once (two ranks of one job) each rename their own
    atomic_savez(cache_file, arrays)
    if on_cache:
        on_cache(cache_file, False)
    return arrays


def _frontend_for(dataset: AudioFolder, frontend: FrontendConfig | None) -> FrontendConfig:
    frontend = frontend or FrontendConfig(sample_rate=dataset.sample_rate)
    if frontend.sample_rate != dataset.sample_rate:
        raise ConfigError(
            f"frontend expects {frontend.sample_rate} Hz, dataset yields {dataset.sample_rate} Hz"
        )
    return frontend


def _logmels(dataset: AudioFolder, frontend: FrontendConfig, progress: bool):
    """Yield each clip's log-mel (n_mels, frames) at the clip's own length."""
    module = LogMelFrontend(frontend).eval()
    with torch.inference_mode():
        for i in tqdm(range(len(dataset)), desc="log-mel", disable=not progress, unit="clip"):
            wave, n_real = dataset.load(i)
            yield module(torch.from_numpy(wave[:n_real])[None])[0, 0].numpy()


def extract(
    dataset: AudioFolder,
    kinds: tuple[FeatureKind, ...] = FEATURE_KINDS,
    frontend: FrontendConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    on_cache: Callable[[Path, bool], None] | None = None,
) -> dict[str, np.ndarray]:
    """Features of every clip, one (n_clips, dim) array per kind; loads from cache if it can.

    ``cache_dir=None`` uses :func:`default_cache_dir`; an empty string turns caching off.
    ``on_cache(path, hit)`` is told where the cache file is and whether it was used.
    """
    frontend = _frontend_for(dataset, frontend)

    def compute() -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for lm in _logmels(dataset, frontend, progress):
            for k in kinds:
                rows[k].append(clip_features(lm, k))
        return {k: np.stack(v) for k, v in rows.items()}

    return _cached(dataset, frontend, kinds, compute, cache_dir, on_cache)


@dataclass(frozen=True)
class LogMelBank:
    """Every clip's log-mel, concatenated along time: clip i is ``data[:, offsets[i]:
    offsets[i + 1]]``. Training crops come from here, so audio is decoded only once."""

    data: np.ndarray  # (n_mels, total_frames) float32
    offsets: np.ndarray  # (n_clips + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> np.ndarray:
        return self.data[:, self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def stats(self) -> tuple[float, float]:
        """Mean and standard deviation over all frames and bands (scalar, as BYOL-A)."""
        return float(self.data.mean(dtype=np.float64)), float(self.data.std(dtype=np.float64))


def logmel_bank(
    dataset: AudioFolder,
    frontend: FrontendConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> LogMelBank:
    """Log-mels of every clip of ``dataset`` at its own length, cached like :func:`extract`."""
    frontend = _frontend_for(dataset, frontend)

    def compute() -> dict[str, np.ndarray]:
        parts = list(_logmels(dataset, frontend, progress))
        lengths = [p.shape[1] for p in parts]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return {"data": np.concatenate(parts, axis=1), "offsets": offsets}

    arrays = _cached(dataset, frontend, ("bank",), compute, cache_dir)
    return LogMelBank(arrays["data"], arrays["offsets"])


def embedder_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An embedder checkpoint's metadata (encoder, encoder_config, frontend, info) and the
    file's ``sha256``. Anything that is not a readable embedder checkpoint raises a
    one-line FileNotFoundError or ModelError naming the file."""
    p = Path(path)
    try:
        meta = read_embedder_metadata(p)
    except (KeyError, json.JSONDecodeError) as exc:
        # The format tag is right but a field is missing or garbled: a damaged file.
        raise ModelError(p, f"damaged embedder checkpoint metadata ({exc!r})") from exc
    return {**meta, "sha256": file_sha256(p)}


def embed_dataset(
    dataset: AudioFolder,
    encoder: WaveformEncoder | str | os.PathLike,
    random_init: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    batch_size: int = 64,
    on_cache: Callable[[Path, bool], None] | None = None,
) -> np.ndarray:
    """(n_clips, d) float32 embeddings of every clip by ``encoder`` (an encoder spec, see
    :mod:`audioclust.models.encoder_spec`, or one already opened); ``random_init=SEED``
    uses the same architecture randomly initialised.

    Cached like :func:`extract`; the key adds the encoder's identity (``sha256``) and
    ``random_init``. A missing or unusable encoder raises a one-line error naming it
    (FileNotFoundError or a UserError), before any audio is decoded.
    """
    enc = open_encoder(encoder)
    if enc.sample_rate != dataset.sample_rate:
        raise ConfigError(f"{enc.spec}: the encoder takes {enc.sample_rate} Hz, the dataset "
                          f"yields {dataset.sample_rate} Hz")
    frontend = (enc.embedder.frontend.config if enc.embedder is not None
                else FrontendConfig(sample_rate=dataset.sample_rate))
    model = enc if random_init is None else enc.random_init(int(random_init))
    init = "trained" if random_init is None else f"random_init={int(random_init)}"
    # The crop policy changes what the encoder sees, so it belongs in the key.
    crop = "full" if dataset.clip_samples is None else f"{dataset.clip_samples}:{dataset.crop}"
    tag = ("embedding", enc.sha256, init, crop)

    def compute() -> dict[str, np.ndarray]:
        # Decode and embed in chunks: memory stays bounded on large folders while
        # each chunk still batches similar lengths together.
        chunk = max(batch_size * 16, 1)
        parts = []
        with tqdm(total=len(dataset), desc="embed", unit="clip", disable=not progress) as bar:
            for start in range(0, len(dataset), chunk):
                idx = range(start, min(start + chunk, len(dataset)))
                clips = []
                for i in idx:
                    wave, n_real = dataset.load(i)
                    clips.append(wave[:n_real])
                parts.append(model.embed(clips, batch_size=batch_size))
                bar.update(len(idx))
        return {"embeddings": np.concatenate(parts).astype(np.float32, copy=False)}

    return _cached(dataset, frontend, tag, compute, cache_dir, on_cache)["embeddings"]
