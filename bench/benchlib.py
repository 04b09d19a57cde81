"""What the bench scripts share: thread defaults, the int8 model, machine facts, output.

The scripts import this as a sibling module (``python bench/X.py`` puts ``bench/`` first
on ``sys.path``); ``bench/`` is not part of the installed package.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "Rate",
    "batch_sizes",
    "check_pair",
    "default_fsdd",
    "default_threads",
    "log",
    "machine_info",
    "make_int8",
    "measure",
    "measure_side_by_side",
    "model_or_random",
    "report",
    "run_and_report",
    "write_json",
]


def batch_sizes(text: str) -> list[int]:
    """argparse type: "1,8,32" -> [1, 8, 32], positive sizes only."""
    import argparse

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive batch sizes like 1,32")
    return values


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


def report(doc: dict[str, Any], table: str, as_json: bool,
           path: str | os.PathLike | None) -> None:
    """A bench's output: ``doc`` to ``path``; on stdout the table, or with ``as_json`` the
    JSON document (the table then goes to stderr)."""
    write_json(doc, path)
    if as_json:
        log(table)
        print(json.dumps(doc, indent=2))
    else:
        print(table)


def run_and_report(prog: str, compute: Callable[[], dict[str, Any]],
                   table: Callable[[dict[str, Any]], str], as_json: bool,
                   path: str | os.PathLike | None) -> int:
    """A bench's main: ``compute()`` then :func:`report`; a missing or unusable model or
    file is one line on stderr and exit status 1."""
    try:
        doc = compute()
    except (OSError, ValueError) as exc:  # ModelError and AudioError are ValueErrors
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    report(doc, table(doc), as_json, path)
    return 0


def write_json(data: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Write ``data`` as indented JSON to ``path`` (parents created)."""
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class Rate:
    """Items per second over timed runs: each run repeats a call for at least min_time.

    ``runs`` are per wall-clock second; ``cpu_runs`` per second of this process's CPU time
    (all its threads), which a busy machine's other jobs do not inflate the way they
    stretch wall time: with one ONNX Runtime thread, items per CPU-second is the rate of
    one core that does nothing else.
    """

    runs: list[float]
    calls_per_run: list[int]
    cpu_runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_runs)

    def to_dict(self) -> dict[str, Any]:
        med = self.median
        return {"median": med, "min": min(self.runs), "max": max(self.runs),
                # (max - min) / median: how far apart the timed runs were
                "spread": (max(self.runs) - min(self.runs)) / med if med else 0.0,
                "runs": self.runs, "calls_per_run": self.calls_per_run,
                "per_cpu_second": {"median": self.cpu_median, "min": min(self.cpu_runs),
                                   "max": max(self.cpu_runs), "runs": self.cpu_runs}}


def _timed_run(call: Callable[[], object], min_time: float) -> tuple[int, float, float]:
    """(calls, wall seconds, CPU seconds) of calling ``call`` for at least ``min_time``."""
    n = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        call()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n, elapsed, max(time.process_time() - cpu_start, 1e-9)


def measure(call: Callable[[], object], items_per_call: float, warmup: int, repeats: int,
            min_time: float) -> Rate:
    """Rate of ``call`` after ``warmup`` calls: ``repeats`` runs of >= ``min_time`` s each."""
    return measure_side_by_side({"": call}, items_per_call, warmup, repeats, min_time)[""]


def measure_side_by_side(calls: Mapping[str, Callable[[], object]], items_per_call: float,
                         warmup: int, repeats: int, min_time: float) -> dict[str, Rate]:
    """:func:`measure` for several calls at once, their timed runs taken in turn (a run of
    each, then the next round), so that a change of load on a shared machine falls on all
    of them alike and their ratios hold even when the absolute figures move."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    cpu_runs: dict[str, list[float]] = {name: [] for name in calls}
    counts: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            n, elapsed, cpu = _timed_run(call, min_time)
            runs[name].append(n * items_per_call / elapsed)
            cpu_runs[name].append(n * items_per_call / cpu)
            counts[name].append(n)
    return {name: Rate(runs[name], counts[name], cpu_runs[name]) for name in calls}
