"""The root of the errors a user can fix: bad input, settings, files, models, streams.

Every such error derives from :class:`UserError` (most also from the built-in type code
catches them by, ``ValueError`` or ``RuntimeError``); the commands report them as one
line without a traceback (:func:`audioclust.models.cli.run_command`). Anything else that
escapes a command, a plain ``ValueError`` included, is a bug and keeps its traceback.

Which one to raise: a flag, setting or hyperparameter out of range is a
:class:`ConfigError`; a model, checkpoint or encoder file that cannot be used is a
:class:`ModelError`; arrays, labels, data sets and other input data that cannot be used
as given are a :class:`DataError`. Audio, state, records, sources and sinks have their
own (``AudioError``, ``StateError``, ...). A check of the code's own invariants stays a
plain ``ValueError``.
"""

from __future__ import annotations

import os

__all__ = ["ConfigError", "DataError", "ModelError", "UserError"]


class UserError(Exception):
    """A failure the user can fix; reported as one line without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration file or value (flag, setting, hyperparameter) that does not fit."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as given: arrays, labels, data sets, their files."""


class ModelError(UserError, ValueError):
    """A model file that cannot be used: missing, corrupt, not ours, or mismatched."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
