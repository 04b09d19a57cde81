"""How often an int8 model picks the same cluster as its fp32 original (issue 5, §4).

Runs every clip of a folder (default: all of FSDD's 3,000 recordings) through both models
with :class:`~audioclust.models.runtime.OnnxModel` and reports the fraction whose posterior
argmax agrees (the issue asks for at least 98 %), the embeddings' cosine similarity, the
clips that disagree and the time each step took. JSON on stdout.

    python bench/int8_agreement.py --model model.onnx [--int8 model.int8.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    check_pair,
    default_fsdd,
    default_threads,
    log,
    machine_info,
    make_int8,
    write_json,
)

THRESHOLD = 0.98  # issue 5 §4


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole measurement; returns the JSON document."""
    from audioclust.models.audio import find_audio_files, load_audio
    from audioclust.models.runtime import OnnxModel

    t0 = time.perf_counter()
    fp32 = OnnxModel(args.model, provider="cpu", threads=args.threads)
    sr, min_samples = fp32.info.sample_rate, fp32.info.min_samples
    files = find_audio_files(args.data)
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise ValueError(f"no audio files in {args.data}")

    start = time.perf_counter()
    clips, padded = [], 0
    for path in files:
        clip = load_audio(path, sr)
        if len(clip) < min_samples:
            # Too short for the model: pad with silence, as a stream window would be.
            clip = np.pad(clip, (0, min_samples - len(clip)))
            padded += 1
        clips.append(clip)
    load_s = time.perf_counter() - start
    audio_s = sum(len(c) for c in clips) / sr

    with tempfile.TemporaryDirectory(prefix="audioclust-bench-") as tmp:
        quantise_s = 0.0
        if args.int8:
            int8_path, made = Path(args.int8), "given"
        else:
            log("quantising to int8 with audioclust-export's int8 path ...")
            start = time.perf_counter()
            int8_path = make_int8(args.model, tmp)
            quantise_s = time.perf_counter() - start
            made = "made here by audioclust-export's int8 path (models.export.quantize_model)"
        int8 = OnnxModel(int8_path, provider="cpu", threads=args.threads)
        warnings = check_pair(fp32, int8)
        for w in warnings:
            log(f"warning: {w}")
        int8_info = {"path": str(int8_path), "source": made,
                     "quantization": int8.info.quantization,
                     "weights_sha256": int8.info.weights_sha256}

        log(f"{len(clips)} clips through fp32 ...")
        start = time.perf_counter()
        z, p = fp32.embed(clips, max_batch=args.batch)
        fp32_s = time.perf_counter() - start
        log(f"{len(clips)} clips through int8 ...")
        start = time.perf_counter()
        zq, pq = int8.embed(clips, max_batch=args.batch)
        int8_s = time.perf_counter() - start

    agree = p.argmax(1) == pq.argmax(1)
    norms = np.linalg.norm(z, axis=1) * np.linalg.norm(zq, axis=1)
    cosine = (z * zq).sum(1) / np.maximum(norms, 1e-12)
    fraction = float(agree.mean())
    disagree = [
        {"file": files[i].name, "fp32": int(p[i].argmax()), "int8": int(pq[i].argmax()),
         "fp32_confidence": float(p[i].max()), "cosine": float(cosine[i])}
        for i in np.flatnonzero(~agree)
    ]
    return {
        "benchmark": "int8_agreement",
        "model": {"path": str(args.model), "weights_sha256": fp32.info.weights_sha256,
                  "quantization": fp32.info.quantization, "n_clusters": fp32.info.n_clusters},
        "int8_model": int8_info,
        "data": {"dir": str(args.data), "clips": len(clips), "audio_seconds": audio_s,
                 "padded_to_min_samples": padded},
        "agreement": fraction,
        "agreeing_clips": int(agree.sum()),
        "threshold": THRESHOLD,
        "meets_threshold": fraction >= THRESHOLD,
        "cosine": {"mean": float(cosine.mean()), "min": float(cosine.min()),
                   "p01": float(np.quantile(cosine, 0.01))},
        # Of the clips the fp32 model is sure of, how many flip: flips of near-ties matter less.
        "fp32_confidence_of_disagreeing": {
            "median": float(np.median([d["fp32_confidence"] for d in disagree]))
            if disagree else None},
        "disagreeing": disagree[: args.show],
        "seconds": {"load_audio": load_s, "quantise": quantise_s, "fp32": fp32_s,
                    "int8": int8_s, "total": time.perf_counter() - t0},
        "settings": {"threads": args.threads, "batch": args.batch, "limit": args.limit},
        "machine": machine_info(args.threads),
        "warnings": warnings,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/int8_agreement.py",
        description="Fraction of clips whose cluster (posterior argmax) agrees between an "
                    "fp32 model and its int8 version, over a folder of audio (all of FSDD "
                    "by default), with the time it took. JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="fp32 model .onnx")
    parser.add_argument("--int8", type=Path, help="its int8 version; default: quantise "
                        "--model here with audioclust-export's int8 path")
    parser.add_argument("--data", type=Path, default=default_fsdd(),
                        help="folder of audio files (searched recursively)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files "
                        "(sorted by path); 0 = all")
    parser.add_argument("--batch", type=int, default=32, help="clips per model call")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="intra-op threads")
    parser.add_argument("--show", type=int, default=50, help="list at most this many "
                        "disagreeing clips")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.limit < 0 or args.show < 0:
        parser.error("--batch and --threads must be positive, --limit and --show >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        doc = run(args)
    except (OSError, ValueError) as exc:  # ModelError and AudioError are ValueErrors
        print(f"int8_agreement: error: {exc}", file=sys.stderr)
        return 1
    write_json(doc, args.out)
    log(f"agreement {100 * doc['agreement']:.2f} % of {doc['data']['clips']} clips "
        f"({'meets' if doc['meets_threshold'] else 'BELOW'} {100 * THRESHOLD:.0f} %), "
        f"{doc['seconds']['total']:.1f} s")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
