"""Novelty calibrated on the training data: the reference's density and quantile rule, its
trip through the ONNX metadata, and the shipped encoder + head exported with FSDD audio
flagging instrument notes from the first window on while passing unheard FSDD clips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO, copy_fsdd
from stream_helpers import read_jsonl

from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.models.onnx_export import set_metadata
from audioclust.models.reference import ALPHA, NoveltyReference, floored_std
from audioclust.models.runtime import ModelError, OnnxModel

ASSETS = REPO / "models" / "assets"
GM_NOTES = REPO.parent / "shared" / "datasets" / "gm-notes"


def _low_rank(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """n points of a 5-factor Gaussian in 48-d with a few dead dimensions."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).standard_normal((5, 48)) * 3.0
    x = rng.standard_normal((n, 5)) @ mixing + 0.3 * rng.standard_normal((n, 48))
    x[:, :4] = 1.0 + 1e-7 * rng.standard_normal((n, 4))  # dead units: floored, not blown up
    return x + shift


def test_the_quantile_rule_flags_alpha_of_the_training_like_and_all_of_the_rest():
    ref = NoveltyReference.fit(_low_rank(4000, 0))
    assert ref.components.shape[0] <= 16 and ref.windows == 4000
    held_out = ref.novelty(_low_rank(4000, 1))
    assert abs(ref.is_novel(held_out).mean() - ALPHA) < 0.01  # calibrated: about α
    assert 0.3 < np.median(held_out) < 0.7  # the median training-like window is typical
    # off the training subspace (energy where the training audio has none) or shifted
    rng = np.random.default_rng(2)
    off = _low_rank(500, 3) + 3.0 * rng.standard_normal((500, 48))
    assert ref.is_novel(ref.novelty(off)).mean() > 0.99
    assert ref.is_novel(ref.novelty(_low_rank(500, 4, shift=4.0))).mean() > 0.99
    # monotone in the score, within [0, 1]
    mixed = np.concatenate([_low_rank(300, 8), off])
    scores, nov = ref.score(mixed), ref.novelty(mixed)
    order = np.argsort(scores)
    assert np.all(np.diff(nov[order]) >= -1e-12) and nov.min() >= 0 and nov.max() <= 1


def test_the_standardisation_is_the_heads():
    x = _low_rank(300, 5)
    head = ClusterHead(HeadConfig(in_dim=48, n_clusters=2))
    t = torch.as_tensor(x, dtype=torch.float32)
    head.set_input_stats(t.mean(0), t.std(0))
    np.testing.assert_allclose(floored_std(x.std(0, ddof=1)), head.input_std.numpy(), rtol=1e-5)
    ref = NoveltyReference.fit(x)
    want = head.prepare(t).detach().numpy()
    np.testing.assert_allclose(ref.unit(x), want, atol=1e-5)


def test_json_round_trip_and_the_cluster_scale():
    x = np.concatenate([_low_rank(300, 6), _low_rank(300, 7, shift=6.0)])
    labels = np.repeat([0, 1], 300)
    ref = NoveltyReference.fit(x, labels, "head")
    assert ref.clusters == 2 and ref.cluster_source == "head"
    assert -1 < ref.cluster_radius < ref.cluster_similarity < 1
    text = ref.to_json()
    assert len(text) < 20_000  # "a few KB"
    back = NoveltyReference.from_json(text)
    np.testing.assert_allclose(back.novelty(x), ref.novelty(x), atol=1e-4)  # float32 stored
    assert (back.cluster_radius, back.clusters) == (ref.cluster_radius, 2)
    for bad in ('{"format": "something else"}', "not json",
                text.replace('"f32":"', '"f32":"!!')):
        with pytest.raises(ValueError):
            NoveltyReference.from_json(bad)
    with pytest.raises(ValueError, match="at least 20 windows"):
        NoveltyReference.fit(x[:10])


def test_a_damaged_or_mismatched_reference_is_refused(stream_model, tmp_path):
    model = onnx.load(stream_model)
    meta = {p.key: p.value for p in model.metadata_props}
    ref = NoveltyReference.fit(np.random.default_rng(0).standard_normal((100, 64)))
    for name, value, message in (("broken", "{not json", "damaged metadata"),
                                 ("wrong_dim", NoveltyReference.fit(
                                     np.random.default_rng(0).standard_normal((100, 8))
                                 ).to_json(), "8-d embeddings in a model of 64-d")):
        set_metadata(model, {**meta, "novelty_reference": value})
        onnx.save(model, tmp_path / f"{name}.onnx")
        with pytest.raises(ModelError, match=message):
            OnnxModel(tmp_path / f"{name}.onnx")
    set_metadata(model, {**meta, "novelty_reference": ref.to_json()})
    onnx.save(model, tmp_path / "good.onnx")
    assert OnnxModel(tmp_path / "good.onnx").info.reference.windows == 100


@pytest.fixture(scope="module")
def default_with_reference(tmp_path_factory, fsdd_subset) -> Path:
    """The shipped encoder + head, exported by the CLI with 120 FSDD clips as reference."""
    out = tmp_path_factory.mktemp("novelty") / "default.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.models.export",
         "--encoder", str(ASSETS / "default-encoder.safetensors"),
         "--head", str(ASSETS / "default-head.safetensors"), "-o", str(out),
         "--data", str(fsdd_subset), "--quiet"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "novelty reference of" in proc.stderr
    return out


def _stream(model: Path, paths: list[Path], out: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.stream.cli", "--source", "file", *map(str, paths),
         "--model", str(model), "--sink", f"jsonl:{out}", "-q"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [r for r in read_jsonl(out) if not r["silent"]]


def test_instrument_notes_are_novel_and_unheard_speech_is_not(default_with_reference,
                                                              fsdd_dir, tmp_path):
    info = OnnxModel(default_with_reference).info
    ref = info.reference
    assert ref is not None and ref.cluster_source == "head" and 2 <= ref.clusters <= 10
    assert 200 < ref.windows < 600  # 120 clips alone and once more as one stream
    notes = sorted(GM_NOTES.rglob("*.flac"))[::12]  # 37 notes, every family
    heard = _stream(default_with_reference, notes, tmp_path / "notes.jsonl")
    assert len(heard) > 80
    novel = [r for r in heard if r["novel"]]
    assert len(novel) >= 0.8 * len(heard)
    assert all(r["novelty"] > 1 - ref.alpha for r in novel)
    first = [r for r in heard if r["seq"] == 0]  # from each stream's first window on
    assert sum(r["novel"] for r in first) >= 0.8 * len(first)
    # discovered, not dropped: cluster ids from K on, marked as such
    assert all(r["discovered"] and r["cluster"] >= 10 for r in novel)
    # clips the reference never saw: the same speakers, other takes
    unheard = copy_fsdd(fsdd_dir, tmp_path / "unheard", range(4), ("george", "jackson",
                                                                    "lucas"), range(10, 20))
    speech = _stream(default_with_reference, sorted(unheard.iterdir()),
                     tmp_path / "speech.jsonl")
    assert len(speech) >= 120
    assert sum(r["novel"] for r in speech) <= 0.05 * len(speech)
    assert all(0 <= r["novelty"] < 1 for r in speech)
    assert all(not r["discovered"] for r in speech if not r["novel"])


def test_export_without_data_says_so(tmp_path):
    shutil.copy(ASSETS / "default-encoder.safetensors", tmp_path / "enc.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.models.export", "--encoder",
         str(tmp_path / "enc.safetensors"), "--head", str(ASSETS / "default-head.safetensors"),
         "-o", str(tmp_path / "m.onnx"), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no --data: the model carries no novelty reference" in proc.stderr
    assert "novelty_reference" not in json.loads(proc.stdout)["metadata"]
    assert OnnxModel(tmp_path / "m.onnx").info.reference is None
    bad = subprocess.run(
        [sys.executable, "-m", "audioclust.models.export", "--encoder",
         str(tmp_path / "enc.safetensors"), "-o", str(tmp_path / "n.onnx"), "--data",
         str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "no audio files for the novelty reference" in bad.stderr


def test_novelty_metric_and_discovered_assignments(default_with_reference, tmp_path):
    from prometheus_client.exposition import generate_latest

    from audioclust.stream.config import StreamConfig
    from audioclust.stream.metrics import StreamMetrics
    from audioclust.stream.pipeline import Pipeline
    from audioclust.stream.sinks.jsonl import JsonlSink
    from audioclust.stream.sources.file import FileSource

    notes = sorted(GM_NOTES.rglob("*.flac"))[:4]
    model = OnnxModel(default_with_reference, threads=1)
    metrics = StreamMetrics()
    cfg = StreamConfig()
    Pipeline(model, FileSource(notes, 16000, cfg.file), JsonlSink(tmp_path / "o.jsonl"), cfg,
             metrics).run()
    heard = [r for r in read_jsonl(tmp_path / "o.jsonl") if not r["silent"]]
    text = generate_latest(metrics.registry).decode()
    count = next(line for line in text.splitlines() if line.startswith("audioclust_novelty_count"))
    assert float(count.split()[-1]) == len(heard) > 0
    discovered = sum(r["discovered"] for r in heard)
    assert f'audioclust_assignments_total{{cluster="discovered"}} {float(discovered)}' in text
