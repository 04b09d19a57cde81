"""One root for the errors a user can fix: every named one derives from UserError, and the
commands turn it into one line (a programming error keeps its traceback)."""

from __future__ import annotations

import pytest

import audioclust as ac
from audioclust.models.audio import AudioError
from audioclust.models.cli import EXIT_ERROR, run_command
from audioclust.models.config import ConfigError
from audioclust.models.errors import UserError
from audioclust.models.runtime import ModelError
from audioclust.stream.enrol import EnrolError
from audioclust.stream.report.records import RecordsError
from audioclust.stream.sinks import SinkError
from audioclust.stream.sources import SourceError
from audioclust.stream.sources.mic import NoInputDevice
from audioclust.stream.state import StateError


@pytest.mark.parametrize("cls", [AudioError, ConfigError, ModelError, EnrolError,
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
