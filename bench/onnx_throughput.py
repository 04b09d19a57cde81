"""Embedding throughput of an exported model on this CPU, and the fraction of the machine's
dense-matmul peak it reaches (issue 5, §4).

For the fp32 model and its int8 version (and a ``--baseline`` model, say the one before a
change), at each batch size, with clips one model window long, timed in turns: clips/s
and the real-time factor (audio seconds per wall second), as the median of
``--repeats`` timed runs of at least ``--min-time`` seconds each after ``--warmup`` calls,
with the spread. The FLOPs per clip are counted from the graph (see :func:`count_flops`),
and the peak is measured in the same run, before and after the model, with the same thread
count: ONNX Runtime's MatMul and numpy's sgemm on square float32 matrices, best of several.

    python bench/onnx_throughput.py --model model.onnx [--int8 model.int8.onnx] [--json]

Without ``--int8`` the fp32 model is quantised here by ``audioclust-export``'s own int8
path (the frontend stays float, as in an exported int8 model).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from benchlib import (
    batch_sizes,
    check_pair,
    default_threads,
    log,
    machine_info,
    make_int8,
    measure,
    measure_side_by_side,
    run_and_report,
)
from onnx import TensorProto, helper, shape_inference

# Weight input position of each counted op (Conv family) / first-operand position (MatMul
# family). Integer and QLinear variants are what ONNX Runtime's quantisers emit.
CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_OPS = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}
COUNTED_OPS = (*CONV_OPS, "ConvTranspose", *MATMUL_OPS, "Gemm")
FRONTEND_PREFIX = "embedder.frontend."  # initialiser names of the log-mel frontend


@dataclass
class FlopCount:
    """Multiply-accumulates of the counted ops, x2 as FLOPs, for one set of input shapes.

    Counted: Conv / ConvInteger / QLinearConv (output elements x C_in/group x kernel),
    ConvTranspose (input elements x C_out/group x kernel), MatMul / MatMulInteger /
    QLinearMatMul (output elements x inner dim) and Gemm (M x N x K). Ignored: everything
    else (elementwise, activations, reductions, pooling, softmax, normalisation, casts,
    (de)quantisation, bias adds and Gemm's C term) and nodes inside subgraphs; they are
    listed in ``ignored_ops``.
    """

    flops: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    frontend_flops: int = 0
    ignored_ops: dict[str, int] = field(default_factory=dict)
    tensors_shaped_by_ort: int = 0

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs": self.macs}


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _known(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _operands(node: onnx.NodeProto) -> tuple[str, str]:
    """(the input whose shape the MAC count needs, the output) of a counted node."""
    if node.op_type in CONV_OPS:
        return node.input[CONV_OPS[node.op_type]], node.output[0]
    if node.op_type in MATMUL_OPS:
        return node.input[MATMUL_OPS[node.op_type]], node.output[0]
    if node.op_type == "ConvTranspose":
        # needs both the input (x) and the weight; the output stands in for nothing
        return node.input[0], node.input[1]
    return node.input[0], node.output[0]  # Gemm: A and Y


def _node_macs(node: onnx.NodeProto, a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """MACs of one counted node from the shapes named by :func:`_operands`."""
    op = node.op_type
    if op in CONV_OPS:  # a = weight (C_out, C_in/group, k...), b = output (N, C_out, ...)
        return math.prod(b) * math.prod(a[1:])
    if op == "ConvTranspose":  # a = input (N, C_in, ...), b = weight (C_in, C_out/group, k...)
        return math.prod(a) * math.prod(b[1:])
    if op in MATMUL_OPS:  # a = first operand (..., K) (also 1-D), b = output
        return math.prod(b) * a[-1]
    # Gemm: A is (M, K), or (K, M) with transA; Y is (M, N)
    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
    return math.prod(b) * (a[0] if trans_a else a[1])


def _shapes_from_ort(model: onnx.ModelProto, names: list[str], elem_types: Mapping[str, int],
                     feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Actual shapes of intermediate tensors, by running the graph once with them exposed."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(
            helper.make_tensor_value_info(name, elem_types.get(name, 0), None))
    options = ort.SessionOptions()
    # Unoptimised, so every node named in the graph still exists and runs as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = session.run(names, dict(feeds))
    return {name: tuple(v.shape) for name, v in zip(names, values, strict=True)}


def count_flops(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                frontend_prefix: str = FRONTEND_PREFIX) -> FlopCount:
    """FLOPs (2 x MACs) of ``model``'s counted ops for the input shapes of ``feeds``.

    Shapes come from ONNX shape inference with the graph inputs fixed to ``feeds``' shapes;
    tensors it cannot size (shapes computed from data at run time) are sized by running the
    graph once on ``feeds`` in ONNX Runtime. ``frontend_flops`` is the part in nodes that
    read an initialiser whose name starts with ``frontend_prefix``.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        if inp.name not in feeds:
            continue
        shape = feeds[inp.name].shape
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"input {inp.name!r} has rank {len(dims)}, feed has shape {shape}")
        for dim, size in zip(dims, shape, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
    # The exporter's symbolic annotations would pin symbols that we now know as numbers.
    del fixed.graph.value_info[:]
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    elem_types: dict[str, int] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        shapes[vi.name] = _dims(vi)
        elem_types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)

    counted = [n for n in graph.node if n.op_type in COUNTED_OPS]
    missing = sorted({name for n in counted for name in _operands(n)
                      if not _known(shapes.get(name))})
    if missing:
        shapes.update(_shapes_from_ort(fixed, missing, elem_types, feeds))

    result = FlopCount(tensors_shaped_by_ort=len(missing))
    by_op: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for node in counted:
        a, b = (shapes[name] for name in _operands(node))
        flops = 2 * _node_macs(node, a, b)  # all sized above, by inference or by the run
        by_op[node.op_type] += flops
        nodes[node.op_type] += 1
        if any(i.startswith(frontend_prefix) for i in node.input):
            result.frontend_flops += flops
    result.flops = sum(by_op.values())
    result.by_op, result.nodes = dict(by_op), dict(nodes)
    result.ignored_ops = dict(Counter(n.op_type for n in graph.node
                                      if n.op_type not in COUNTED_OPS))
    return result


# ---------------------------------------------------------------- peak


def _matmul_session(n: int, threads: int, integer: bool) -> Callable[[], object]:
    import onnxruntime as ort

    if integer:  # ONNX Runtime's dynamic int8: uint8 activations x int8 weights -> int32
        a_type, b_type, out_type, op = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, \
            "MatMulInteger"
    else:
        a_type, b_type, out_type, op = (TensorProto.FLOAT,) * 3 + ("MatMul",)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], "peak",
        [helper.make_tensor_value_info("A", a_type, [n, n]),
         helper.make_tensor_value_info("B", b_type, [n, n])],
        [helper.make_tensor_value_info("Y", out_type, [n, n])])
    # IR 9 (ONNX 1.15): the newest ONNX writes IR versions older runtimes refuse
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if integer:
        feeds = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8),
                 "B": rng.integers(-127, 128, (n, n), dtype=np.int8)}
    else:
        feeds = {"A": rng.standard_normal((n, n), dtype=np.float32),
                 "B": rng.standard_normal((n, n), dtype=np.float32)}
    return lambda: session.run(None, feeds)


def measure_peak(n: int, threads: int, repeats: int, min_time: float) -> dict[str, float]:
    """Best-of-``repeats`` G(FL)OP/s of dense n x n matmuls on ``threads`` threads."""
    from threadpoolctl import threadpool_limits

    flops = 2.0 * n**3
    out = {}
    for name, integer in (("ort_matmul_fp32", False), ("ort_matmulinteger_int8", True)):
        rate = measure(_matmul_session(n, threads, integer), flops, 1, repeats, min_time)
        out[name] = max(rate.runs) / 1e9
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        rate = measure(lambda: a @ b, flops, 1, repeats, min_time)
    out["numpy_sgemm_fp32"] = max(rate.runs) / 1e9
    return out


# ---------------------------------------------------------------- the benchmark


def _clips(n: int, samples: int) -> np.ndarray:
    # Audio-level noise, not zeros: all-zero input could take fast paths (zero dynamic
    # quantisation ranges) that real audio never does.
    return (np.random.default_rng(n).standard_normal((n, samples)) * 0.1).astype(np.float32)


def _describe(model: Any) -> dict[str, Any]:
    return {"path": str(model.path), "quantization": model.info.quantization,
            "weights_sha256": model.info.weights_sha256,
            "size_bytes": model.path.stat().st_size, "encoder": model.info.encoder.get("name"),
            "description": model.info.description}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document."""
    from audioclust.models.runtime import OnnxModel

    t0 = time.perf_counter()
    threads = args.threads
    fp32 = OnnxModel(args.model, provider="cpu", threads=threads)
    info = fp32.info
    samples = round(args.clip_seconds * info.sample_rate) if args.clip_seconds \
        else info.window_samples
    if samples < info.min_samples:
        raise ValueError(f"clips of {samples} samples are shorter than the model's minimum "
                         f"{info.min_samples}")
    seconds = samples / info.sample_rate

    with tempfile.TemporaryDirectory(prefix="audioclust-bench-") as tmp:
        if args.int8:
            int8_path, made = Path(args.int8), "given"
        else:
            log("quantising to int8 with audioclust-export's int8 path ...")
            int8_path = make_int8(args.model, tmp)
            made = "made here by audioclust-export's int8 path (models.export.quantize_model)"
        int8 = OnnxModel(int8_path, provider="cpu", threads=threads)
        warnings = check_pair(fp32, int8)
        for w in warnings:
            log(f"warning: {w}")
        described = {"model": _describe(fp32), "int8_model": {**_describe(int8), "source": made}}

        baseline, baseline_flops = None, None
        if args.baseline:
            baseline = OnnxModel(args.baseline, provider="cpu", threads=threads)
            described["baseline"] = _describe(baseline)
        feeds = {"waveform": _clips(1, samples), "lengths": np.array([samples], np.int64)}
        log("counting FLOPs ...")
        flops = count_flops(onnx.load(args.model), feeds)
        flops_int8 = count_flops(onnx.load(int8_path), feeds)
        if args.baseline:
            baseline_flops = count_flops(onnx.load(args.baseline), feeds)

        log(f"dense-matmul peak ({args.peak_size}^2, {threads} threads) ...")
        peak_before = measure_peak(args.peak_size, threads, args.peak_repeats, args.min_time)
        # Every model of the run at a batch size, timed in turns: ratios from one run.
        models = {"fp32": (fp32, flops), "int8": (int8, flops)}
        if baseline is not None:
            models["baseline"] = (baseline, baseline_flops)
        results = []
        for batch in args.batches:
            log(f"batch {batch}: {', '.join(models)} in turns ...")
            clips = _clips(batch, samples)
            rates = measure_side_by_side(
                {name: (lambda m=model, c=clips: m.embed(c, max_batch=len(c)))
                 for name, (model, _) in models.items()},
                batch, args.warmup, args.repeats, args.min_time)
            for name, rate in rates.items():
                results.append({
                    "model": "baseline" if name == "baseline" else "model",
                    "precision": "fp32" if name == "baseline" else name,
                    "batch": batch,
                    "clips_per_s": rate.to_dict(),
                    "clips_per_s_per_thread": rate.median / threads,
                    "ms_per_batch": 1e3 * batch / rate.median,
                    "real_time_factor": rate.median * seconds,
                    "gflops": rate.median * models[name][1].flops / 1e9,
                    "vs_baseline": rate.median / rates["baseline"].median
                    if "baseline" in rates else None,
                })
        peak_after = measure_peak(args.peak_size, threads, args.peak_repeats, args.min_time)

    # The machine's peak: the best fp32 matmul seen, whichever library and pass gave it.
    peak = max(p[k] for p in (peak_before, peak_after)
               for k in ("ort_matmul_fp32", "numpy_sgemm_fp32"))
    for r in results:
        r["peak_fraction"] = r["gflops"] / peak
    drift = abs(peak_before["ort_matmul_fp32"] - peak_after["ort_matmul_fp32"]) / peak
    if drift > 0.15:
        msg = (f"the matmul peak moved {100 * drift:.0f} % between before and after the model: "
               "something else was using the cores")
        warnings.append(msg)
        log(f"warning: {msg}")

    return {
        "benchmark": "onnx_throughput",
        **described,
        "machine": machine_info(threads),
        "settings": {
            "threads": threads, "batches": args.batches, "clip_samples": samples,
            "clip_seconds": seconds, "warmup_calls": args.warmup, "timed_runs": args.repeats,
            "min_seconds_per_run": args.min_time, "peak_size": args.peak_size,
            "peak_runs": args.peak_repeats, "provider": fp32.provider,
        },
        "flops": {
            "per_clip": flops.flops,
            "note": "2 x MACs of Conv/ConvTranspose/MatMul/Gemm (and their integer forms) at "
                    "batch 1, one clip; elementwise ops, reductions, pooling and bias adds are "
                    "not counted. The int8 graph does the same multiplications, so the fp32 "
                    "count is used for both precisions.",
            "fp32_graph": flops.to_dict(),
            "int8_graph": flops_int8.to_dict(),
            "baseline_graph": None if baseline_flops is None else baseline_flops.to_dict(),
        },
        "peak": {
            "fp32_gflops": peak,
            "definition": "best fp32 GFLOP/s of ONNX Runtime MatMul and numpy sgemm on "
                          f"{args.peak_size}x{args.peak_size} float32 matrices, {threads} "
                          "threads, measured before and after the model",
            "before_gflops": peak_before,
            "after_gflops": peak_after,
        },
        "results": results,
        "warnings": warnings,
        "elapsed_s": time.perf_counter() - t0,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The results as a markdown table with the context lines a reader needs."""
    f, p, s = doc["flops"], doc["peak"], doc["settings"]
    m = doc["machine"]
    lines = [
        f"Model `{doc['model']['path']}` ({doc['model']['encoder']}, sha256 "
        f"{doc['model']['weights_sha256'][:12]}), int8: {doc['int8_model']['source']}.",
        f"{m['cpu']}, {s['threads']} threads, load average {m['load_average_1_5_15']}; "
        f"clips of {s['clip_seconds']:g} s; median of {s['timed_runs']} runs of >= "
        f"{s['min_seconds_per_run']:g} s after {s['warmup_calls']} warm-up calls.",
        f"FLOPs per clip: {f['per_clip'] / 1e6:.1f} M (frontend "
        f"{f['fp32_graph']['frontend_flops'] / 1e6:.1f} M); counted: Conv, MatMul, Gemm; "
        "ignored: elementwise, reductions, pooling.",
        f"Dense-matmul peak: {p['fp32_gflops']:.1f} GFLOP/s fp32 (ORT "
        f"{p['before_gflops']['ort_matmul_fp32']:.1f} / "
        f"{p['after_gflops']['ort_matmul_fp32']:.1f}, numpy "
        f"{p['before_gflops']['numpy_sgemm_fp32']:.1f} / "
        f"{p['after_gflops']['numpy_sgemm_fp32']:.1f} before / after); int8 MatMulInteger "
        f"{p['before_gflops']['ort_matmulinteger_int8']:.1f} GOP/s.",
    ]
    if doc.get("baseline"):
        b = doc["baseline"]
        lines.append(f"Baseline `{b['path']}` (sha256 {b['weights_sha256'][:12]}), FLOPs per "
                     f"clip {f['baseline_graph']['flops'] / 1e6:.1f} M, timed in turns with "
                     "the model.")
    lines += [
        "",
        "| model | precision | batch | clips/s (median) | min–max | per thread | ms/batch "
        "| real-time factor | GFLOP/s | % of peak | × baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        c = r["clips_per_s"]
        ratio = "" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}×"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {c['median']:.1f} | "
            f"{c['min']:.1f}–{c['max']:.1f} | {r['clips_per_s_per_thread']:.1f} | "
            f"{r['ms_per_batch']:.2f} | {r['real_time_factor']:,.1f}× | {r['gflops']:.2f} | "
            f"{100 * r['peak_fraction']:.1f} % | {ratio} |")
    lines.append("\n% of peak: counted FLOPs per clip x clips/s over the fp32 peak, for the "
                 "int8 rows too (their multiplications are the same, in int8 or fp32).")
    lines.extend(f"\nwarning: {w}" for w in doc["warnings"])
    return "\n".join(lines)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be positive")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/onnx_throughput.py",
        description="Throughput (clips/s, real-time factor) of an exported model for fp32 "
                    "and int8 at several batch sizes, its FLOPs per clip counted from the "
                    "graph, and the fraction of this machine's dense-matmul peak (measured "
                    "in the same run) it reaches. Markdown table on stdout, or JSON with "
                    "--json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="fp32 model .onnx "
                        "(audioclust-export)")
    parser.add_argument("--int8", type=Path, help="its int8 version; default: quantise "
                        "--model here with audioclust-export's int8 path")
    parser.add_argument("--baseline", type=Path, help="another fp32 model (the one before a "
                        "change) timed in turns with --model, for ratios from one run")
    parser.add_argument("--threads", type=_positive(int), default=default_threads(),
                        help="intra-op threads for the model and the peak measurement")
    parser.add_argument("--batches", type=batch_sizes, default="1,32", help="batch sizes")
    parser.add_argument("--clip-seconds", type=_positive(float),
                        help="clip length; default: the model's window from its metadata")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument("--repeats", type=_positive(int), default=7, help="timed runs; the "
                        "median is reported")
    parser.add_argument("--min-time", type=_positive(float), default=1.0,
                        help="seconds per timed run (calls repeat until it has passed)")
    parser.add_argument("--peak-size", type=_positive(int), default=2048,
                        help="matrix size for the peak measurement")
    parser.add_argument("--peak-repeats", type=_positive(int), default=5,
                        help="timed runs per peak measurement; the best is kept")
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the table "
                        "goes to stderr)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("onnx_throughput", lambda: run(args), markdown, args.json, args.out)


if __name__ == "__main__":
    sys.exit(main())
