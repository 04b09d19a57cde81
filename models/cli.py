"""What every audioclust command shares: one-line errors, exit codes, comma lists."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from audioclust.models.audio import AudioError
from audioclust.models.config import ConfigError

__all__ = [
    "EXIT_ERROR", "EXIT_USAGE", "HelpFormatter", "UserError", "comma_list", "run_command",
]

EXIT_ERROR = 1  # the command ran and failed (bad data, missing file, ...)
EXIT_USAGE = 2  # the command line itself was wrong (argparse uses 2 as well)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (None means "from config/method")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class UserError(Exception):
    """A failure the user can fix; reported as one line without a traceback."""


def comma_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """argparse type for ``a,b,c`` restricted to ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(choices)} (comma-separated)"
            )
        return items

    return parse


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; expected failures become ``prog: error: message`` and exit code 1.

    Set ``AUDIOCLUST_DEBUG=1`` to get the traceback instead.
    """
    try:
        return int(body() or 0)
    except (UserError, AudioError, ConfigError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("AUDIOCLUST_DEBUG"):
            raise  # full traceback for whoever is debugging
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
