"""Head-free mode: an encoder-only model, clustered online by river's STREAMKMeans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import concat_clips, read_jsonl, run_cli, windows_of

from audioclust.models.audio import load_audio
from audioclust.models.runtime import OnnxModel
from audioclust.stream.config import FileConfig, HeadFreeConfig, StreamConfig
from audioclust.stream.headfree import HeadFreeAssigner, OnlineClusterer
from audioclust.stream.pipeline import Pipeline
from audioclust.stream.sinks.jsonl import JsonlSink
from audioclust.stream.sources.file import FileSource


@pytest.fixture(scope="module")
def headfree_model(tmp_path_factory) -> Path:
    import torch

    from audioclust.models.embedder import Embedder, save_embedder
    from audioclust.models.encoders import build_encoder
    from audioclust.models.export import export_model

    d = tmp_path_factory.mktemp("headfree")
    torch.manual_seed(0)
    embedder = Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                        mean=-6.0, std=5.0).eval()
    enc = save_embedder(embedder, d / "enc.safetensors", {"method": "random", "data": "none"})
    return export_model(enc, None, d / "enc_only.onnx").path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, fsdd_subset) -> list[Path]:
    d = tmp_path_factory.mktemp("hf_rec")
    clips = sorted(fsdd_subset.iterdir())
    out = []
    for i in range(3):
        out.append(d / f"r{i}.wav")
        sf.write(out[-1], concat_clips(clips[i * 12 : i * 12 + 12]), 8000, subtype="PCM_16")
    return out


def test_confidence_is_a_softmax_of_cosines():
    c = OnlineClusterer(4, HeadFreeConfig(n_clusters=3, temperature=0.2))
    mu = c.centres()
    assert mu.shape == (3, 4) and np.abs(mu).max() < 0.1  # river's init: near the origin
    z = np.array([0.6, 0.0, 0.8, 0.0])
    cos = mu @ z / np.linalg.norm(mu, axis=1)
    want = np.exp(cos / 0.2) / np.exp(cos / 0.2).sum()
    np.testing.assert_allclose(c.posterior(z), want, rtol=1e-9)
    for _ in range(3 * c.config.chunk_size):  # learning pulls a centre towards z
        c.learn(z)
    best = int(np.argmax(c.posterior(z)))
    m = c.centres()[best]
    assert m @ z / np.linalg.norm(m) > 0.99 and c.posterior(z)[best] > 0.9


def test_head_free_pipeline_matches_direct_runs(headfree_model, recordings, tmp_path):
    model = OnnxModel(headfree_model, threads=1)
    assert model.head_free
    cfg = StreamConfig(max_batch=6, file=FileConfig(parallel=1))  # one file after another
    out = tmp_path / "o.jsonl"
    Pipeline(model, FileSource(recordings, 16000, cfg.file), JsonlSink(out), cfg).run()
    got = read_jsonl(out)
    # reference: each window alone through the model, the same assigner in the same order
    ref = HeadFreeAssigner(64, cfg.headfree, cfg.assign)
    want = []
    for path in recordings:
        audio = load_audio(path, 16000)
        for index, _start, x in windows_of(audio, 16000, 8000, model.info.min_samples):
            if 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < cfg.silence_dbfs:
                want.append((str(path), index, None, None))
                continue
            z, p = model.embed([x])
            assert p is None
            a = ref.process(str(path), z[0])
            want.append((str(path), index, a.cluster, a.confidence))
    assert len(got) == len(want) > 30
    for r, (stream, seq, cluster, confidence) in zip(got, want, strict=True):
        assert (r["stream"], r["seq"], r["cluster"]) == (stream, seq, cluster)
        assert (r["confidence"] is None) == (confidence is None)
        if confidence is not None:
            assert abs(r["confidence"] - confidence) < 1e-4
    heard = [r for r in got if not r["silent"]]
    assert all(0 <= r["top"] < 8 and 0 < r["confidence"] <= 1 for r in heard)
    assert sum(r["cluster"] is not None for r in heard) > 0


def test_head_free_state_round_trip(headfree_model, recordings, tmp_path):
    model = OnnxModel(headfree_model, threads=1)
    audio = load_audio(recordings[0], 16000)
    zs = [model.embed([x])[0][0] for _, _, x in windows_of(audio, 16000, 8000, 2000)]
    cfg = HeadFreeConfig(chunk_size=5)
    a = HeadFreeAssigner(64, cfg, model_id="m")
    for z in zs[:13]:  # mid-chunk: the partial chunk must be saved too
        a.process("s", z)
    a.save(tmp_path / "hf.npz")
    b = HeadFreeAssigner(64, cfg, model_id="m")
    assert b.load(tmp_path / "hf.npz") == 1
    np.testing.assert_allclose(b.clusterer.centres(), a.clusterer.centres())
    for z in zs[13:]:
        ra, rb = a.process("s", z), b.process("s", z)
        assert (ra.cluster, ra.top, ra.novel) == (rb.cluster, rb.top, rb.novel)
        assert abs(ra.confidence - rb.confidence) < 1e-9
    np.testing.assert_allclose(b.clusterer.centres(), a.clusterer.centres())
    with np.load(tmp_path / "hf.npz", allow_pickle=False) as z:  # arrays only, no pickle
        assert "__headfree__.centres" in z.files
    with pytest.raises(ValueError, match=r"centroids|head-free centres"):
        HeadFreeAssigner(64, HeadFreeConfig(n_clusters=3), model_id="m").load(
            tmp_path / "hf.npz")


def test_head_free_cli_with_state(headfree_model, recordings, tmp_path):
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
                                      "confidence", "novel", "silent", "model"}
    # the second run starts from the learnt state, not from scratch
    assert a[0]["similarity"] is None and b[0]["similarity"] is not None
