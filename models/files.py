"""Writing files so that readers only ever see a whole one (no torch: the service uses it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["atomic_savez", "check_writable"]


def _temp_beside(out: Path) -> tuple[int, str]:
    # A name of its own per writer: two processes writing the same file at once (a shared
    # feature cache, two ranks of one job) must not rename each other's temporary away.
    return tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)


def atomic_savez(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """``np.savez`` to a temporary file beside ``path``, then a rename onto it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(out)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def check_writable(path: str | os.PathLike) -> None:
    """Raise OSError now if :func:`atomic_savez` could not write ``path`` later."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(out)
    os.close(fd)
    os.unlink(tmp)
