"""The distribution: code folders install as audioclust.* subpackages, nothing generic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from conftest import REPO

CODE_DIRS = ("models", "training", "stream")


def _packages_on_disk() -> set[str]:
    found = set()
    for top in CODE_DIRS:
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            found.add("audioclust." + ".".join(rel.parts))
    return found


def test_every_package_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    assert listed == _packages_on_disk()


def test_wheel_contents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for top in CODE_DIRS:
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("audioclust-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"audioclust"}
    for pkg in _packages_on_disk():
        assert pkg.replace(".", "/") + "/__init__.py" in names
    assert "audioclust/models/frontend.py" in names
    assert "audioclust/training/metrics.py" in names
    # the shipped default model and demo recording travel with the package
    assert "audioclust/models/assets/default.onnx" in names
    assert "audioclust/models/assets/demo-fsdd.flac" in names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "audioclust-eval = audioclust.training.evaluate:main" in zipfile.ZipFile(
        wheel).read(meta).decode()


def test_editable_install_maps_folders():
    import audioclust.models.frontend as fe
    import audioclust.training.metrics as m

    # In this checkout the modules come from the repo folders themselves (editable mode).
    assert Path(fe.__file__).resolve() == REPO / "models" / "frontend.py"
    assert Path(m.__file__).resolve() == REPO / "training" / "metrics.py"
