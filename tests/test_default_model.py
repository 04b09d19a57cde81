"""The shipped default model: loads torch-free, carries its metadata, streams the demo
recording with no flags beyond the source, and its int8 form agrees with it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audioclust.models.audio import find_audio_files, load_audio
from audioclust.models.export import quantize_model
from audioclust.models.runtime import OnnxModel
from audioclust.stream.cli import default_model_path

DEMO = default_model_path().with_name("demo-fsdd.flac")


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(default_model_path(), threads=1)


def test_default_model_metadata(model):
    info = model.info
    assert default_model_path().stat().st_size < 8 * 2**20  # "a few MB"
    assert (info.sample_rate, info.n_clusters, info.embedding_dim) == (16000, 10, 256)
    assert (info.window_seconds, info.hop_seconds) == (1.0, 0.5)
    assert (info.encoder_method, info.head_method) == ("slicer", "temi")
    assert "FSDD" in info.description
    assert info.prior.shape == (10,) and abs(info.prior.sum() - 1) < 1e-5
    assert info.prior.min() > 0.02  # the head uses every cluster


def test_main_job_streams_the_demo_with_the_default_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.cli", "--source", "file",
                        str(DEMO), "--sink", f"jsonl:{tmp_path / 'out.jsonl'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [rec["seq"] for rec in records] == list(range(78))  # 39.2 s, 1 s windows, 0.5 s hop
    assert all(rec["model"].startswith("default@") for rec in records)
    clusters = {rec["cluster"] for rec in records if rec["cluster"] is not None}
    assert len(clusters) >= 4  # thirty words by three speakers are not one sound


def test_int8_agrees_with_fp32_on_fsdd(model, fsdd_subset, tmp_path):
    int8 = OnnxModel(quantize_model(default_model_path(), tmp_path / "int8.onnx"), threads=1)
    assert int8.info.quantization == "int8"
    clips = [load_audio(p, 16000) for p in find_audio_files(fsdd_subset)]
    a = np.concatenate([model.embed(clips[i:i + 32])[1].argmax(1) for i in range(0, 120, 32)])
    b = np.concatenate([int8.embed(clips[i:i + 32])[1].argmax(1) for i in range(0, 120, 32)])
    assert (a == b).mean() >= 0.98
