"""ONNX export (waveform -> embedding + posterior) and the runtime loader, for real on ORT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from audioclust.models.audio import load_audio
from audioclust.models.embedder import Embedder, save_embedder
from audioclust.models.encoders import build_encoder
from audioclust.models.export import METADATA_KEYS, export_model
from audioclust.models.frontend import LogMelFrontend
from audioclust.models.heads import ClusterHead, HeadConfig, load_head, save_head
from audioclust.models.onnx_export import export_onnx, set_metadata
from audioclust.models.runtime import ModelError, OnnxModel

K = 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    embedder = Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                        mean=-6.0, std=5.0).eval()
    enc = save_embedder(embedder, d / "enc.safetensors", {"method": "byola", "data": "fsdd"})
    head = ClusterHead(HeadConfig(64, K, n_heads=3, hidden_dim=32))
    head.prior.copy_(torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]))
    head.temperature.fill_(0.1)  # sharp posteriors, so argmax agreement means something
    head.select(2)
    return enc, save_head(head, d / "head.safetensors", "temi", info={"data": "fsdd"})


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(*checkpoints, out, window_seconds=0.8, hop_seconds=0.4, description="test")
    return out


def _torch_outputs(checkpoints, clips):
    from audioclust.models.embedder import load_embedder

    embedder, head = load_embedder(checkpoints[0]), load_head(checkpoints[1])
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    with torch.inference_mode():
        z = embedder(batch, lengths)
        return z.numpy(), head(z).numpy()


def test_metadata_is_complete(exported, checkpoints):
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    assert set(METADATA_KEYS) <= set(meta)
    model = OnnxModel(exported)
    info = model.info
    assert (info.sample_rate, info.n_clusters, info.embedding_dim) == (16000, K, 64)
    assert (info.window_seconds, info.hop_seconds) == (0.8, 0.4)
    assert info.frontend["hop_length"] == 160 and info.frontend["n_mels"] == 64
    np.testing.assert_allclose(info.prior, [0.3, 0.2, 0.2, 0.1, 0.1, 0.1], atol=1e-6)
    assert (info.encoder_method, info.head_method) == ("byola", "temi")
    assert info.encoder["name"] == "audiontt" and info.quantization == "none"
    assert len(info.weights_sha256) == 64 and info.audioclust_version
    assert model.provider == "CPUExecutionProvider"  # no GPU here; auto falls back


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("samples", [1120, 8000, 16000, 40000])
def test_matches_torch_on_random_audio(exported, checkpoints, batch, samples):
    rng = np.random.default_rng(samples + batch)
    clips = list((rng.standard_normal((batch, samples)) * 0.1).astype(np.float32))
    z, p = OnnxModel(exported).embed(np.stack(clips))
    zt, pt = _torch_outputs(checkpoints, clips)
    np.testing.assert_allclose(z, zt, atol=1e-4, rtol=0)
    np.testing.assert_allclose(p, pt, atol=1e-4, rtol=0)


def test_matches_torch_on_speech_of_mixed_lengths(exported, checkpoints, fsdd_dir):
    names = ["0_george_0.wav", "5_lucas_3.wav", "8_theo_9.wav", "3_nicolas_20.wav"]
    clips = [load_audio(fsdd_dir / n) for n in names]
    assert len({len(c) for c in clips}) == 4
    model = OnnxModel(exported)
    z, p = model.embed(clips)
    zt, pt = _torch_outputs(checkpoints, clips)
    np.testing.assert_allclose(z, zt, atol=1e-4, rtol=0)
    np.testing.assert_allclose(p, pt, atol=1e-4, rtol=0)
    # padding in a batch changes nothing: each clip alone gives the same row
    for i, clip in enumerate(clips):
        zi, pi = model.embed([clip])
        np.testing.assert_allclose(zi[0], z[i], atol=1e-4, rtol=0)
        np.testing.assert_allclose(pi[0], p[i], atol=1e-5, rtol=0)


def test_int8_export_agrees(checkpoints, exported, tmp_path, fsdd_subset):
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.models.export", "--encoder", str(checkpoints[0]),
         "--head", str(checkpoints[1]), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8",
         "--window", "0.8", "--hop", "0.4", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["metadata"]["quantization"] == "int8"
    q = OnnxModel(tmp_path / "q.onnx")
    assert q.info.quantization == "int8"
    assert (tmp_path / "q.onnx").stat().st_size < exported.stat().st_size
    clips = [load_audio(p) for p in sorted(fsdd_subset.iterdir())]
    z, p = OnnxModel(exported).embed(clips)
    zq, pq = q.embed(clips)
    cos = (z * zq).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(zq, axis=1)
    assert cos.min() > 0.99
    assert (p.argmax(1) == pq.argmax(1)).mean() >= 0.9


def test_runtime_errors(tmp_path, exported):
    with pytest.raises(ModelError, match="no such model file"):
        OnnxModel(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    with pytest.raises(ModelError, match="not a loadable ONNX model") as exc:
        OnnxModel(garbage)
    assert str(garbage) in str(exc.value)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(exported.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxModel(cut)
    # a real ONNX model that is not ours
    plain = export_onnx(LogMelFrontend(), (torch.zeros(1, 4000),), tmp_path / "fe.onnx",
                        ["waveform"], ["logmel"], {"waveform": {0: "batch", 1: "samples"}})
    with pytest.raises(ModelError, match="not an audioclust model"):
        OnnxModel(plain)
    # ours by its metadata, but with the wrong inputs
    fake = onnx.load(plain)
    set_metadata(fake, {p.key: p.value for p in onnx.load(exported).metadata_props})
    onnx.save(fake, tmp_path / "fake.onnx")
    with pytest.raises(ModelError, match="no input 'lengths'"):
        OnnxModel(tmp_path / "fake.onnx")
    # damaged metadata
    broken = onnx.load(exported)
    meta = {p.key: p.value for p in broken.metadata_props}
    meta["prior"] = "[0.5, 0.5]"
    set_metadata(broken, meta)
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="metadata prior"):
        OnnxModel(tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match="not available here"):
        OnnxModel(exported, provider="cuda")
    with pytest.raises(ValueError, match="shorter than the model's minimum"):
        OnnxModel(exported).embed([np.zeros(100, np.float32)])


def test_export_cli_errors(tmp_path, checkpoints):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "audioclust.models.export", *args],
                              capture_output=True, text=True, timeout=300)

    proc = run("--encoder", str(tmp_path / "none.safetensors"), "--head", str(checkpoints[1]),
               "-o", str(tmp_path / "m.onnx"))
    assert proc.returncode == 1 and "no such checkpoint" in proc.stderr
    proc = run("--encoder", str(checkpoints[1]), "--head", str(checkpoints[1]), "-o",
               str(tmp_path / "m.onnx"))
    assert proc.returncode == 1 and "not an audioclust embedder checkpoint" in proc.stderr
    proc = run("--encoder", str(checkpoints[0]), "--head", str(checkpoints[1]), "-o",
               str(tmp_path / "m.onnx"), "--window", "0.05", "--hop", "0.05")
    assert proc.returncode == 1 and "shorter than the model's minimum" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_a_head_trained_on_another_encoder(tmp_path, checkpoints):
    """The head records the SHA-256 of its encoder file; export compares it, as
    ``audioclust-eval head`` does, instead of shipping a head on embeddings it never saw."""
    from audioclust.models.heads import file_sha256

    enc, _ = checkpoints
    torch.manual_seed(1)
    other = save_embedder(Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                                   mean=-6.0, std=5.0).eval(), tmp_path / "other.safetensors")
    head = ClusterHead(HeadConfig(64, K, n_heads=1, hidden_dim=32))
    tied = save_head(head, tmp_path / "tied.safetensors", "temi",
                     encoder_sha256=file_sha256(enc))
    with pytest.raises(ValueError, match="trained on the encoder with SHA-256") as info:
        export_model(other, tied, tmp_path / "m.onnx")
    assert "\n" not in str(info.value) and str(other) in str(info.value)
    assert not (tmp_path / "m.onnx").exists()
    proc = subprocess.run([sys.executable, "-m", "audioclust.models.export", "--encoder",
                           str(other), "--head", str(tied), "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("audioclust-export: error: ") and \
        "trained on the encoder with SHA-256" in proc.stderr
    # the encoder it was trained on exports
    assert export_model(enc, tied, tmp_path / "ok.onnx").path.is_file()


def test_head_free_export(checkpoints, exported, tmp_path, fsdd_subset):
    """An encoder without a head: the graph gives the embedding only; metadata says so."""
    out = tmp_path / "enc_only.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.models.export", "--encoder", str(checkpoints[0]),
         "-o", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(proc.stdout)["metadata"]
    assert (meta["n_clusters"], meta["prior"], meta["head_method"]) == ("0", "[]", "none")
    assert [o.name for o in onnx.load(out).graph.output] == ["embedding"]
    model = OnnxModel(out)
    assert model.head_free and model.info.n_clusters == 0 and model.info.prior.size == 0
    clips = [load_audio(p) for p in sorted(fsdd_subset.iterdir())[:5]]
    z, p = model.embed(clips)
    assert p is None and z.shape == (5, 64)
    zb, pb = model.embed(np.stack([c[:4000] for c in clips]))
    assert pb is None and zb.shape == (5, 64)
    # the same embeddings as the encoder inside a full model
    zt, _ = _torch_outputs(checkpoints, clips)
    np.testing.assert_allclose(z, zt, atol=1e-4, rtol=0)
    assert not OnnxModel(exported).head_free  # a full model stays a full model
    # head-free metadata with a prior is refused
    broken = onnx.load(out)
    meta = {p.key: p.value for p in broken.metadata_props}
    meta["prior"] = "[1.0]"
    set_metadata(broken, meta)
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="head-free model"):
        OnnxModel(tmp_path / "broken.onnx")


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_export_refuses_a_zero_or_non_finite_prior(tmp_path, checkpoints, bad):
    # StreamAssigner divides by the prior: such a model would fail on its first window.
    head = load_head(checkpoints[1])
    prior = torch.tensor([0.4, 0.2, 0.2, 0.1, 0.1, 0.0])
    prior[-1] = bad
    head.prior.copy_(prior)
    path = save_head(head, tmp_path / "zero.safetensors", "spice")
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "audioclust.models.export", "--encoder",
                           str(checkpoints[0]), "--head", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "prior" in proc.stderr and "cluster(s) [5]" in proc.stderr
    assert not out.exists()
