"""Typed config: defaults, TOML/YAML files, CLI overrides, and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from audioclust.models.config import ConfigError, build_config


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults():
    assert build_config(Outer) == Outer()


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[job]\nname = "file"\nsizes = [3, 4]\n[job.inner]\nrate = 1\nmode = "b"\n')
    cfg = build_config(Outer, f, {"name": "cli", "limit": None, "inner": {"rate": 0.5}}, "job")
    assert cfg == Outer(name="cli", sizes=(3, 4), limit=None, inner=Inner(rate=0.5, mode="b"))
    assert isinstance(cfg.inner.rate, float)


def test_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("limit: 7\ninner:\n  mode: b\n")
    assert build_config(Outer, f) == Outer(limit=7, inner=Inner(mode="b"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nme = 'typo'\n", r"unknown key\(s\) \['nme'\]"),
        ("limit = 'many'\n", "Outer.limit"),
        ("[inner]\nmode = 'c'\n", "Outer.inner.mode"),
        ("sizes = [1, 'two']\n", r"Outer.sizes\[1\]"),
        ("name = \n", "invalid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config(Outer, f)


def test_unreadable_and_unknown_suffix(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        build_config(Outer, tmp_path / "absent.toml")
    f = tmp_path / "c.ini"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        build_config(Outer, f)
