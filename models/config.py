"""Typed configuration: dataclasses with working defaults, overridden by a TOML/YAML file
and then by command-line flags. One function does both: :func:`build_config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from audioclust.models.errors import ConfigError

__all__ = ["ConfigError", "build_config", "config_from_dict", "in_range", "read_config_file"]

T = TypeVar("T")


def in_range(name: str, value: float, lo: float, hi: float, low_open: bool = False) -> None:
    """ConfigError unless lo <= value <= hi (lo < value with ``low_open``); NaN fails too."""
    ok = (lo < value if low_open else lo <= value) and value <= hi
    if not ok:
        low = f"> {lo:g}" if low_open else f">= {lo:g}"
        raise ConfigError(f"{name} must be {low} and <= {hi:g}, got {value!r}")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` file into a dict."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text file (byte {exc.start} is not UTF-8)") from exc
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: config must be .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: invalid {p.suffix[1:].upper()} ({exc})") from exc
    except RecursionError as exc:  # both parsers recurse once per level of nesting
        raise ConfigError(f"{p}: invalid {p.suffix[1:].upper()} (nested too deeply)") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a table/mapping")
    return data


# A value as an error message shows it: a few items of a few levels, never all of it (YAML
# aliases make a small file hold a value of 10**9 items).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 50, 50, 50
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _show(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {_show(value)} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_show(value)}")
        # a settings class with a reader of its own (KafkaConfig: kafka-python passthrough)
        reader = getattr(tp, "from_dict", None)
        return reader(value) if reader is not None else _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {_show(value)} is not one of {typing.get_args(tp)}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a table, got {_show(value)}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {_show(value)} is not a finite number")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {_show(value)}")
    if tp is int and isinstance(value, bool):  # Python counts True as 1; a setting must not
        raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_show(value)}")
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """``cls(**data)`` with every value checked against its type hint (ConfigError)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {_show(data)}")
    return _from_dict(cls, data, where or cls.__name__)


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as exc:  # a missing field; a value out of range
        raise ConfigError(f"{where}: {exc}") from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Defaults of ``cls``, then the file (its ``section`` table if named), then overrides.

    ``overrides`` holds values given on the command line; keys whose value is None are
    ignored so unset flags do not mask the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        if section is not None:
            data = data.get(section, {})
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    return _from_dict(cls, data, cls.__name__)
