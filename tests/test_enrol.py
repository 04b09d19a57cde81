"""``audioclust-enrol``: named clusters from example files, carried by the stream's records
as ``label``, kept in the state file across restarts; list, remove and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import ENV, read_jsonl, run_cli

from audioclust.models.general import demo_model_path
from audioclust.models.runtime import OnnxModel
from audioclust.stream.config import StreamConfig
from audioclust.stream.enrol import (
    ENROLLED_BASE,
    MEMBER_PREFIX,
    NOVEL,
    Enrolment,
    example_windows,
)
from audioclust.stream.report.records import read_records
from audioclust.stream.state import read_state_file

SR = 16000


def enrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioclust.stream.enrol", *args],
                          capture_output=True, text=True, timeout=300, env=ENV)


def _tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    """A harmonic tone (three partials) with a little noise: a 'beep' unlike speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(0.3 / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3))
    x = x * (0.8 + 0.2 * rng.random()) + 0.005 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _beep_files(d: Path, n: int, seconds: float, step: float, seed: int) -> list[Path]:
    out = []
    for i in range(n):
        out.append(d / f"beep{i}.wav")
        sf.write(out[-1], _tone(700 + step * i, seconds, seed + i), SR)
    return out


@pytest.fixture(scope="module")
def beeps(tmp_path_factory) -> list[Path]:
    """Four beep recordings (700-745 Hz, 1.5 s): three to enrol, one held out."""
    return _beep_files(tmp_path_factory.mktemp("beeps"), 4, 1.5, 15, 0)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, fsdd_dir, beeps) -> Path:
    """One recording: held-out beep, FSDD speech (two speakers), the beep again."""
    from audioclust.models.audio import load_audio

    parts = [load_audio(beeps[3], SR)]
    for name in ("5_jackson_0", "5_jackson_1", "2_lucas_0", "2_lucas_1"):
        parts += [np.zeros(SR // 4, np.float32), load_audio(fsdd_dir / f"{name}.wav", SR)]
    parts += [np.zeros(SR // 4, np.float32), load_audio(beeps[3], SR)]
    path = tmp_path_factory.mktemp("mixed") / "mixed.wav"
    sf.write(path, np.concatenate(parts), SR)
    return path


def _stream(model: Path, state: Path, audio: Path, out: Path) -> list[dict]:
    proc = run_cli("--source", "file", str(audio), "--model", str(model), "--state",
                   str(state), "--sink", f"jsonl:{out}", "-q")
    assert proc.returncode == 0, proc.stderr
    return [r for r in read_jsonl(out) if not r["silent"]]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audioclust-enrol: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _beep_windows(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The windows of the beeps (the first and last 1.5 s) and of the speech between."""
    end = max(r["end"] for r in records)
    beep = [r for r in records if r["end"] <= 1.5 or r["start"] >= end - 1.5]
    speech = [r for r in records if r["start"] >= 1.75 and r["end"] <= end - 1.75]
    return beep, speech


def test_enrolled_beep_labels_the_stream_and_survives_restarts(beeps, mixed, tmp_path):
    model, state = demo_model_path(), tmp_path / "state.npz"
    proc = enrol("--model", str(model), "--state", str(state), "--name", "beep",
                 *map(str, beeps[:3]), "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    # unlike FSDD speech: no head cluster holds it, so it becomes a cluster of its own
    assert done["kind"] == "enrolled" and done["cluster"] == ENROLLED_BASE
    assert done["files"] == 3 and done["windows"] >= 3

    first = _stream(model, state, mixed, tmp_path / "a.jsonl")
    beep, speech = _beep_windows(first)
    assert beep and speech
    assert all(r["label"] == "beep" and r["cluster"] == ENROLLED_BASE for r in beep), beep
    assert all(not r["discovered"] for r in beep)
    assert all(r["label"] is None and r["cluster"] != ENROLLED_BASE for r in speech), speech
    assert all("label" in r for r in read_jsonl(tmp_path / "a.jsonl"))  # silent ones: null
    # audioclust-report reads the name from the same field
    clusters = read_records(tmp_path / "a.jsonl").clusters
    assert clusters[ENROLLED_BASE].label == "beep" and not clusters[ENROLLED_BASE].discovered
    assert clusters[ENROLLED_BASE].name == "beep"

    # the stream saved its own state: the enrolment is still in it, and a restart uses it
    saved = read_state_file(state)
    assert [c["name"] for c in saved.doc["enrolment"]["clusters"]] == ["beep"]
    # the beep's examples are all novel to the speech model: it claims novel windows only
    assert saved.doc["enrolment"]["clusters"][0]["heads"] == [NOVEL]
    m = OnnxModel(model, threads=1)
    e = Enrolment(m.info.reference, m.info.n_clusters)
    e.load(saved.arrays, saved.doc)
    z, p = m.embed(example_windows(m, [str(beeps[3])], StreamConfig())[0])
    top = int(np.argmax(p[0]))
    assert e.match(z[0], top, novel=True).label == "beep"
    assert e.match(z[0], top, novel=False) is None
    again = _stream(model, state, mixed, tmp_path / "b.jsonl")
    assert [r["label"] for r in again] == [r["label"] for r in first]

    # a second name for the same sound is refused, and the state is left as it was
    before = state.read_bytes()
    line = _one_error_line(enrol("--model", str(model), "--state", str(state), "--name",
                                 "whistle", str(beeps[0])))
    assert "'beep'" in line
    assert state.read_bytes() == before


def test_fsdd_examples_name_the_head_cluster(fsdd_dir, tmp_path):
    """Five takes of one speaker saying one digit fall in one cluster of the default head
    (its clusters follow the speakers): that head cluster gets the name."""
    model, state = demo_model_path(), tmp_path / "state.npz"
    examples = [str(fsdd_dir / f"3_george_{i}.wav") for i in range(5)]
    proc = enrol("--model", str(model), "--state", str(state), "--name", "george", *examples,
                 "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done["kind"] == "head" and 0 <= done["cluster"] < 10

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("3_george_20", "7_george_21", "3_jackson_20"):
        (clips / f"{name}.wav").write_bytes((fsdd_dir / f"{name}.wav").read_bytes())
    out = tmp_path / "out.jsonl"
    proc = run_cli("--source", "file", str(clips), "--model", str(model), "--state",
                   str(state), "--sink", f"jsonl:{out}", "-q")
    assert proc.returncode == 0, proc.stderr
    for r in read_jsonl(out):
        if r["silent"]:
            continue
        named = r["cluster"] == done["cluster"] and not r["discovered"]
        assert r["label"] == ("george" if named else None), r
        if "george" in r["stream"]:
            assert r["label"] == "george", r
        else:
            assert r["label"] is None, r


def test_list_remove_and_their_errors(beeps, mixed, fsdd_dir, tmp_path):
    model, state = demo_model_path(), tmp_path / "state.npz"
    assert enrol("--model", str(model), "--state", str(state), "--name", "beep",
                 *map(str, beeps[:3])).returncode == 0
    assert enrol("--model", str(model), "--state", str(state), "--name", "george",
                 *[str(fsdd_dir / f"3_george_{i}.wav") for i in range(5)]).returncode == 0
    listed = json.loads(enrol("--state", str(state), "--list", "--json").stdout)
    assert [(r["name"], r["kind"]) for r in listed] == [("beep", "enrolled"),
                                                        ("george", "head")]
    text = enrol("--state", str(state), "--list").stdout
    assert "beep" in text and str(ENROLLED_BASE) in text

    before = state.read_bytes()
    line = _one_error_line(enrol("--state", str(state), "--remove", "cat"))
    assert "'cat'" in line and "'beep'" in line
    assert state.read_bytes() == before

    proc = enrol("--state", str(state), "--remove", "beep")
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(enrol("--state", str(state), "--list",
                                                "--json").stdout)] == ["george"]
    assert not any(k.startswith(MEMBER_PREFIX) for k in read_state_file(state).arrays)
    beep, _ = _beep_windows(_stream(model, state, mixed, tmp_path / "out.jsonl"))
    assert all(r["label"] is None for r in beep)

    # enrolled again, the beep gets a new id: a removed cluster's id is not reused
    done = json.loads(enrol("--model", str(model), "--state", str(state), "--name", "beep",
                            *map(str, beeps[:3]), "--json").stdout)
    assert done["cluster"] == ENROLLED_BASE + 1


def test_more_examples_of_a_name_are_pooled(beeps, tmp_path):
    model, state = demo_model_path(), tmp_path / "state.npz"
    first = json.loads(enrol("--model", str(model), "--state", str(state), "--name", "beep",
                             *map(str, beeps[:2]), "--json").stdout)
    more = json.loads(enrol("--model", str(model), "--state", str(state), "--name", "beep",
                            str(beeps[2]), "--json").stdout)
    assert more["cluster"] == first["cluster"]
    assert more["windows"] > first["windows"] and more["files"] == 3


def test_bad_examples_and_states_change_nothing(beeps, headfree_model, tmp_path):
    model, state = demo_model_path(), tmp_path / "state.npz"
    assert enrol("--model", str(model), "--state", str(state), "--name", "beep",
                 str(beeps[0])).returncode == 0
    before = state.read_bytes()
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(SR * 2, np.float32), SR)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    cases = {
        "no such file": [str(tmp_path / "missing.wav")],
        "broken.wav": [str(beeps[1]), str(broken)],
        "no audible window": [str(silent)],
    }
    for expect, files in cases.items():
        line = _one_error_line(enrol("--model", str(model), "--state", str(state), "--name",
                                     "dog", *files))
        assert expect in line, line
        assert state.read_bytes() == before
    # a state of another model (the head-free one) is refused, whatever is asked
    other = tmp_path / "other.npz"
    assert enrol("--model", str(headfree_model), "--state", str(other), "--name", "beep",
                 str(beeps[0])).returncode == 0
    kept = other.read_bytes()
    line = _one_error_line(enrol("--model", str(model), "--state", str(other), "--name",
                                 "dog", str(beeps[1])))
    assert "another model" in line
    assert other.read_bytes() == kept
    # names that cannot be one, and a state that is not one
    _one_error_line(enrol("--model", str(model), "--state", str(state), "--name", " ",
                          str(beeps[1])))
    junk = tmp_path / "junk.npz"
    junk.write_text("junk")
    assert "junk.npz" in _one_error_line(enrol("--state", str(junk), "--list"))
    assert junk.read_text() == "junk"
    assert state.read_bytes() == before
    _one_error_line(enrol("--state", str(tmp_path / "never.npz"), "--list"))
    assert not (tmp_path / "never.npz").exists()


@pytest.fixture(scope="module")
def more_beeps(tmp_path_factory) -> list[Path]:
    """Eight more beep recordings (3 s, 5 windows each) of the same sound."""
    return _beep_files(tmp_path_factory.mktemp("more_beeps"), 8, 3.0, 5, 10)


def test_head_free_model_enrols_and_labels(headfree_model, beeps, more_beeps, mixed, tmp_path):
    """The small random test encoder tells beeps from speech less sharply than the default
    model (speech at cosine 0.5 to the beeps): three examples leave the radius near the
    training audio's broad cluster scale; more examples of the tight sound narrow it."""
    state = tmp_path / "state.npz"
    proc = enrol("--model", str(headfree_model), "--state", str(state), "--name", "beep",
                 *map(str, beeps[:3]), "--json")
    assert proc.returncode == 0, proc.stderr
    few = json.loads(proc.stdout)
    assert few["kind"] == "enrolled" and few["cluster"] == ENROLLED_BASE
    many = json.loads(enrol("--model", str(headfree_model), "--state", str(state), "--name",
                            "beep", *map(str, more_beeps), "--json").stdout)
    assert many["cluster"] == few["cluster"] and many["windows"] == few["windows"] + 40
    assert many["radius"] > few["radius"]

    records = _stream(headfree_model, state, mixed, tmp_path / "a.jsonl")
    beep, speech = _beep_windows(records)
    assert all(r["label"] == "beep" and r["cluster"] == ENROLLED_BASE for r in beep), beep
    assert all(not r["discovered"] for r in beep)
    # speech is clustered by the stream itself, as without an enrolment
    assert all(r["discovered"] and r["label"] is None for r in speech), speech
    again = _stream(headfree_model, state, mixed, tmp_path / "b.jsonl")
    assert [r["label"] for r in again] == [r["label"] for r in records]


def test_a_damaged_enrolment_is_one_line_naming_the_state(beeps, mixed, tmp_path):
    from audioclust.stream.state import write_state_file

    model, state = demo_model_path(), tmp_path / "state.npz"
    assert enrol("--model", str(model), "--state", str(state), "--name", "beep",
                 str(beeps[0])).returncode == 0
    good = read_state_file(state)
    doc = {k: v for k, v in good.doc.items() if k not in ("version", "streams")}
    write_state_file(state, doc, good.streams, {})  # the examples' array gone
    before = state.read_bytes()
    line = _one_error_line(enrol("--model", str(model), "--state", str(state), "--name",
                                 "dog", str(beeps[1])))
    assert str(state) in line and "'beep'" in line
    proc = run_cli("--source", "file", str(mixed), "--model", str(model), "--state",
                   str(state), "--sink", f"jsonl:{tmp_path / 'out.jsonl'}", "-q")
    assert proc.returncode == 1 and str(state) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert state.read_bytes() == before


def test_help_states_the_rule_and_a_wrong_command_line_is_exit_2():
    proc = enrol("--help")
    assert proc.returncode == 0
    assert "--name" in proc.stdout and "--remove" in proc.stdout
    assert "half or more" in proc.stdout and str(ENROLLED_BASE) in proc.stdout
    assert enrol("--state", "s.npz").returncode == 2  # neither --name, --list nor --remove
    assert enrol("--state", "s.npz", "--list", "--remove", "x").returncode == 2
