"""Encoder specs through every command: onnx:FILE end to end (embed, head, merged export,
stream), aisfx through eval/train/export, ssl --init, and each spec's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from audioclust.models.audio import load_audio
from audioclust.models.embedder import Embedder
from audioclust.models.encoder_spec import open_encoder
from audioclust.models.encoders import build_encoder
from audioclust.models.onnx_encoder import OnnxEncoderOptions
from audioclust.models.onnx_export import export_onnx, set_metadata

EVAL = [sys.executable, "-m", "audioclust.training.evaluate"]
TRAIN = [sys.executable, "-m", "audioclust.training.train"]
EXPORT = [sys.executable, "-m", "audioclust.models.export"]


def run(cmd: list[str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert text in lines[0], lines[0]


class UserEncoder(nn.Module):
    """What a user exports: waveform (B, T) -> embedding (B, D), no lengths."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embedder(audio)


@pytest.fixture(scope="module")
def user_encoder():
    torch.manual_seed(5)
    return UserEncoder(Embedder(build_encoder("audiontt", {"embed_dim": 32, "channels": 8}),
                                mean=-10.0, std=7.0).eval()).eval()


def _export_user(module: nn.Module, path: Path, metadata: dict | None) -> Path:
    export_onnx(module, (torch.zeros(2, 16000),), path, ["audio"], ["emb"],
                {"audio": {0: "batch", 1: "samples"}}, min_sizes={"samples": 1120})
    if metadata is not None:
        model = onnx.load(path)
        set_metadata(model, metadata)
        onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def user_onnx(tmp_path_factory, user_encoder) -> Path:
    d = tmp_path_factory.mktemp("user_onnx")
    return _export_user(user_encoder, d / "clap-like.onnx",
                        {"sample_rate": "16000", "min_samples": "1120"})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spec_cache")


def test_onnx_encoder_embeds_as_the_model_does(user_onnx, user_encoder, fsdd_dir):
    enc = open_encoder(f"onnx:{user_onnx}")
    assert (enc.kind, enc.sample_rate, enc.embed_dim, enc.min_samples) == ("onnx", 16000, 32,
                                                                          1120)
    assert enc.module is None and enc.randomise is None
    clips = [load_audio(fsdd_dir / n) for n in ("0_george_0.wav", "4_theo_1.wav",
                                                "4_theo_1.wav", "9_lucas_7.wav")]
    got = enc.embed(clips, batch_size=8)
    with torch.no_grad():
        want = np.concatenate([user_encoder(torch.from_numpy(c)[None]).numpy() for c in clips])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # The identity follows the options that change what the model is told.
    other = open_encoder(f"onnx:{user_onnx}", OnnxEncoderOptions(sample_rate=8000))
    assert other.sample_rate == 8000 and other.sha256 != enc.sha256


def test_onnx_encoder_errors(tmp_path, user_encoder, user_onnx):
    bare = _export_user(user_encoder, tmp_path / "bare.onnx", None)
    with pytest.raises(ValueError, match="sample rate unknown: give --onnx-sample-rate"):
        open_encoder(f"onnx:{bare}")
    assert open_encoder(f"onnx:{bare}", OnnxEncoderOptions(sample_rate=16000)).embed_dim == 32
    with pytest.raises(ValueError, match=r"no input 'wave' \(the graph has audio\)"):
        open_encoder(f"onnx:{user_onnx}", OnnxEncoderOptions(input_name="wave"))

    class TwoOut(nn.Module):
        def forward(self, a, b):
            return a.mean(1, keepdim=True), (a + b).mean(1, keepdim=True)

    export_onnx(TwoOut(), (torch.zeros(2, 100), torch.zeros(2, 100)), tmp_path / "two.onnx",
                ["a", "b"], ["x", "y"], {"a": {0: "n"}, "b": {0: "n"}})
    with pytest.raises(ValueError, match="has 2 inputs"):
        open_encoder(f"onnx:{tmp_path / 'two.onnx'}", OnnxEncoderOptions(sample_rate=16000))
    (tmp_path / "junk.onnx").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        open_encoder(f"onnx:{tmp_path / 'junk.onnx'}")
    with pytest.raises(FileNotFoundError, match="no such ONNX model"):
        open_encoder(f"onnx:{tmp_path / 'none.onnx'}")
    with pytest.raises(ValueError, match="give the model file"):
        open_encoder("onnx:")


def test_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint; an encoder is an "
                       "audioclust checkpoint"):
        open_encoder(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        open_encoder("clap")
    with pytest.raises(ValueError, match="a folder; for a Hugging Face model give hf:"):
        open_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        open_encoder(f"hf:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        open_encoder(f"byola:{tmp_path / 'x.pth'}")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        open_encoder(tmp_path / "x.safetensors")


@pytest.mark.slow
def test_onnx_encoder_head_export_and_stream(user_onnx, fsdd_subset, cache, tmp_path):
    from audioclust.models.heads import load_head
    from audioclust.models.runtime import OnnxModel

    spec = f"onnx:{user_onnx}"
    proc = run(TRAIN, "head", "--method", "temi", "--encoder", spec, "--data", fsdd_subset,
               "--clusters", "4", "--epochs", "3", "--out", tmp_path / "head", "--cache-dir",
               cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    enc = open_encoder(spec)
    assert summary["encoder_sha256"] == enc.sha256
    proc = run(EVAL, "head", "--head", tmp_path / "head" / "head.safetensors", "--encoder",
               spec, "--data", fsdd_subset, "--labels", "digit", "--out", tmp_path / "he",
               "--cache-dir", cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["encoder_sha256"] == enc.sha256
    proc = run(EXPORT, "--encoder", spec, "--head", tmp_path / "head" / "head.safetensors",
               "-o", tmp_path / "merged.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    model = OnnxModel(tmp_path / "merged.onnx", provider="cpu")
    assert model.info.sample_rate == 16000 and model.info.encoder["name"] == "onnx"
    assert model.info.encoder_method == "pretrained:onnx" and model.info.n_clusters == 4
    clips = [load_audio(fsdd_subset / n) for n in ("0_george_0.wav", "3_lucas_9.wav")]
    window = np.stack([np.resize(c, 16000) for c in clips])
    emb, post = model.embed(window)
    np.testing.assert_allclose(emb, enc.embed(list(window)), rtol=0, atol=1e-4)
    head = load_head(tmp_path / "head" / "head.safetensors")
    with torch.no_grad():
        want = head(torch.from_numpy(emb)).numpy()
    np.testing.assert_allclose(post, want, rtol=0, atol=1e-4)
    proc = subprocess.run([sys.executable, "-m", "audioclust.stream.cli", "--source", "file",
                           "--model", tmp_path / "merged.onnx", "-q",
                           fsdd_subset / "1_george_3.wav"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records and all(0 <= r["cluster"] < 4 for r in records if r.get("cluster") is not None)
    # A head trained on another encoder does not merge silently into the wrong graph.
    proc = run(EVAL, "head", "--head", tmp_path / "head" / "head.safetensors", "--encoder",
               "aisfx", "--data", fsdd_subset, "--labels", "digit", "--quiet")
    one_line_error(proc, "was trained on the encoder with SHA-256")


@pytest.mark.slow
def test_aisfx_through_the_commands(fsdd_subset, cache, tmp_path):
    import onnxruntime as ort

    proc = run(EVAL, "encoder", "--encoder", "aisfx", "--data", fsdd_subset, "--labels",
               "digit", "--out", tmp_path / "eval", "--cache-dir", cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kind"] == "aisfx" and report["embed_dim"] == 512
    assert {r["clusterer"] for r in report["trained"]["rows"]} == {"kmeans", "agglomerative"}
    assert report["random"]["rows"] and 0 <= report["trained"]["linear_probe"]["mean"] <= 1
    assert "pretrained" in (tmp_path / "eval" / "encoder-eval.md").read_text()
    proc = run(TRAIN, "head", "--method", "deepcluster", "--encoder", "aisfx", "--data",
               fsdd_subset, "--clusters", "4", "--epochs", "2", "--out", tmp_path / "head",
               "--cache-dir", cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = run(EXPORT, "--encoder", "aisfx", "--head", tmp_path / "head" / "head.safetensors",
               "-o", tmp_path / "aisfx.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)["metadata"]
    assert meta["sample_rate"] == "44100" and "CC BY 4.0" in json.loads(meta["encoder"])["credit"]
    enc = open_encoder("aisfx")
    session = ort.InferenceSession(str(tmp_path / "aisfx.onnx"),
                                   providers=["CPUExecutionProvider"])
    clips = [load_audio(fsdd_subset / n, sr=44100) for n in ("0_george_0.wav", "2_jackson_4.wav")]
    long = np.concatenate(clips * 6)  # several blocks
    batch = np.zeros((3, len(long)), np.float32)
    batch[0, : len(clips[0])], batch[1, : len(clips[1])], batch[2] = clips[0], clips[1], long
    lengths = np.array([len(clips[0]), len(clips[1]), len(long)], np.int64)
    got, _ = session.run(None, {"waveform": batch, "lengths": lengths})
    np.testing.assert_allclose(got, enc.embed([*clips, long]), rtol=0, atol=1e-4)
    # baselines takes pretrained encoders beside log-mel features, each at its own rate
    proc = run(EVAL, "baselines", "--data", fsdd_subset, "--labels", "digit", "--encoder",
               "aisfx", "--features", "logmel", "--reducers", "none", "--clusterers", "kmeans",
               "--out", tmp_path / "base", "--cache-dir", cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert {r["features"] for r in json.loads(proc.stdout)} == {"logmel", "encoder:aisfx"}


@pytest.mark.slow
def test_ssl_starts_from_a_pretrained_encoder(fsdd_subset, cache, tmp_path, user_onnx):
    from test_pretrained import _byola_state

    from audioclust.models.embedder import load_embedder, read_embedder_metadata

    torch.save(_byola_state(512), tmp_path / "byola.pth")
    spec = f"byola:{tmp_path / 'byola.pth'}"
    proc = run(TRAIN, "ssl", "--method", "slicer", "--init", spec, "--data", fsdd_subset,
               "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "run", "--cache-dir",
               cache, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    path = Path(json.loads(proc.stdout)["encoder"])
    meta = read_embedder_metadata(path)
    assert meta["encoder_config"]["flatten"] == "band_channel"
    assert meta["frontend"]["mel_scale"] == "htk" and meta["info"]["config"]["init"] == spec
    start, tuned = open_encoder(spec).embedder, load_embedder(path)
    assert float(tuned.norm_mean) == pytest.approx(float(start.norm_mean))
    changed = [k for k, v in tuned.encoder.state_dict().items()
               if not torch.equal(v, start.encoder.state_dict()[k])]
    assert changed  # trained from the pretrained weights
    one_line_error(run(TRAIN, "ssl", "--init", f"onnx:{user_onnx}", "--data", fsdd_subset,
                       "--out", tmp_path / "x"), "trains log-mel encoders")
    one_line_error(run(TRAIN, "ssl", "--method", "msn", "--init", spec, "--data", fsdd_subset,
                       "--out", tmp_path / "y"), "MSN masks the ViT's patch tokens")
    # SPICE's joint stage tunes the encoder (stage 2 alone takes any encoder's embeddings)
    proc = run(TRAIN, "head", "--method", "spice", "--fine-tune", "--encoder",
               f"onnx:{user_onnx}", "--data", fsdd_subset, "--clusters", "4", "--out",
               tmp_path / "z")
    one_line_error(proc, "trains log-mel encoders")


def test_every_encoder_command_documents_the_specs():
    for cmd in ([*EVAL, "baselines"], [*EVAL, "encoder"], [*EVAL, "head"], [*TRAIN, "head"],
                EXPORT):
        proc = run(cmd, "--help")
        assert proc.returncode == 0 and "byola:FILE" in proc.stdout, cmd
        assert "--onnx-sample-rate" in proc.stdout
    assert "--init" in run([*TRAIN, "ssl"], "--help").stdout


def test_pretrained_state_is_checked_not_trusted(tmp_path):
    # A state dict of the right names with a tensor of the wrong dtype kind still loads as
    # float; a non-tensor value is rejected before it reaches the module.
    from test_pretrained import _byola_state

    state = OrderedDict(_byola_state(512))
    state["fc.3.bias"] = [0.0] * 512
    torch.save(state, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict of named tensors"):
        open_encoder(f"byola:{tmp_path / 'list.pth'}")
