"""The flags ``audioclust-train`` and ``audioclust-eval`` share, as argparse parents.

Each subcommand lists the parents it takes (``parents=[data_options(...), ...]``) and adds
only its own flags; the encoder flags come from
:func:`audioclust.models.encoder_spec.add_encoder_arguments`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["LABELS_HELP", "cache_dir_from", "cache_options", "data_options",
           "output_options", "seed_options"]

LABELS_HELP = "where labels come from: folder, digit, speaker (FSDD names) or csv:FILE"


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def data_options(*, labels: bool) -> argparse.ArgumentParser:
    """``--data FOLDER``, and ``--labels SPEC`` where the command scores against labels
    (training ignores them)."""
    p = _parent()
    p.add_argument("--data", required=True, type=Path, help="folder of audio clips"
                   + ("" if labels else " (any labels are ignored)"))
    if labels:
        p.add_argument("--labels", required=True, help=LABELS_HELP)
    return p


def output_options(*, out: Path | None, what: str, json_help: str) -> argparse.ArgumentParser:
    """``--out`` (required when ``out`` is None: a run folder), ``--json`` and ``--quiet``."""
    p = _parent()
    if out is None:
        p.add_argument("--out", required=True, type=Path, help=f"{what} folder")
    else:
        p.add_argument("--out", type=Path, default=out, help=f"{what} folder")
    p.add_argument("--json", action="store_true", help=f"print {json_help} as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def seed_options(help: str, default: int | None = None) -> argparse.ArgumentParser:
    """``--seed N``; ``help`` says what it seeds."""
    p = _parent()
    p.add_argument("--seed", type=int, default=default, help=help)
    return p


def cache_options(what: str, *, can_disable: bool = True) -> argparse.ArgumentParser:
    """``--cache-dir`` (and ``--no-cache`` when ``can_disable``) for the cached ``what``
    (features, embeddings, log-mels)."""
    p = _parent()
    p.add_argument("--cache-dir", help=f"{what} cache folder (default "
                   "$AUDIOCLUST_CACHE/audioclust, else ~/.cache/audioclust)")
    if can_disable:
        p.add_argument("--no-cache", action="store_true",
                       help="neither read nor write the cache")
    return p


def cache_dir_from(args: argparse.Namespace) -> str | None:
    """The cache folder the flags ask for: "" turns caching off, None is the default."""
    return "" if getattr(args, "no_cache", False) else args.cache_dir
