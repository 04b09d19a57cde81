"""The root of the errors a user can fix: bad input, settings, files, models, streams.

Every such error derives from :class:`UserError` (most also from the built-in type code
catches them by, ``ValueError`` or ``RuntimeError``); the commands report them as one
line without a traceback (:func:`audioclust.models.cli.run_command`).
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A failure the user can fix; reported as one line without a traceback."""
