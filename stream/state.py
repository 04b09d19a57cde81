"""Stream state on disk: one codec for a stream's state, and the state file built on it.

An assigner keeps per stream ``(arrays, scalars)``: a dict of numeric numpy arrays and a
JSON-able dict. :func:`encode_stream_state` turns that into bytes and
:func:`decode_stream_state` back, without pickle; a compacted Kafka changelog keyed by
stream id can carry the same bytes. The layout::

    b"ACSS" | version (u8, 1) | header length (u32 LE) | header (UTF-8 JSON) | array bytes

with header ``{"arrays": [[name, dtype, shape], ...], "scalars": {...}}``; arrays are
C-ordered, little-endian, one after another in header order, and must fill the rest
exactly. Only bool, integer and float dtypes are accepted.

The state file (``--state``) is an ``.npz`` read with ``allow_pickle=False``:

- ``__meta__``: a JSON document: ``version`` (2), ``model`` (weights hash), ``config``,
  ``streams`` (the stream ids, in order), ``enrolment`` (the named clusters, when any) and
  whatever the assigner adds;
- ``stream.<i>``: the codec bytes of ``streams[i]`` (a uint8 array);
- any other member: arrays the assigner adds (``enrolment.<id>``: the examples of an
  enrolled cluster, :mod:`audioclust.stream.enrol`).

Stream ids therefore live only inside the JSON document: any id (65,536 bytes long, with a
NUL, a ``/`` or the name of a member) is safe. Version 1 files (arrays under
``<id>/<name>``, scalars in ``streams[id]``) are still read. Everything that is not a
readable state file raises :class:`StateError`, one line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audioclust.models.errors import UserError
from audioclust.models.files import atomic_savez

__all__ = [
    "FILE_VERSION",
    "StateError",
    "StateFile",
    "StreamState",
    "decode_stream_state",
    "encode_stream_state",
    "read_state_file",
    "write_state_file",
]

StreamState = tuple[dict[str, np.ndarray], dict[str, Any]]

FILE_VERSION = 2
_MAGIC = b"ACSS"
_CODEC_VERSION = 1
_PREFIX = struct.Struct("<4sBI")
_META = "__meta__"
_MEMBER = "stream."
_KINDS = "biuf"  # bool, signed, unsigned, float: nothing that could hold an object


class StateError(UserError, ValueError):
    """Bytes or a file that are not a readable stream state, or a state file that cannot be
    written (the message is one line)."""


def _short(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def encode_stream_state(arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> bytes:
    """One stream's ``(arrays, scalars)`` as bytes; raises ValueError for what it cannot
    carry (object arrays, scalars that are not JSON)."""
    specs, blobs = [], []
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in _KINDS:
            raise ValueError(f"state array {name!r}: dtype {a.dtype} is not numeric")
        a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)
        specs.append([str(name), a.dtype.str, list(a.shape)])
        blobs.append(a.tobytes())
    try:
        header = json.dumps({"arrays": specs, "scalars": dict(scalars)}).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state scalars are not JSON: {exc}") from exc
    return b"".join([_PREFIX.pack(_MAGIC, _CODEC_VERSION, len(header)), header, *blobs])


def decode_stream_state(data: bytes) -> StreamState:
    """The ``(arrays, scalars)`` that :func:`encode_stream_state` wrote; StateError otherwise."""
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise StateError(f"stream state of {len(data)} bytes is too short")
    magic, version, n = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise StateError("not an audioclust stream state (bad magic)")
    if version != _CODEC_VERSION:
        raise StateError(f"stream state codec version {version}, this code reads "
                         f"{_CODEC_VERSION}")
    end = _PREFIX.size + n
    if end > len(data):
        raise StateError(f"stream state header of {n} bytes runs past the end")
    try:
        header = json.loads(data[_PREFIX.size:end].decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StateError(f"stream state header is not JSON ({_short(exc)})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list) \
            or not isinstance(header.get("scalars"), dict):
        raise StateError("stream state header lacks its arrays or scalars")
    arrays: dict[str, np.ndarray] = {}
    pos = end
    for spec in header["arrays"]:
        name, dtype, shape = _array_spec(spec)
        size = dtype.itemsize * math.prod(shape)
        if pos + size > len(data):
            raise StateError(f"stream state array {name[:40]!r} runs past the end")
        arrays[name] = np.frombuffer(data, dtype, math.prod(shape), pos).reshape(shape).copy()
        pos += size
    if pos != len(data):
        raise StateError(f"stream state has {len(data) - pos} bytes after its arrays")
    return arrays, header["scalars"]


def _array_spec(spec: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    ok = (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
          and isinstance(spec[1], str) and isinstance(spec[2], list) and len(spec[2]) <= 32
          and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                  for d in spec[2]))
    if not ok:
        raise StateError(f"stream state array spec {str(spec)[:60]!r} is malformed")
    try:
        dtype = np.dtype(spec[1])
    except (TypeError, ValueError, SyntaxError) as exc:
        raise StateError(f"stream state dtype {spec[1][:20]!r} is not a dtype") from exc
    if dtype.kind not in _KINDS or dtype.str != spec[1] or dtype.byteorder == ">":
        raise StateError(f"stream state dtype {spec[1][:20]!r} is not allowed")
    return spec[0], dtype, tuple(spec[2])


# --- the state file --------------------------------------------------------------------------

@dataclass
class StateFile:
    """What a state file holds: its JSON document, each stream's state, the other arrays."""

    doc: dict[str, Any]
    streams: dict[str, StreamState] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def write_state_file(path: str | os.PathLike, doc: Mapping[str, Any],
                     streams: Mapping[str, StreamState],
                     arrays: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write the file atomically (temporary file, then rename). ``doc`` gets ``version``
    and ``streams``; ``arrays`` must not use the names of the file's own members."""
    ids = list(streams)
    members: dict[str, np.ndarray] = {}
    for name in arrays or {}:
        if name == _META or name.startswith(_MEMBER):
            raise ValueError(f"state array name {name!r} is reserved")
        members[name] = np.asarray(arrays[name])
    for i, sid in enumerate(ids):
        members[f"{_MEMBER}{i}"] = np.frombuffer(encode_stream_state(*streams[sid]), np.uint8)
    document = {**doc, "version": FILE_VERSION, "streams": ids}
    members[_META] = np.array(json.dumps(document))
    return atomic_savez(path, members)


def read_state_file(path: str | os.PathLike) -> StateFile:
    """Everything in the state file at ``path`` (version 2 or 1), checked."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except FileNotFoundError as exc:
        raise StateError(f"{p}: no such state file") from exc
    except _READ_ERRORS as exc:
        raise StateError(f"{p}: not a readable audioclust state file ({_short(exc)})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise StateError(f"{p}: not an audioclust state file (a bare array, not an .npz)")
    try:
        return _read(p, z)
    except StateError:
        raise
    except _READ_ERRORS as exc:
        raise StateError(f"{p}: not a readable audioclust state file ({_short(exc)})") from exc
    finally:
        z.close()


# What a damaged or foreign file makes numpy and zipfile raise (StateError is a ValueError).
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                RecursionError, NotImplementedError, MemoryError)


def _read(p: Path, z: Any) -> StateFile:
    if _META not in z.files:
        raise StateError(f"{p}: not an audioclust state file (no {_META})")
    meta = z[_META]
    if meta.dtype.kind != "U" or meta.shape != ():
        raise StateError(f"{p}: {_META} is not a JSON text")
    doc = json.loads(str(meta))
    if not isinstance(doc, dict):
        raise StateError(f"{p}: {_META} is not a JSON object")
    version = doc.get("version")
    if version == FILE_VERSION:
        return _read_v2(p, z, doc)
    if version == 1:
        return _read_v1(p, z, doc)
    raise StateError(f"{p}: state file version {str(version)[:20]}, this code reads "
                     f"{FILE_VERSION} and 1")


def _read_v2(p: Path, z: Any, doc: dict[str, Any]) -> StateFile:
    ids = doc.get("streams")
    if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
        raise StateError(f"{p}: 'streams' is not a list of stream ids")
    if len(set(ids)) != len(ids):
        raise StateError(f"{p}: a stream id appears twice")
    out = StateFile(doc)
    for i, sid in enumerate(ids):
        member = f"{_MEMBER}{i}"
        if member not in z.files:
            raise StateError(f"{p}: the state of stream {sid[:60]!r} ({member}) is missing")
        data = z[member]
        if data.dtype != np.uint8 or data.ndim != 1:
            raise StateError(f"{p}: {member} is not a byte string")
        try:
            out.streams[sid] = decode_stream_state(data.tobytes())
        except StateError as exc:
            raise StateError(f"{p}: stream {sid[:60]!r}: {exc}") from exc
    out.arrays = {k: z[k] for k in z.files if k != _META and not k.startswith(_MEMBER)}
    return out


def _read_v1(p: Path, z: Any, doc: dict[str, Any]) -> StateFile:
    scalars = doc.get("streams")
    if not isinstance(scalars, dict) or not all(isinstance(v, dict) for v in scalars.values()):
        raise StateError(f"{p}: 'streams' is not a table of stream scalars")
    arrays = {k: z[k] for k in z.files if k != _META}
    out = StateFile(doc)
    for sid, sc in scalars.items():
        prefix = f"{sid}/"
        out.streams[sid] = ({k[len(prefix):]: v for k, v in arrays.items()
                             if k.startswith(prefix)}, sc)
    out.arrays = {k: v for k, v in arrays.items() if "/" not in k}
    return out
