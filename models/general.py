"""The general-audio model: what ``audioclust-stream`` runs when no ``--model`` is given.

The pretrained aiSFX encoder (``aisfx``, its weights from the ``aisfx`` wheel, CC BY 4.0)
exported head-free: every stream is clustered online by the open-set clusterer, whose
cluster scale, like the novelty test, comes from the model's novelty reference. That
reference is computed from ``models/assets/general-reference.flac``, shipped with the
package: speech (all six FSDD speakers, every digit) and instrument notes (three of each
of the eleven GM-notes families) in one random order (``models/assets/make_demo.py``),
so "a cluster" means a group as tight as a speaker's words or an instrument's notes,
and "novel" means unlike either.

The weights are not in the repository: :func:`build_general_model` exports them from the
installed wheel into the user's cache (:func:`general_model_path`); ``make setup`` runs
it as ``audioclust-export --general``. This module needs no torch until it builds.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .files import default_cache_dir

if TYPE_CHECKING:
    from .export import ExportResult

__all__ = [
    "DEMO_NAME", "build_general_model", "demo_model_path", "general_model_path",
    "general_reference_path", "is_current", "resolve_model",
]

#: ``--model demo``: the FSDD model shipped in the package.
DEMO_NAME = "demo"
DESCRIPTION = (
    "general audio: the pretrained aiSFX encoder (CC BY 4.0), head-free, clustered online; "
    "novelty reference and cluster scale from speech (FSDD, CC BY-SA 4.0) and instrument "
    "notes (GM notes, Fluid R3 SoundFont, MIT)"
)


def _asset(name: str) -> Path:
    return Path(str(resources.files("audioclust.models") / "assets" / name))


def demo_model_path() -> Path:
    """The FSDD demo model shipped as package data (``assets/default.onnx``)."""
    return _asset("default.onnx")


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The model file of ``--model`` (and ``ac.load_model``): None is the general-audio
    model in the user's cache (a one-line error saying how to build it when it is not
    there), ``demo`` the shipped FSDD model, anything else a path."""
    from .cli import UserError

    if model == DEMO_NAME:
        return demo_model_path()
    if model is not None:
        return Path(model)
    path = general_model_path()
    if not path.is_file():
        raise UserError(f"no general-audio model at {path}: build it with `audioclust-export "
                        "--general` (make setup does), or pass --model demo or --model FILE")
    return path


def general_reference_path() -> Path:
    """The shipped recording the general model's reference is computed from."""
    return _asset("general-reference.flac")


def general_model_path() -> Path:
    """Where the general model is built: ``models/general.onnx`` in the user's cache
    (:func:`~audioclust.models.files.default_cache_dir`: ``$AUDIOCLUST_CACHE``,
    ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``audioclust/``)."""
    return default_cache_dir() / "models" / "general.onnx"


def is_current(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a general model this installation would build: exported by
    this audioclust version, and newer than the shipped reference recording."""
    import onnx

    from .export import _version

    path = Path(path)
    if not path.is_file() or path.stat().st_mtime < general_reference_path().stat().st_mtime:
        return False
    try:
        meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    except Exception:  # a damaged or foreign file: rebuilt
        return False
    return meta.get("audioclust_version") == _version() and meta.get("description") == DESCRIPTION


def build_general_model(out: str | os.PathLike | None = None,
                        reference: str | os.PathLike | None = None,
                        progress: bool = False) -> ExportResult:
    """Export the general model to ``out`` (default :func:`general_model_path`) with the
    novelty reference of ``reference`` (default the shipped recording); the
    :class:`~audioclust.models.export.ExportResult`."""
    from .export import export_model

    out = Path(out) if out is not None else general_model_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside and renamed: a stream starting meanwhile never sees half a model
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.onnx")
    try:
        result = export_model("aisfx", None, tmp, description=DESCRIPTION,
                              reference_data=reference or general_reference_path(),
                              progress=progress)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result.path = out
    return result
