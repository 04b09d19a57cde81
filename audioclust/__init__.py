"""audioclust: streaming online audio clustering.

The Python API (docs/api.md)::

    import audioclust as ac

    model = ac.load_model()                       # the default model of audioclust-stream
    z = model.embed(wave, sample_rate=sr)         # (n_windows, d), any rate
    for rec in model.stream("take.wav"):          # the records audioclust-stream writes
        print(rec.cluster, rec.confidence)
    with ac.Stream(model, sink=ac.sinks.Callback(print)) as stream:   # in-process service
        stream.feed(chunk, stream="mic", sample_rate=sr)
    head = ac.heads.TEMI(n_clusters=10).fit(embeddings)               # needs the train extra

The code lives in the subpackages ``audioclust.models`` (audio, encoders, export, the
ONNX runtime), ``audioclust.stream`` (the service) and ``audioclust.training``; this
package only names what a user needs from them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audioclust.models.errors import UserError
    from audioclust.stream.api import Model, Stream, load_model
    from audioclust.stream.records import Record

__all__ = ["Model", "Record", "Stream", "UserError", "heads", "load_model", "sinks"]

# Imported on first use, so that ``import audioclust.models.cli`` (every command starts
# there) does not load the service, and ``heads`` (torch: the train extra) only when asked.
_WHERE = {"Model": "audioclust.stream.api", "Stream": "audioclust.stream.api",
          "load_model": "audioclust.stream.api", "Record": "audioclust.stream.records",
          "UserError": "audioclust.models.errors"}


def __getattr__(name: str) -> Any:
    if name in ("heads", "sinks"):
        return importlib.import_module(f"audioclust.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'audioclust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
