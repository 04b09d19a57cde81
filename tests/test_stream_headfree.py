"""Head-free mode: an encoder-only model with a novelty reference, clustered online per
stream by the open-set clusterer; the same records whatever the batching and interleaving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import concat_clips, read_jsonl, run_cli, windows_of

from audioclust.models.audio import load_audio
from audioclust.models.runtime import OnnxModel
from audioclust.stream.config import FileConfig, StreamConfig
from audioclust.stream.headfree import HeadFreeAssigner
from audioclust.stream.pipeline import Pipeline
from audioclust.stream.sinks.jsonl import JsonlSink
from audioclust.stream.sources.file import FileSource
from audioclust.stream.state import read_state_file


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, fsdd_subset) -> list[Path]:
    d = tmp_path_factory.mktemp("hf_rec")
    clips = sorted(fsdd_subset.iterdir())
    out = []
    for i in range(3):
        out.append(d / f"r{i}.wav")
        sf.write(out[-1], concat_clips(clips[i * 12 : i * 12 + 12]), 8000, subtype="PCM_16")
    return out


def _run(model: OnnxModel, paths: list[Path], out: Path, **kw) -> list[dict]:
    cfg = StreamConfig(**kw)
    Pipeline(model, FileSource(paths, 16000, cfg.file), JsonlSink(out), cfg).run()
    return read_jsonl(out)


def test_head_free_pipeline_matches_direct_runs(headfree_model, recordings, tmp_path):
    model = OnnxModel(headfree_model, threads=1)
    assert model.head_free
    ref = model.info.reference
    assert ref is not None and ref.cluster_source == "auto" and ref.clusters >= 2
    got = _run(model, recordings, tmp_path / "o.jsonl", max_batch=6,
               file=FileConfig(parallel=1))
    # reference: each window alone through the model, assigned in order, stream by stream
    cfg = StreamConfig()
    direct = HeadFreeAssigner(ref, cfg.openset, cfg.assign)
    want = []
    for path in recordings:
        audio = load_audio(path, 16000)
        for index, _start, x in windows_of(audio, 16000, 8000, model.info.min_samples):
            if 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < cfg.silence_dbfs:
                want.append((str(path), index, None, None, None))
                continue
            z, p = model.embed([x])
            assert p is None
            a = direct.process(str(path), z[0])
            want.append((str(path), index, a.cluster, a.confidence, a.novelty))
    assert len(got) == len(want) > 30
    for r, (stream, seq, cluster, confidence, novelty) in zip(got, want, strict=True):
        assert (r["stream"], r["seq"], r["cluster"]) == (stream, seq, cluster)
        assert (r["confidence"] is None) == (confidence is None)
        if confidence is not None:
            assert abs(r["confidence"] - confidence) < 1e-4
            assert abs(r["novelty"] - novelty) < 1e-4
    heard = [r for r in got if not r["silent"]]
    assert all(r["discovered"] and r["cluster"] >= 0 for r in heard)
    assert all(0 < r["confidence"] <= 1 and 0 <= r["novelty"] <= 1 for r in heard)
    per_stream = {s: {r["cluster"] for r in heard if r["stream"] == s} for s in map(str,
                                                                                   recordings)}
    assert all(len(ids) >= 2 for ids in per_stream.values())  # 12 words are not one sound


def test_streams_do_not_depend_on_each_other(headfree_model, recordings, tmp_path):
    """Per-stream clusters: interleaving and batching change nothing in a stream's records."""
    model = OnnxModel(headfree_model, threads=1)
    alone = _run(model, recordings, tmp_path / "a.jsonl", max_batch=1,
                 file=FileConfig(parallel=1))
    mixed = _run(model, recordings, tmp_path / "b.jsonl", max_batch=16,
                 file=FileConfig(parallel=3))

    def key(r):
        return r["stream"], r["seq"]

    a, b = sorted(alone, key=key), sorted(mixed, key=key)
    assert [key(r) for r in a] == [key(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert (ra["cluster"], ra["novel"], ra["discovered"]) == \
            (rb["cluster"], rb["novel"], rb["discovered"])
        if ra["confidence"] is not None:
            assert abs(ra["confidence"] - rb["confidence"]) < 1e-4


def test_head_free_state_round_trip(headfree_model, recordings, tmp_path):
    model = OnnxModel(headfree_model, threads=1)
    ref = model.info.reference
    audio = load_audio(recordings[0], 16000)
    zs = [model.embed([x])[0][0] for _, _, x in windows_of(audio, 16000, 8000, 2000)]
    a = HeadFreeAssigner(ref, model_id="m")
    for z in zs[:13]:
        a.process("s", z)
    a.save(tmp_path / "hf.npz")
    b = HeadFreeAssigner(ref, model_id="m")
    assert b.load(tmp_path / "hf.npz") == 1
    for z in zs[13:]:
        ra, rb = a.process("s", z), b.process("s", z)
        assert (ra.cluster, ra.top, ra.novel) == (rb.cluster, rb.top, rb.novel)
        assert abs(ra.confidence - rb.confidence) < 1e-9
    np.testing.assert_allclose(b.stream("s").clusterer.centroids, a.stream("s").clusterer.centroids)
    # the stream's own state carries its clusterer: arrays only, no pickle
    state = read_state_file(tmp_path / "hf.npz")
    arrays, _ = state.streams["s"]
    assert "openset.centroids" in arrays and "openset.space.mean" in arrays


def test_head_free_cli_with_state(headfree_model, recordings, stream_model, tmp_path):
    state = tmp_path / "state.npz"
    args = ["--source", "file", str(recordings[1]), "--model", str(headfree_model),
            "--state", str(state)]
    first = run_cli(*args, "--sink", f"jsonl:{tmp_path / 'a.jsonl'}")
    assert first.returncode == 0, first.stderr
    assert "head-free" in first.stderr and state.is_file()
    second = run_cli(*args, "--sink", f"jsonl:{tmp_path / 'b.jsonl'}")
    assert second.returncode == 0 and "restored the state of 1 streams" in second.stderr
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert len(a) == len(b) > 5
    assert set(a[0]) == set(b[0]) >= {"stream", "seq", "start", "end", "cluster",
                                      "confidence", "novel", "silent", "model", "novelty",
                                      "discovered"}
    # the second run went on from the learnt clusters, not from scratch
    heard = sum(not r["silent"] for r in a)
    _, scalars = read_state_file(state).streams[str(recordings[1])]
    assert scalars["openset"]["seen"] == 2 * heard
    # a head model's state is refused, in one line
    other = tmp_path / "head.npz"
    assert run_cli("--source", "file", str(recordings[1]), "--model", str(stream_model),
                   "--state", str(other), "--sink", f"jsonl:{tmp_path / 'c.jsonl'}"
                   ).returncode == 0
    bad = run_cli("--source", "file", str(recordings[1]), "--model", str(headfree_model),
                  "--state", str(other), "--sink", f"jsonl:{tmp_path / 'd.jsonl'}")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) >= 1
    assert "error:" in bad.stderr.strip().splitlines()[-1]


def test_head_free_model_without_reference_is_refused(headfree_encoder, recordings, tmp_path):
    from audioclust.models.export import export_model

    bare = export_model(headfree_encoder, None, tmp_path / "bare.onnx").path
    proc = run_cli("--source", "file", str(recordings[0]), "--model", str(bare))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "needs a novelty reference" in last and "--data" in last
