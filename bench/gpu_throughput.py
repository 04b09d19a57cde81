"""Windows/s of an exported model per batch size on a GPU (issue 14, §5), through the
service's own loader: ``OnnxModel(provider="cuda")`` and its I/O-binding path.

For every batch size: windows/s of ``OnnxModel.embed`` (inputs bound from the host,
outputs allocated on the GPU by ONNX Runtime, then copied back), and beside it, timed in
turns, the plain ``session.run`` path (ONNX Runtime stages inputs and outputs itself).
Then one profiled call at the largest batch tells which execution provider ran how much
of the node time: the provider actually used, not the one asked for. ``--provider cpu``
runs the same code on the CPU provider (the tests do; a CPU figure is no GPU figure).

    python bench/gpu_throughput.py --model models/assets/default.onnx --batches 1,8,32,128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    REPO,
    batch_sizes,
    default_threads,
    log,
    machine_info,
    measure_side_by_side,
    run_and_report,
)


def provider_shares(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of node time per execution provider in one profiled run of ``feeds``."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="audioclust-gpu-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        providers = model.session.get_providers()
        provider_options = model.session.get_provider_options()
        session = ort.InferenceSession(str(model.path), options, providers=providers,
                                       provider_options=[provider_options.get(p, {})
                                                         for p in providers])
        session.run(None, feeds)  # the first run also picks kernels: not the one kept
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    last = runs[-1]["ts"] if runs else 0
    time_by: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last:
            time_by[e.get("args", {}).get("provider", "?")] += e["dur"]
    total = sum(time_by.values()) or 1.0
    return {k: v / total for k, v in sorted(time_by.items(), key=lambda kv: -kv[1])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from audioclust.models.runtime import OnnxModel

    model = OnnxModel(args.model, provider=args.provider, threads=args.threads,
                      device_id=args.device_id)
    if args.provider == "cuda" and model.provider != "CUDAExecutionProvider":
        raise ValueError(f"asked for CUDA, ONNX Runtime runs the model on {model.provider}")
    # The bound path is the one embed() takes on CUDA; on the CPU it is forced for the
    # comparison (the service runs the CPU provider without binding).
    model.output_device = model.output_device or "cpu"
    samples = model.info.window_samples
    names = ["embedding"] if model.head_free else ["embedding", "posterior"]
    rng = np.random.default_rng(0)
    results = []
    for batch in args.batches:
        clips = (rng.standard_normal((batch, samples)) * 0.1).astype(np.float32)
        lengths = np.full(batch, samples, np.int64)

        def bound(c=clips) -> object:
            return model.embed(c, max_batch=len(c))

        def plain(c=clips, n=lengths) -> object:
            return model.session.run(names, {"waveform": c, "lengths": n})

        log(f"batch {batch} ...")
        rates = measure_side_by_side({"io_binding": bound, "session_run": plain}, batch,
                                     args.warmup, args.repeats, args.min_time)
        results.append({"batch": batch,
                        **{name: rate.to_dict() for name, rate in rates.items()},
                        "ms_per_batch": 1e3 * batch / rates["io_binding"].median})
    top = max(args.batches)
    feeds = {"waveform": (rng.standard_normal((top, samples)) * 0.1).astype(np.float32),
             "lengths": np.full(top, samples, np.int64)}
    return {
        "benchmark": "gpu_throughput",
        "model": {"path": str(model.path), "weights_sha256": model.info.weights_sha256,
                  "quantization": model.info.quantization},
        "provider": {"requested": args.provider, "session": model.session.get_providers(),
                     "used": model.provider,
                     "node_time_share_at_largest_batch": provider_shares(model, feeds)},
        "settings": {"batches": args.batches, "window_samples": samples,
                     "warmup": args.warmup, "repeats": args.repeats,
                     "min_time": args.min_time, "device_id": args.device_id,
                     "threads": args.threads},
        "machine": machine_info(args.threads),
        "results": results,
    }


def markdown(doc: dict[str, Any]) -> str:
    p = doc["provider"]
    shares = ", ".join(f"{k} {100 * v:.1f} %" for k, v in
                       p["node_time_share_at_largest_batch"].items())
    lines = [f"Model `{doc['model']['path']}` ({doc['model']['quantization']}); provider "
             f"used: **{p['used']}** (asked: {p['requested']}); node time at the largest "
             f"batch: {shares}.", "",
             "| batch | windows/s, I/O binding (median) | min–max | ms/batch | windows/s, "
             "session.run |", "|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        b, s = r["io_binding"], r["session_run"]
        lines.append(f"| {r['batch']} | {b['median']:.0f} | {b['min']:.0f}–{b['max']:.0f} | "
                     f"{r['ms_per_batch']:.2f} | {s['median']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/gpu_throughput.py",
        description="Batch-size sweep of an exported model on ONNX Runtime's CUDA provider "
                    "through audioclust's runtime loader (I/O binding), beside plain "
                    "session.run, and the provider that actually ran the nodes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=REPO / "models/assets/default.onnx",
                        help="model .onnx")
    parser.add_argument("--provider", default="cuda", choices=("cuda", "cpu", "auto"),
                        help="execution provider to ask for")
    parser.add_argument("--device-id", type=int, default=0, help="GPU to run on")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="intra-op threads (the CPU provider's, and CUDA's CPU nodes)")
    parser.add_argument("--batches", type=batch_sizes, default="1,8,32,128,512",
                        help="batch sizes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; median reported")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timed run")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.min_time <= 0 or args.threads < 0:
        parser.error("--repeats >= 1, --warmup >= 0, --min-time > 0, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("gpu_throughput", lambda: run(args), markdown, args.json, args.out)


if __name__ == "__main__":
    sys.exit(main())
