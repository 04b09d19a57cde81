"""The general-audio default of audioclust-stream: built from the aisfx wheel into the
user's cache (a temporary one here, on a short cut of the shipped reference), run when no
--model is given; --model demo runs the FSDD model; audioclust-export --general's checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclust.models.audio import load_audio
from audioclust.models.general import (
    DESCRIPTION,
    build_general_model,
    demo_model_path,
    general_model_path,
    general_reference_path,
    is_current,
)

SR = 16000
# 8 s of the shipped reference: a few words and notes, enough windows for a reference
REFERENCE_SECONDS = 8.0


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "AUDIOCLUST_CACHE": str(cache)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    short = root / "reference.flac"
    audio = load_audio(general_reference_path(), SR)
    sf.write(short, audio[:int(REFERENCE_SECONDS * SR)], SR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOCLUST_CACHE", str(root))
        build_general_model(reference=short)
        assert general_model_path() == root / "audioclust" / "models" / "general.onnx"
    return root


def _stream(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioclust.stream.cli", "--source", "file",
                           *args], capture_output=True, text=True, timeout=300,
                          env=_env(cache))


def test_no_model_runs_the_general_model_from_the_cache(cache, fsdd_subset, tmp_path):
    from audioclust.models.runtime import OnnxModel

    path = cache / "audioclust" / "models" / "general.onnx"
    info = OnnxModel(path, threads=1).info
    assert (info.encoder_method, info.n_clusters) == ("pretrained:aisfx", 0)
    assert info.description == DESCRIPTION and info.reference is not None
    assert info.reference.cluster_radius is not None  # the open-set clusterer's scale
    # a word, a second of silence, an instrument-like tone: one stream
    word = load_audio(fsdd_subset / "3_jackson_0.wav", SR)
    t = np.arange(int(1.5 * SR)) / SR
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32)
    clip = tmp_path / "mix.wav"
    sf.write(clip, np.concatenate([word, np.zeros(SR, np.float32), tone]), SR)
    out = tmp_path / "out.jsonl"
    r = _stream(cache, str(clip), "--sink", f"jsonl:{out}")
    assert r.returncode == 0, r.stderr
    assert "model general.onnx:" in r.stderr and "head-free" in r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(rec["model"].startswith("general@") for rec in records)
    audible = [rec for rec in records if not rec["silent"]]
    assert audible and all(rec["cluster"] is not None and rec["discovered"] for rec in audible)


def test_model_demo_is_the_shipped_fsdd_model(cache, fsdd_subset, tmp_path):
    out = tmp_path / "out.jsonl"
    r = _stream(cache, str(fsdd_subset / "0_george_0.wav"), "--model", "demo",
                "--sink", f"jsonl:{out}")
    assert r.returncode == 0, r.stderr
    assert f"model {demo_model_path().name}:" in r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(rec["model"].startswith("default@") for rec in records)


def test_missing_general_model_is_one_line(fsdd_subset, tmp_path):
    r = _stream(tmp_path, str(fsdd_subset / "0_george_0.wav"))
    assert r.returncode == 1
    want = (f"audioclust-stream: error: no general-audio model at "
            f"{tmp_path / 'audioclust' / 'models' / 'general.onnx'}: build it with "
            "`audioclust-export --general` (make setup does), or pass --model demo or "
            "--model FILE")
    assert r.stderr.strip() == want


def test_export_general_keeps_a_current_model_and_refuses_other_flags(cache):
    model = cache / "audioclust" / "models" / "general.onnx"
    assert is_current(model)
    before = model.stat().st_mtime_ns
    export = [sys.executable, "-m", "audioclust.models.export", "--general"]
    r = subprocess.run(export, capture_output=True, text=True, timeout=120, env=_env(cache))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"audioclust-export: general model {model} is current"
    assert model.stat().st_mtime_ns == before
    r = subprocess.run([*export, "--encoder", "aisfx", "--window", "2"], capture_output=True,
                       text=True, timeout=120, env=_env(cache))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "--general builds a fixed model; it takes no --encoder, --window")
    r = subprocess.run(export[:-1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "--encoder and -o/--output are required (or --general)")
