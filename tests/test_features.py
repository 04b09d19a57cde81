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


WRITER = r"""
import os, sys, time
from pathlib import Path
import numpy as np

data, cache, barrier, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
real_replace = os.replace


def replace_together(src, dst):
    # every writer has written its temporary before any renames it: the race, every time
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return real_replace(src, dst)


os.replace = replace_together
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import extract

feats = extract(AudioFolder(data), cache_dir=cache, progress=False)
np.save(sys.stdout.buffer, feats["logmel"])
"""


def test_concurrent_writers_of_one_cache_entry(tmp_path, tone):
    """Two ranks of one job (or any two processes) computing the same entry at once used to
    rename the same ``<key>.tmp.npz``; the second rename failed."""
    import io
    import subprocess
    import sys

    import soundfile as sf

    data = tmp_path / "clips"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"c{i}.wav", tone * (0.2 + 0.2 * i), 16000)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(tmp_path / "cache"),
                               str(barrier), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) for _ in range(n)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    arrays = [np.load(io.BytesIO(out)) for out, _ in results]
    for a in arrays[1:]:
        np.testing.assert_array_equal(a, arrays[0])
    entries = list((tmp_path / "cache" / "features").iterdir())
    assert [e.suffix for e in entries] == [".npz"], entries  # one entry, no temporaries left
    again = extract(AudioFolder(data), cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again["logmel"], arrays[0])
