"""The Python API (``import audioclust as ac``): every example of docs/api.md and the
README runs, and ``model.stream`` gives the records of ``audioclust-stream --source file``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

import audioclust as ac
from audioclust.models.cli import UserError
from audioclust.models.general import demo_model_path

SR = 16000


def _take(sr: int, seconds: float, seed: int) -> np.ndarray:
    """A tone, noise, silence and a chirp: loud and silent windows, several clusters."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds / 4)) / sr
    return np.concatenate([0.4 * np.sin(2 * np.pi * 330 * t),
                           0.2 * rng.standard_normal(t.size),
                           np.zeros(t.size),
                           0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t)]).astype(np.float32)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """take.wav (22.05 kHz), recordings/ (two files), and a user cache whose general-audio
    model is the demo model (the real one is built by make setup, minutes on 2 cores)."""
    sf.write(tmp_path / "take.wav", _take(22050, 4.0, 0), 22050)
    (tmp_path / "recordings").mkdir()
    sf.write(tmp_path / "recordings" / "a.wav", _take(SR, 2.5, 1), SR)
    sf.write(tmp_path / "recordings" / "b.flac", _take(44100, 3.0, 2)[::-1].copy(), 44100)
    cache = tmp_path / "cache"
    (cache / "audioclust" / "models").mkdir(parents=True)
    shutil.copy(demo_model_path(), cache / "audioclust" / "models" / "general.onnx")
    monkeypatch.setenv("AUDIOCLUST_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _cli(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "audioclust.stream.cli", "--source", "file",
                           *args, "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLIs do; two cores are shared by the suite
    yield
    torch.set_num_threads(before)


def test_every_docs_example_runs(workdir, one_thread, capsys):
    blocks = _python_blocks((REPO / "docs" / "api.md").read_text())
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    assert namespace["z"].shape[1] == namespace["model"].info.embedding_dim
    assert (workdir / "state.npz").is_file()
    assert capsys.readouterr().out  # the examples print what they show


def test_the_readme_example_runs(workdir, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    section = section[: section.index("\n## ", 3)]
    (block,) = _python_blocks(section)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    windows = len(list(ac.load_model().stream("take.wav")))
    assert len(printed) == 2 * windows  # the records of model.stream, then of the Stream


def test_model_stream_gives_the_records_of_the_cli(workdir):
    # the demo model, and the default (no --model: the general-audio model of the cache)
    for name, flags in (("demo", ["--model", "demo"]), (None, [])):
        want = _cli("take.wav", "recordings", *flags)
        got = [r.to_dict() for r in ac.load_model(name).stream(["take.wav", "recordings"])]
        assert got == want
        assert {r["stream"] for r in got} == {"take.wav", "recordings/a.wav",
                                             "recordings/b.flac"}
        assert any(r["silent"] for r in got) and any(r["cluster"] is not None for r in got)


def test_model_stream_of_samples_matches_the_file(workdir):
    model = ac.load_model("demo")
    wave, sr = sf.read("take.wav", dtype="float32")
    from_file = [r.to_dict() for r in model.stream("take.wav")]
    from_array = [r.to_dict() for r in model.stream(wave, sample_rate=sr, name="take.wav")]
    assert from_array == from_file
    z = model.embed(wave, sample_rate=sr)
    assert z.shape == (len(from_file), model.info.embedding_dim)
    np.testing.assert_allclose(model.embed("take.wav"), z, rtol=0, atol=0)


def test_stream_in_process_assigns_as_the_file_replay(workdir):
    model = ac.load_model("demo")
    audio = sf.read("recordings/a.wav", dtype="float32")[0]
    want = [r.to_dict() for r in model.stream("recordings/a.wav")]
    sink = ac.sinks.List()
    with ac.Stream(model, sink=sink) as stream:
        for i in range(0, audio.size, 3000):  # chunks unlike the file source's 0.25 s
            stream.feed(audio[i : i + 3000], stream="recordings/a.wav")
            # every window the chunk completed is written before feed returns
            assert len(sink.records) == max(0, (i + 3000 - 16000) // 8000 + 1) \
                or i + 3000 >= audio.size
    got = [r.to_dict() for r in sink.records]
    assert [(r["seq"], r["start"], r["end"], r["silent"], r["cluster"]) for r in got] == \
        [(r["seq"], r["start"], r["end"], r["silent"], r["cluster"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-5) or \
            g["confidence"] is w["confidence"] is None


def test_stream_resamples_each_stream_and_keeps_its_state(workdir):
    model = ac.load_model("demo")
    wave, sr = sf.read("take.wav", dtype="float32")
    seen = []
    with ac.Stream(model, sink=ac.sinks.Callback(seen.append), state="s.npz") as stream:
        for i in range(0, wave.size, sr // 10):
            stream.feed(wave[i : i + sr // 10], stream="a", sample_rate=sr)
            stream.feed(wave[i : i + sr // 10], stream="b", sample_rate=sr)
    want = [r.seq for r in model.stream(wave, sample_rate=sr)]
    for name in ("a", "b"):
        assert [r.seq for r in seen if r.stream == name] == want
    assert all(isinstance(r, ac.Record) for r in seen)
    again = ac.Stream(model, state="s.npz")  # restored: both streams' states are there
    assert all(again.pipeline.assigner.stream_state(name) is not None for name in "ab")
    again.close()


def test_load_model_without_the_general_model_says_how_to_build_it(workdir, monkeypatch):
    monkeypatch.setenv("AUDIOCLUST_CACHE", str(workdir / "empty"))
    with pytest.raises(UserError, match="audioclust-export --general"):
        ac.load_model()
    with pytest.raises(ValueError, match="no such model file"):
        ac.load_model(workdir / "missing.onnx")


def test_heads_are_estimators_on_embeddings(one_thread):
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 1.0, (40, 16)) for c in (0, 6, 12)]).astype(np.float32)
    head = ac.heads.DeepCluster(n_clusters=3, n_heads=1, epochs=2, seed=1)
    assert head.get_params()["epochs"] == 2
    labels = head.fit(z).predict(z)
    proba = head.predict_proba(z)
    assert proba.shape == (120, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (labels == proba.argmax(1)).all()
    assert len({tuple(np.bincount(labels[i : i + 40], minlength=3).argsort()[-1:])
                for i in (0, 40, 80)}) == 3  # each blob has its own majority cluster
    with pytest.raises(TypeError, match="unknown setting"):
        ac.heads.TEMI(n_clusters=3, no_such_setting=1)
    for cls in (ac.heads.TEMI, ac.heads.SPICE, ac.heads.DeepCluster):
        assert all(callable(getattr(cls, m)) for m in ("fit", "predict", "predict_proba"))


def test_import_audioclust_loads_nothing_heavy():
    code = ("import sys, audioclust as ac; import audioclust.models.cli; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'audioclust.stream.api') "
            "if m in sys.modules)); ac.Stream; print('audioclust.stream.api' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "True"]
