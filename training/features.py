"""Fixed-size clip features for the classical baselines, cached on disk.

- ``logmel``: per-band mean and standard deviation of the log-mel over the clip's frames
  (2 x n_mels values).
- ``mfcc``: the first ``n_mfcc`` cepstral coefficients (orthonormal DCT-II of the log-mel
  in dB, as librosa computes MFCCs), mean and standard deviation over frames.

Statistics are taken over the clip's own frames, so clips of any length give comparable
vectors without padding. The cache key covers every file's path, size and modification
time, the feature settings and :data:`FEATURE_VERSION`; change any and it recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from audioclust.models.frontend import FrontendConfig, LogMelFrontend
from audioclust.training.datasets import AudioFolder
from scipy.fft import dct
from tqdm.auto import tqdm

__all__ = ["FEATURE_KINDS", "FEATURE_VERSION", "clip_features", "default_cache_dir", "extract"]

FEATURE_VERSION = 1
FEATURE_KINDS = ("logmel", "mfcc")
FeatureKind = Literal["logmel", "mfcc"]


def default_cache_dir() -> Path:
    base = os.environ.get("AUDIOCLUST_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "audioclust" if base else Path.home() / ".cache" / "audioclust"


def clip_features(logmel: np.ndarray, kind: FeatureKind, n_mfcc: int = 20) -> np.ndarray:
    """Pool one clip's log-mel (n_mels, frames) into a fixed-size vector."""
    if kind == "logmel":
        m = logmel
    elif kind == "mfcc":
        db = logmel * (10.0 / np.log(10.0))
        m = dct(db, type=2, axis=0, norm="ortho")[:n_mfcc]
    else:
        raise ValueError(f"unknown feature kind {kind!r}; known: {FEATURE_KINDS}")
    return np.concatenate([m.mean(axis=1), m.std(axis=1)]).astype(np.float32)


def _cache_key(dataset: AudioFolder, frontend: FrontendConfig, kinds: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FEATURE_VERSION, frontend.to_dict(), kinds]).encode())
    for clip in dataset.clips:
        st = clip.path.stat()
        h.update(f"{clip.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


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
    frontend = frontend or FrontendConfig(sample_rate=dataset.sample_rate)
    if frontend.sample_rate != dataset.sample_rate:
        raise ValueError(
            f"frontend expects {frontend.sample_rate} Hz, dataset yields {dataset.sample_rate} Hz"
        )
    cache_file = None
    if cache_dir != "":
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_file = root / "features" / f"{_cache_key(dataset, frontend, kinds)}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                out = {k: z[k] for k in kinds}
            if on_cache:
                on_cache(cache_file, True)
            return out

    module = LogMelFrontend(frontend).eval()
    rows: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    with torch.inference_mode():
        for i in tqdm(range(len(dataset)), desc="features", disable=not progress, unit="clip"):
            wave, n_real = dataset.load(i)
            lm = module(torch.from_numpy(wave[:n_real])[None])[0, 0].numpy()
            for k in kinds:
                rows[k].append(clip_features(lm, k))
    out = {k: np.stack(v) for k, v in rows.items()}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        os.replace(tmp, cache_file)  # atomic: a killed run never leaves a half-written cache
        if on_cache:
            on_cache(cache_file, False)
    return out
