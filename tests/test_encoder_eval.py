"""Encoder evaluation: cached embeddings, `audioclust-eval encoder`, `baselines --encoder`.

No training here: the "trained" checkpoint is a small AudioNTT (64-d) initialised with a
seed other than the CLI's random-init seed, saved as an embedder checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from audioclust.models.embedder import Embedder, save_embedder
from audioclust.models.encoders import build_encoder
from audioclust.training.datasets import AudioFolder
from audioclust.training.evaluate import main
from audioclust.training.features import embed_dataset

EVAL = [sys.executable, "-m", "audioclust.training.evaluate"]
ROW_KEYS = {"features", "reducer", "clusterer", "n_clusters", "nmi", "ari", "acc", "seconds"}
ENCODER_GRID = {(r, c) for r in ("none", "pca") for c in ("kmeans", "agglomerative")}
INFO = {"method": "byola", "epochs": 0, "note": "untrained test encoder"}


def _save_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    encoder = build_encoder("audiontt", {"embed_dim": 64})
    # log-mel mean/std of the FSDD subset, so the encoder sees roughly unit-scale input
    return save_embedder(Embedder(encoder, mean=-10.35, std=7.52), path, info=INFO)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # the trainer's file name: the feature name comes from the folder ("encoder:run1")
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "run1" / "encoder.safetensors",
                            seed=123)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One embedding cache for the CLI tests: later ones reuse the embeddings (speed)."""
    return tmp_path_factory.mktemp("cache")


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    # One OpenMP thread: on the shared 2-core CI machine, t-SNE's (the 2-D map's) OpenMP
    # barriers spin against other jobs and took 20+ s for 120 points instead of 2 s.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*EVAL, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_encoder_cli_end_to_end(checkpoint, fsdd_subset, cache, tmp_path):
    out = tmp_path / "report"
    proc = _run("encoder", "--checkpoint", checkpoint, "--data", fsdd_subset, "--labels",
                "speaker", "--folds", "4", "--out", out, "--json", "--quiet",
                "--cache-dir", cache)
    report = json.loads(proc.stdout)
    assert report["checkpoint"] == str(checkpoint)
    assert report["info"] == INFO
    assert report["encoder"] == "audiontt" and report["embed_dim"] == 64
    assert report["classes"] == ["george", "jackson", "lucas"] and report["clips"] == 120
    assert report["folds"] == 4 and report["seed"] == 0
    assert len(report["sha256"]) == 64
    assert report["trained"]["features"] == "encoder:run1"
    assert report["trained"]["random_init"] is None
    assert report["random"]["features"] == "random:run1"
    assert report["random"]["random_init"] == 0
    for variant in ("trained", "random"):
        part = report[variant]
        rows = part["rows"]
        assert {(r["reducer"], r["clusterer"]) for r in rows} == ENCODER_GRID
        assert len(rows) == 4
        assert all(set(r) == ROW_KEYS and r["features"] == part["features"] for r in rows)
        assert all(r["n_clusters"] == 3 and 0 <= r["nmi"] <= 1 and 0 < r["acc"] <= 1
                   for r in rows)
        probe = part["linear_probe"]
        assert len(probe["folds"]) == 4
        assert all(0 <= a <= 1 for a in probe["folds"])
        assert probe["mean"] == pytest.approx(np.mean(probe["folds"]), abs=1e-3)
        assert probe["std"] == pytest.approx(np.std(probe["folds"]), abs=1e-3)
        # 3 speakers, chance 1/3: even random conv features separate voices (measured:
        # 0.98-1.00 over several init seeds), so > 0.5 is a safe floor
        assert probe["mean"] > 0.5

    saved = json.loads((out / "encoder-eval.json").read_text())
    assert saved["trained"]["linear_probe"] == report["trained"]["linear_probe"]
    assert "purity" in saved["trained"]["rows"][0]  # the file keeps every score
    md = (out / "encoder-eval.md").read_text()
    assert "Linear probe" in md and "random init (seed 0)" in md
    for png in ("confusion.png", "map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "embeddings" not in proc.stderr  # --json --quiet: no progress lines
    assert len(list((cache / "features").glob("*.npz"))) >= 2  # trained and random


def test_embedding_cache_follows_checkpoint_content(fsdd_subset, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in sorted(p.name for p in fsdd_subset.glob("*.wav"))[:12]:
        shutil.copy(fsdd_subset / name, data / name)
    ds = AudioFolder(data)
    ckpt = _save_checkpoint(tmp_path / "enc.safetensors", seed=1)
    seen: list[bool] = []

    def embed(random_init: int | None = None) -> np.ndarray:
        return embed_dataset(ds, ckpt, random_init=random_init, cache_dir=tmp_path / "cache",
                             progress=False, on_cache=lambda p, hit: seen.append(hit))

    first = embed()
    assert first.shape == (12, 64) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(embed(), first)
    assert seen == [False, True]
    # random init is its own entry, and a different network
    random0 = embed(random_init=0)
    assert seen[-1] is False and not np.allclose(random0, first)
    # same path, new weights (a retrained checkpoint): the cache must miss
    _save_checkpoint(ckpt, seed=2)
    retrained = embed()
    assert seen[-1] is False and not np.allclose(retrained, first)
    # uncached computation agrees with what the cache served
    np.testing.assert_allclose(embed_dataset(ds, ckpt, cache_dir="", progress=False),
                               retrained, rtol=1e-5, atol=1e-6)


def test_baselines_with_encoders(checkpoint, fsdd_subset, cache, tmp_path):
    # a second copy under its own name: same content, so its embeddings come from the cache
    other = shutil.copy(checkpoint, tmp_path / "small.safetensors")
    proc = _run("baselines", "--data", fsdd_subset, "--labels", "speaker", "--features",
                "mfcc", "--encoder", checkpoint, "--encoder", other, "--reducers", "none",
                "--clusterers", "kmeans,agglomerative", "--out", tmp_path / "o", "--json",
                "--cache-dir", cache)
    rows = json.loads(proc.stdout)
    assert [(r["features"], r["clusterer"]) for r in rows] == [
        (f, c)
        for f in ("mfcc", "encoder:run1", "encoder:small")
        for c in ("kmeans", "agglomerative")
    ]
    assert all(set(r) == ROW_KEYS and r["n_clusters"] == 3 for r in rows)
    assert "encoder:small: embeddings from cache" in proc.stderr
    meta = json.loads((tmp_path / "o" / "baselines.json").read_text())["meta"]
    assert meta["config"]["encoders"] == [str(checkpoint), str(other)]


def _one_line_error(argv: list[str | Path], capsys, *parts: str) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    # progress lines may come first; the error is the last line, without a traceback
    last = err.strip().splitlines()[-1]
    assert last.startswith("audioclust-eval: error:") and "Traceback" not in err, err
    for part in parts:
        assert part in last, err


def test_bad_checkpoints_are_one_line_errors(checkpoint, fsdd_subset, tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    plain = tmp_path / "plain.safetensors"  # valid safetensors, but no embedder metadata
    save_file({"w": torch.zeros(3)}, str(plain))
    damaged = tmp_path / "damaged.safetensors"  # embedder metadata, encoder weights gone
    with safe_open(str(checkpoint), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in ("norm.mean", "norm.std")}, str(damaged),
                  metadata=f.metadata())
    for ckpt, why in ((missing, "no such checkpoint"), (junk, "not a safetensors"),
                      (plain, "not an audioclust embedder checkpoint"),
                      (damaged, "cannot load the embedder")):
        common = ["--data", fsdd_subset, "--labels", "speaker", "--out", tmp_path / "o",
                  "--no-cache", "--quiet"]
        _one_line_error(["encoder", "--checkpoint", ckpt, *common], capsys, str(ckpt), why)
        _one_line_error(["baselines", "--encoder", ckpt, *common], capsys, str(ckpt), why)
    assert not (tmp_path / "o").exists()  # nothing written before the checkpoint is read


def test_probe_folds_are_checked(checkpoint, fsdd_subset, tmp_path, capsys):
    # digit labels: 30 clips per class, so 31 folds cannot be stratified
    _one_line_error(["encoder", "--checkpoint", checkpoint, "--data", fsdd_subset, "--labels",
                     "digit", "--folds", "31", "--no-cache", "--quiet", "--out", tmp_path / "o"],
                    capsys, "--folds 31")


def test_a_random_init_leaves_the_callers_rng_alone(checkpoint):
    from audioclust.models.embedder import load_embedder
    from audioclust.models.encoder_spec import open_encoder

    encoder = open_encoder(checkpoint)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = load_embedder(checkpoint, random_init=5)
    b = encoder.randomise(5)
    assert torch.equal(torch.random.get_rng_state(), before)
    weights = [(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                      strict=True)]
    assert all(torch.equal(x, y) for x, y in weights)  # the same seed, the same weights
    c = load_embedder(checkpoint, random_init=6)
    assert not torch.equal(next(iter(a.encoder.parameters())), next(iter(c.encoder.parameters())))
