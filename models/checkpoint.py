"""Self-describing ``.safetensors`` files: written atomically, read with a format check.

Encoders, embedders and clustering heads all store their weights this way: tensors plus
string metadata naming the format, its version and the configuration. No pickle.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from audioclust.models.errors import ModelError

__all__ = ["file_sha256", "read_checked_metadata", "write_safetensors"]


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write ``tensors`` and ``metadata`` to ``path`` through a temporary file and a rename,
    so a crash never leaves a half-written checkpoint."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_checked_metadata(
    path: str | os.PathLike, fmt: str, version: str, what: str
) -> dict[str, str]:
    """The string metadata of ``path``, checked to be ``fmt`` at ``version``.

    ``what`` names the kind of file in error messages ("embedder checkpoint", ...).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelError(p, f"not a safetensors file ({exc})") from exc
    if meta.get("format") != fmt:
        raise ModelError(p, f"not an audioclust {what} (format {meta.get('format')!r})")
    if meta.get("format_version") != version:
        raise ModelError(p, f"{what} format version {meta.get('format_version')!r}, this "
                         f"code reads {version!r}")
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (ties a head to the encoder file it was trained on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
