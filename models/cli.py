"""What every audioclust command shares: one-line errors, exit codes, comma lists."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from audioclust.models.errors import UserError

__all__ = [
    "EXIT_ERROR", "EXIT_USAGE", "HelpFormatter", "UserError", "comma_list", "eval_main",
    "export_main", "run_command", "train_main",
]

EXIT_ERROR = 1  # the command ran and failed (bad data, missing file, ...)
EXIT_USAGE = 2  # the command line itself was wrong (argparse uses 2 as well)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (None means "from config/method")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


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

    Expected: a :class:`UserError` (audio, config, data, model, state, source and sink
    errors all derive from it) and an operating-system error on a file (missing, not
    allowed, disk full). Anything else, a plain ``ValueError`` included, is a bug in
    audioclust and keeps its traceback. ``AUDIOCLUST_DEBUG=1`` shows the traceback of an
    expected failure too.
    """
    try:
        return int(body() or 0)
    except (UserError, OSError) as exc:
        if os.environ.get("AUDIOCLUST_DEBUG"):
            raise  # full traceback for whoever is debugging
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# --- entry points of the training side ------------------------------------------------------
# The streaming service runs on ONNX Runtime alone; training, evaluation and export need the
# `train` extra (torch, scikit-learn, onnx, ...). Their console scripts start here so that a
# runtime-only install says what is missing in one line instead of an import traceback.

TRAIN_EXTRA_MODULES = frozenset({"torch", "sklearn", "onnx", "onnxscript", "matplotlib",
                                 "tqdm", "safetensors", "threadpoolctl"})


def _training_command(prog: str, target: str) -> int:
    module, _, func = target.partition(":")
    try:
        main = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(f"{prog}: error: needs {e.name}, part of the training extra: install torch "
              "(pinned, see the README), then pip install 'audioclust[train]'", file=sys.stderr)
        return EXIT_ERROR
    return main()


def train_main() -> int:
    """``audioclust-train``."""
    return _training_command("audioclust-train", "audioclust.training.train:main")


def eval_main() -> int:
    """``audioclust-eval``."""
    return _training_command("audioclust-eval", "audioclust.training.evaluate:main")


def export_main() -> int:
    """``audioclust-export``."""
    return _training_command("audioclust-export", "audioclust.models.export:main")
