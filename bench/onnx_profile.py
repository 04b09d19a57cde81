"""Where an exported model's time goes: ONNX Runtime's own per-node profile (issue 14, §3).

Runs the model on the CPU provider with ONNX Runtime's profiler on, ``--calls`` times on a
batch of noise clips one model window long, and sums the profiler's node events by node,
by operator type and by part of the model (frontend, normalisation, encoder, head: from
the module scope the exporter records on every node; "layout": the NCHWc reorders ONNX
Runtime inserts; "other": shape arithmetic). The nodes are the ones ONNX Runtime
actually runs, after its graph optimisations (fused nodes included). Markdown on stdout,
or JSON with ``--json``.

    python bench/onnx_profile.py --model models/assets/default.onnx --threads 1 --batch 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from benchlib import default_threads, machine_info, run_and_report

#: Module scopes (as the exporter writes them into node metadata) -> part of the model.
PARTS = (("embedder.frontend", "frontend"), ("embedder.encoder", "encoder"),
         ("head", "head"), ("embedder", "normalisation"))


def _part(namespace: str) -> str:
    for scope, part in PARTS:
        if f"/{scope}:" in namespace or namespace.startswith(f"{scope}:"):
            return part
    return "other"


def node_parts(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> part of the model, from the exporter's ``namespace`` metadata."""
    out = {}
    for node in model.graph.node:
        ns = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        out[node.name] = _part(ns)
    return out


def _lookup(name: str, parts: dict[str, str]) -> str:
    # ONNX Runtime names a node it makes after one it replaces (plus a suffix, sometimes
    # without the exporter's "node_" prefix); layout changes it inserts are their own part.
    if name.startswith(("ReorderInput", "ReorderOutput")):
        return "layout"
    base = name.split("/")[0]
    for cut in ("_fused", "_nchwc", "_token"):
        base = base.split(cut)[0]
    for candidate in (name, base, f"node_{base}"):
        if candidate in parts:
            return parts[candidate]
    return "other"


def profile(model_path: Path, threads: int, batch: int, samples: int | None,
            calls: int, warmup: int) -> dict[str, Any]:
    import onnxruntime as ort

    from audioclust.models.runtime import OnnxModel

    info = OnnxModel(model_path, provider="cpu", threads=threads).info
    samples = samples or info.window_samples
    rng = np.random.default_rng(0)
    feeds = {"waveform": (rng.standard_normal((batch, samples)) * 0.1).astype(np.float32),
             "lengths": np.full(batch, samples, np.int64)}
    with tempfile.TemporaryDirectory(prefix="audioclust-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options,
                                       providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        for _ in range(warmup):
            session.run(outputs, feeds)
        start = time.perf_counter()
        for _ in range(calls):
            session.run(outputs, feeds)
        wall = time.perf_counter() - start
        events = json.loads(Path(session.end_profiling()).read_text())
    parts = node_parts(onnx.load(model_path))
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    timed_runs = runs[warmup:]
    t0 = timed_runs[0]["ts"] if timed_runs else 0
    by_node: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < t0:
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        entry = by_node.setdefault(name, {
            "node": name, "op": args.get("op_name", "?"), "part": _lookup(name, parts),
            "us": 0.0, "output_shapes": [next(iter(d.values())) for d in
                                         args.get("output_type_shape", [])]})
        entry["us"] += e["dur"]
    total = sum(n["us"] for n in by_node.values())
    by_op: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    for n in by_node.values():
        n["us_per_call"] = n["us"] / calls
        n["share"] = n["us"] / total if total else 0.0
        by_op[n["op"]] += n["share"]
        by_part[n["part"]] += n["share"]
    model_run_us = sum(r["dur"] for r in timed_runs) / max(len(timed_runs), 1)
    return {
        "benchmark": "onnx_profile",
        "model": str(model_path),
        "settings": {"threads": threads, "batch": batch, "samples": samples, "calls": calls,
                     "warmup": warmup},
        "machine": machine_info(threads),
        "windows_per_s": batch * calls / wall,
        "ms_per_call": {"wall": 1e3 * wall / calls, "model_run": model_run_us / 1e3,
                        "nodes": total / calls / 1e3},
        "by_part": dict(sorted(by_part.items(), key=lambda kv: -kv[1])),
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "nodes": sorted(by_node.values(), key=lambda n: -n["us"]),
    }


def markdown(doc: dict[str, Any], top: int) -> str:
    s, ms = doc["settings"], doc["ms_per_call"]
    lines = [
        f"`{doc['model']}`, batch {s['batch']} x {s['samples']} samples, {s['threads']} "
        f"threads, {s['calls']} profiled calls; load average "
        f"{doc['machine']['load_average_1_5_15']}.",
        f"{doc['windows_per_s']:.1f} windows/s; per call {ms['wall']:.2f} ms wall, "
        f"{ms['nodes']:.2f} ms in nodes.",
        "",
        "| part | share of node time |", "|---|---:|",
        *(f"| {k} | {100 * v:.1f} % |" for k, v in doc["by_part"].items()),
        "",
        "| operator | share |", "|---|---:|",
        *(f"| {k} | {100 * v:.1f} % |" for k, v in doc["by_op"].items() if v >= 0.005),
        "",
        "| node | operator | part | ms/call | share | output shape |",
        "|---|---|---|---:|---:|---|",
    ]
    for n in doc["nodes"][:top]:
        shape = "x".join(str(d) for d in n["output_shapes"][0]) if n["output_shapes"] else ""
        lines.append(f"| {n['node']} | {n['op']} | {n['part']} | {n['us_per_call'] / 1e3:.3f} "
                     f"| {100 * n['share']:.1f} % | {shape} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/onnx_profile.py",
        description="Per-node profile of an exported model (ONNX Runtime's profiler, CPU "
                    "provider): time by part of the model, by operator and by node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="model .onnx")
    parser.add_argument("--threads", type=int, default=default_threads(), help="intra-op "
                        "threads")
    parser.add_argument("--batch", type=int, default=32, help="clips per call")
    parser.add_argument("--samples", type=int, help="samples per clip; default: the "
                        "model's window")
    parser.add_argument("--calls", type=int, default=50, help="profiled calls")
    parser.add_argument("--warmup", type=int, default=5, help="calls before profiling")
    parser.add_argument("--top", type=int, default=15, help="nodes listed in the table")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.threads, args.batch, args.calls) < 1 or args.warmup < 0:
        parser.error("--threads, --batch and --calls must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(
        "onnx_profile", lambda: profile(args.model, args.threads, args.batch, args.samples,
                                        args.calls, args.warmup),
        lambda doc: markdown(doc, args.top), args.json, args.out)


if __name__ == "__main__":
    sys.exit(main())
