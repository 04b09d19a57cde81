"""What the bench scripts share: thread defaults, the int8 model, machine facts, output.

The scripts import this as a sibling module (``python bench/X.py`` puts ``bench/`` first
on ``sys.path``); ``bench/`` is not part of the installed package.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "check_pair",
    "default_fsdd",
    "default_threads",
    "log",
    "machine_info",
    "make_int8",
    "model_or_random",
    "write_json",
]


def default_threads() -> int:
    """CPU cores this process may use (the affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_fsdd() -> Path:
    """FSDD's recordings: $AUDIOCLUST_FSDD, or ../shared/datasets/fsdd/recordings."""
    env = os.environ.get("AUDIOCLUST_FSDD")
    return Path(env) if env else REPO.parent / "shared" / "datasets" / "fsdd" / "recordings"


def log(message: str) -> None:
    """Progress on stderr, so stdout stays a clean table or JSON document."""
    print(message, file=sys.stderr, flush=True)


def model_or_random(model: str | os.PathLike | None, workdir: str | os.PathLike) -> Path:
    """``model``, or when None a random test model exported into ``workdir``."""
    if model:
        return Path(model)
    from stream_replay import random_model

    log("exporting a random test model ...")
    return random_model(Path(workdir))


def make_int8(fp32_path: str | os.PathLike, workdir: str | os.PathLike) -> Path:
    """``workdir/model.int8.onnx``: the model quantised by ``audioclust-export``'s int8 path."""
    # torch comes in with the export module: only pay for it when quantising here
    from audioclust.models.export import quantize_model

    return quantize_model(fp32_path, Path(workdir) / "model.int8.onnx")


def check_pair(fp32: Any, int8: Any) -> list[str]:
    """Warnings for an fp32/int8 pair of loaded OnnxModels; raises if they cannot compare."""
    a, b = fp32.info, int8.info
    if (a.embedding_dim, a.n_clusters) != (b.embedding_dim, b.n_clusters):
        raise ValueError(f"{fp32.path} (d={a.embedding_dim}, K={a.n_clusters}) and {int8.path} "
                         f"(d={b.embedding_dim}, K={b.n_clusters}) are different models")
    warnings = []
    if a.quantization != "none":
        warnings.append(f"{fp32.path} is quantised ({a.quantization}), not fp32")
    if b.quantization != "int8":
        warnings.append(f"{int8.path} has quantization={b.quantization!r}, not int8")
    if a.encoder != b.encoder or a.head_method != b.head_method or \
            a.window_seconds != b.window_seconds:
        warnings.append(f"{fp32.path} and {int8.path} have different encoders, heads or "
                        "windows: probably not the same model")
    return warnings


def machine_info(threads: int) -> dict[str, Any]:
    """What a figure depends on: CPU, cores, threads, load, library versions."""
    import numpy as np
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores_available": default_threads(),
        "threads": threads,
        # Another job on the cores lowers every figure; the load says whether one ran.
        "load_average_1_5_15": load,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_json(data: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Write ``data`` as indented JSON to ``path`` (parents created)."""
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
