"""Exact log-mel frontends side by side on ONNX Runtime: which STFT to build (issue 14, §3).

Every candidate computes the project's log-mel (n_fft 1024, hop 160, 64 mels, Hann) from
a 16 kHz waveform; each is exported to ONNX like the model is, checked against a float64
reference (``torch.stft`` in double precision, the same mel filters), its FLOPs counted
from the graph, and all of them timed in turns (one run, the same load on each) on the
CPU provider. Candidates:

- ``dft-conv``: the direct DFT as one strided convolution with 1024-tap cos/sin kernels,
  then |X|^2 and the mel matrix (the frontend before issue 14);
- ``onnx-dft``: frames (Gather), window, ONNX's DFT operator (``torch.fft.rfft``);
- ``onnx-stft``: ONNX's STFT operator (``torch.stft``);
- ``factorised-N2``: :class:`audioclust.models.frontend.STFT` with block size N2 (a
  grouped convolution and a matrix product), the mel matrix applied to real^2 and imag^2
  in its own bin order (what :class:`LogMelFrontend` runs).

    python bench/frontend_candidates.py --threads 1 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import default_threads, log, machine_info, measure_side_by_side, run_and_report

SR, N_FFT, HOP, N_MELS, F_MIN, F_MAX, FLOOR = 16000, 1024, 160, 64, 60.0, 7800.0, 1e-10


def candidates() -> dict[str, Any]:
    """name -> torch module, waveform (B, T) -> log-mel (B, n_mels, 1 + T // hop)."""
    import torch
    from torch import nn

    from audioclust.models.frontend import STFT, mel_filterbank, window_samples

    fb = torch.tensor(mel_filterbank(SR, N_FFT, N_MELS, F_MIN, F_MAX), dtype=torch.float32)
    window = torch.tensor(window_samples("hann", N_FFT, N_FFT), dtype=torch.float32)

    def log_mel(power: torch.Tensor) -> torch.Tensor:  # power (B, bins, frames)
        return torch.log(torch.clamp(torch.matmul(fb, power), min=FLOOR))

    class DirectConv(nn.Module):
        # The graph of the frontend before issue 14: its kernels are STFT's direct DFT.
        def __init__(self):
            super().__init__()
            self.register_buffer("dft", STFT(N_FFT, HOP, block=None).stage1)

        def forward(self, waveform):
            x = nn.functional.pad(waveform.unsqueeze(1), (N_FFT // 2, N_FFT // 2))
            spec = nn.functional.conv1d(x, self.dft, stride=HOP)
            bins = N_FFT // 2 + 1
            return log_mel(spec[:, :bins] ** 2 + spec[:, bins:] ** 2)

    class OnnxDFT(nn.Module):
        def forward(self, waveform):
            x = nn.functional.pad(waveform, (N_FFT // 2, N_FFT // 2))
            spec = torch.fft.rfft(x.unfold(-1, N_FFT, HOP) * window, dim=-1)
            return log_mel((spec.real ** 2 + spec.imag ** 2).transpose(1, 2))

    class OnnxSTFT(nn.Module):
        def forward(self, waveform):
            spec = torch.stft(waveform, N_FFT, HOP, window=window, center=True,
                              pad_mode="constant", return_complex=True)
            return log_mel(spec.real ** 2 + spec.imag ** 2)

    class Factorised(nn.Module):
        def __init__(self, block: int):
            super().__init__()
            self.stft = STFT(N_FFT, HOP, block=block)
            self.register_buffer("mel", self.stft.filterbank(fb.double().numpy()))

        def forward(self, waveform):
            mel = self.stft.filtered_power(waveform, self.mel)
            return torch.log(torch.clamp(mel, min=FLOOR))

    out: dict[str, Any] = {"dft-conv": DirectConv(), "onnx-dft": OnnxDFT(),
                           "onnx-stft": OnnxSTFT()}
    for block in (8, 16, 32):
        out[f"factorised-{block}"] = Factorised(block)
    return out


def reference(x: np.ndarray) -> np.ndarray:
    """The log-mel in float64: torch.stft in double precision, the same filters."""
    import torch

    from audioclust.models.frontend import mel_filterbank

    spec = torch.stft(torch.from_numpy(x).double(), N_FFT, HOP,
                      window=torch.hann_window(N_FFT, periodic=True, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True)
    mel = torch.from_numpy(mel_filterbank(SR, N_FFT, N_MELS, F_MIN, F_MAX)) @ spec.abs() ** 2
    return torch.log(torch.clamp(mel, min=FLOOR)).numpy()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch
    from onnx_throughput import count_flops

    from audioclust.models.onnx_export import export_onnx

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.batch, args.samples)) * 0.1).astype(np.float32)
    ref = reference(x)
    loud = ref > ref.max() + np.log(1e-6)
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="audioclust-frontends-") as tmp:
        for name, module in candidates().items():
            log(f"exporting {name} ...")
            path = export_onnx(module.eval(), (torch.zeros(2, args.samples),),
                               Path(tmp) / f"{name}.onnx", ["waveform"], ["logmel"],
                               {"waveform": {0: "batch", 1: "samples"}},
                               min_sizes={"samples": N_FFT})
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"waveform": x})[0]
            graph = onnx.load(path)
            flops = count_flops(graph, {"waveform": x[:1]}, frontend_prefix="")
            rows[name] = {
                "max_abs_diff_loud": float(np.abs(got - ref)[loud].max()),
                "max_abs_diff": float(np.abs(got - ref).max()),
                "mflops_per_clip": flops.flops / 1e6,
                "ops": sorted({n.op_type for n in graph.graph.node}),
                "size_bytes": path.stat().st_size,
            }
            sessions[name] = sess
        log(f"timing {len(sessions)} candidates in turns ...")
        rates = measure_side_by_side(
            {name: (lambda s=sess: s.run(None, {"waveform": x})) for name, sess in
             sessions.items()}, args.batch, args.warmup, args.repeats, args.min_time)
    base, cpu_base = rates["dft-conv"].median, rates["dft-conv"].cpu_median
    for name, rate in rates.items():
        rows[name]["windows_per_s"] = rate.to_dict()
        rows[name]["vs_dft_conv"] = rate.median / base
        rows[name]["vs_dft_conv_cpu"] = rate.cpu_median / cpu_base
    return {"benchmark": "frontend_candidates",
            "settings": {"threads": args.threads, "batch": args.batch, "samples": args.samples,
                         "warmup": args.warmup, "repeats": args.repeats,
                         "min_time": args.min_time},
            "machine": machine_info(args.threads), "candidates": rows}


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [f"Batch {s['batch']} x {s['samples']} samples, {s['threads']} threads, median of "
             f"{s['repeats']} runs of >= {s['min_time']:g} s each, in turns; load average "
             f"{doc['machine']['load_average_1_5_15']}.", "",
             "| candidate | windows/s | min–max | × dft-conv | windows per CPU-s | × dft-conv "
             "| MFLOP/clip | max abs Δ log-mel (loud / all) | ONNX ops |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in doc["candidates"].items():
        w = r["windows_per_s"]
        lines.append(f"| {name} | {w['median']:.0f} | {w['min']:.0f}–{w['max']:.0f} | "
                     f"{r['vs_dft_conv']:.2f} | {w['per_cpu_second']['median']:.0f} | "
                     f"{r['vs_dft_conv_cpu']:.2f} | {r['mflops_per_clip']:.1f} | "
                     f"{r['max_abs_diff_loud']:.1e} / {r['max_abs_diff']:.1e} | "
                     f"{', '.join(r['ops'])} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/frontend_candidates.py",
        description="Exact log-mel frontends (direct DFT convolution, ONNX DFT and STFT "
                    "operators, factorised STFTs) exported to ONNX, checked against a "
                    "float64 reference and timed in turns on ONNX Runtime's CPU provider.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=default_threads(), help="intra-op "
                        "threads")
    parser.add_argument("--batch", type=int, default=32, help="windows per call")
    parser.add_argument("--samples", type=int, default=16000, help="samples per window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per candidate")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timed run")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.threads, args.batch, args.repeats) < 1 or args.samples < N_FFT or \
            args.warmup < 0 or args.min_time <= 0:
        parser.error(f"--threads, --batch, --repeats must be positive, --samples >= {N_FFT}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("frontend_candidates", lambda: run(args), markdown, args.json,
                          args.out)


if __name__ == "__main__":
    sys.exit(main())
