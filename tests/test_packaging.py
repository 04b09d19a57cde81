"""The distribution: code folders install as audioclust.* subpackages, nothing generic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from conftest import REPO
from packaging.requirements import Requirement

CODE_DIRS = ("models", "training", "stream")
#: The folder of the top-level package itself: the Python API's names (``import audioclust``).
API_DIR = "audioclust"


def _packages_on_disk() -> set[str]:
    found = {API_DIR} if (REPO / API_DIR / "__init__.py").is_file() else set()
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
    for top in (*CODE_DIRS, API_DIR):
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
    assert "audioclust/__init__.py" in names and "audioclust/sinks.py" in names
    assert "audioclust/training/metrics.py" in names
    # the shipped demo model and recordings travel with the package
    assert "audioclust/models/assets/default.onnx" in names
    assert "audioclust/models/assets/demo-fsdd.flac" in names
    # the recording make run streams, and the one the general model's reference comes from
    assert "audioclust/models/assets/demo-mix.flac" in names
    assert "audioclust/models/assets/general-reference.flac" in names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    assert "audioclust-eval = audioclust.models.cli:eval_main" in entry_points
    assert "audioclust-stream = audioclust.stream.cli:main" in entry_points
    assert "audioclust-report = audioclust.stream.report.cli:main" in entry_points
    assert "audioclust-enrol = audioclust.stream.enrol:main" in entry_points
    # the service's dependencies leave torch and the rest of training to the `train` extra
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    base = {r.name for r in requires if r.marker is None}
    train = {r.name for r in requires
             if r.marker is not None and r.marker.evaluate({"extra": "train"})}
    assert {"torch", "scikit-learn", "onnx", "matplotlib"} <= train
    assert not base & {"torch", "scikit-learn", "onnx", "onnxscript", "matplotlib", "tqdm"}
    # installed from the wheel (not editable), the API and its subpackages import from there
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = ("import audioclust as ac, audioclust.stream.api as api; "
            "m = ac.load_model('demo'); print(api.__file__); print(m.info.n_clusters)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(target),
                                                          "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    where, clusters = proc.stdout.split()
    assert Path(where).is_relative_to(target) and int(clusters) > 0


def test_training_commands_without_the_train_extra_say_what_to_install(tmp_path):
    # A runtime-only install, simulated: torch cannot be imported. The training-side
    # commands fail with one line naming the extra; the stream command is unaffected.
    code = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
sys.meta_path.insert(0, NoTorch())
from audioclust.models import cli
rc = [cli.train_main(), cli.eval_main(), cli.export_main()]
import audioclust.stream.cli
print(rc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 1, 1]"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in proc.stderr
    for prog, line in zip(("audioclust-train", "audioclust-eval", "audioclust-export"), lines,
                          strict=True):
        assert line.startswith(f"{prog}: error: needs torch") or \
            line.startswith(f"{prog}: error: needs sklearn"), line
        assert "pip install 'audioclust[train]'" in line


def test_training_commands_run_with_the_extra(tmp_path):
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from audioclust.models import cli; "
                           "sys.argv = ['audioclust-train', '--help']; cli.train_main()"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ssl" in proc.stdout and "head" in proc.stdout


def test_editable_install_maps_folders():
    import audioclust.models.frontend as fe
    import audioclust.training.metrics as m

    # In this checkout the modules come from the repo folders themselves (editable mode).
    assert Path(fe.__file__).resolve() == REPO / "models" / "frontend.py"
    assert Path(m.__file__).resolve() == REPO / "training" / "metrics.py"
    import audioclust

    assert Path(audioclust.__file__).resolve() == REPO / "audioclust" / "__init__.py"


def test_kafka_client_checks_crcs_in_c():
    """kafka-python takes the C CRC32C when the `crc32c` package is importable; the pure
    Python fallback was a quarter of the Kafka service's time."""
    import crc32c
    from kafka.record import util

    assert util.calc_crc32c.__defaults__[0] is crc32c.crc32c
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
