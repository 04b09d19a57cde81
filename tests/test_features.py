"""Clip features and their on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from audioclust.models.frontend import LogMelFrontend
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import clip_features, extract


def test_pooled_stats(fsdd_subset):
    ds = AudioFolder(fsdd_subset, labels="digit")
    feats = extract(ds, cache_dir="", progress=False)
    assert feats["logmel"].shape == (120, 128) and feats["mfcc"].shape == (120, 40)
    wave, _ = ds.load(5)
    lm = LogMelFrontend()(torch.from_numpy(wave)[None])[0, 0].numpy()
    np.testing.assert_allclose(feats["logmel"][5][:64], lm.mean(1), rtol=1e-5)
    np.testing.assert_allclose(feats["logmel"][5][64:], lm.std(1), rtol=1e-4)
    assert np.isfinite(feats["mfcc"]).all()


def test_mfcc_matches_librosa_dct():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    lm = rng.standard_normal((64, 50)).astype(np.float32)
    ref = librosa.feature.mfcc(S=lm * (10 / np.log(10)), n_mfcc=20)
    f = clip_features(lm, "mfcc")
    np.testing.assert_allclose(f[:20], ref.mean(1), rtol=1e-4, atol=1e-4)


def test_cache_hit_and_invalidation(fsdd_subset, tmp_path):
    ds = AudioFolder(fsdd_subset, labels="digit")
    seen = []
    first = extract(ds, cache_dir=tmp_path, progress=False, on_cache=lambda p, h: seen.append(h))
    second = extract(ds, cache_dir=tmp_path, progress=False, on_cache=lambda p, h: seen.append(h))
    assert seen == [False, True]
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    assert len(list((tmp_path / "features").glob("*.npz"))) == 1
    # touching a file changes its mtime: the cache must not serve stale features
    clip = ds.clips[0].path
    st = clip.stat()
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    extract(ds, cache_dir=tmp_path, progress=False, on_cache=lambda p, h: seen.append(h))
    assert seen[-1] is False


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown feature kind"):
        clip_features(np.zeros((64, 3)), "chroma")  # type: ignore[arg-type]
