"""One root for the errors a user can fix: every named one derives from UserError, and the
commands turn it into one line; a programming error, a plain ValueError included, keeps its
traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import audioclust as ac
from audioclust.models.audio import AudioError
from audioclust.models.cli import EXIT_ERROR, run_command
from audioclust.models.config import ConfigError
from audioclust.models.errors import DataError, UserError
from audioclust.models.runtime import ModelError
from audioclust.stream.enrol import EnrolError
from audioclust.stream.report.records import RecordsError
from audioclust.stream.sinks import SinkError
from audioclust.stream.sources import SourceError
from audioclust.stream.sources.mic import NoInputDevice
from audioclust.stream.state import StateError


@pytest.mark.parametrize("cls", [AudioError, ConfigError, DataError, ModelError, EnrolError,
                                 RecordsError, SinkError, SourceError, NoInputDevice,
                                 StateError])
def test_every_user_error_derives_from_the_root(cls):
    assert issubclass(cls, UserError) and ac.UserError is UserError


def test_run_command_reports_user_errors_in_one_line(capsys):
    def fails() -> int:
        raise StateError("s.npz: not a state file")

    assert run_command("prog", fails) == EXIT_ERROR
    assert capsys.readouterr().err == "prog: error: s.npz: not a state file\n"


def test_a_programming_error_is_not_hidden(capsys):
    def bug() -> int:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        run_command("prog", bug)


@pytest.mark.parametrize("error", [
    ConfigError("--window: need 0 < hop <= window"),
    DataError("need (n, d) embeddings, got shape (3,)"),
    ModelError("m.onnx", "not a loadable ONNX model"),
    PermissionError(13, "Permission denied", "out.jsonl"),
])
def test_user_and_file_errors_become_one_line(error, capsys):
    def fails() -> int:
        raise error

    assert run_command("prog", fails) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == f"prog: error: {error}\n" and len(err.splitlines()) == 1


def test_a_plain_value_error_is_a_bug_not_a_user_error(capsys):
    def bug() -> int:
        return int(np.arange(3).reshape(2, 2).sum())  # ValueError: cannot reshape

    with pytest.raises(ValueError, match="reshape") as caught:
        run_command("prog", bug)
    assert not isinstance(caught.value, UserError)
    assert capsys.readouterr().err == ""  # nothing that reads as the user's mistake

    def raises_value_error() -> int:
        raise ValueError("an invariant broke")

    with pytest.raises(ValueError, match="an invariant broke"):
        run_command("prog", raises_value_error)
    assert capsys.readouterr().err == ""


def test_settings_and_data_checks_raise_user_errors():
    from audioclust.training.heads.temi import TEMISettings
    from audioclust.training.kmeans import KMeans
    from audioclust.training.metrics import nmi
    from audioclust.training.nclusters import choose_n_clusters

    with pytest.raises(ConfigError, match="beta"):
        TEMISettings(beta=0.3)
    with pytest.raises(DataError, match="NaN"):
        KMeans(n_clusters=2).fit(np.full((4, 2), np.nan))
    with pytest.raises(DataError, match="differ in length"):
        nmi([0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="cannot choose K"):  # --clusters auto on 3 clips
        choose_n_clusters(np.random.default_rng(0).normal(size=(3, 4)))


def test_a_bad_flag_value_gives_one_line_and_exit_code_1(tmp_path):
    clip = Path(__file__).resolve().parents[1] / "models" / "assets" / "demo-mix.flac"
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.stream.cli", "--source", "file", str(clip),
         "--model", "demo", "--window", "0.5", "--hop", "1", "--sink",
         f"jsonl:{tmp_path / 'r.jsonl'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_ERROR, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audioclust-stream: error: "), proc.stderr
    assert "hop" in lines[0] and "Traceback" not in proc.stderr
