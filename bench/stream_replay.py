"""Real-time factor of ``audioclust-stream --source file`` over FSDD: audio seconds / wall seconds.

Runs the service's pipeline in-process (file source → windower → gate → batched ONNX →
assigner) into a sink that only counts records, so the figure is the service's own cost
without terminal or disk output. Without ``--model`` a small random model like the test
suite's (AudioNTT 64-d, 4 clusters) is exported first; that takes torch and a few seconds
and is not timed. Prints one JSON object.

    python bench/stream_replay.py --limit 300
    python bench/stream_replay.py --model models/assets/default.onnx --max-batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class CountingSink:
    """A sink that keeps nothing: the benchmark measures the pipeline, not the output."""

    def __init__(self) -> None:
        self.records = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        self.records += len(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def random_model(out_dir: Path) -> Path:
    import torch

    from audioclust.models.embedder import Embedder, save_embedder
    from audioclust.models.encoders import build_encoder
    from audioclust.models.export import export_model
    from audioclust.models.heads import ClusterHead, HeadConfig, save_head

    torch.manual_seed(0)
    embedder = Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                        mean=-6.0, std=5.0).eval()
    enc = save_embedder(embedder, out_dir / "enc.safetensors", {"method": "random"})
    head = ClusterHead(HeadConfig(64, 4, n_heads=1, hidden_dim=32))
    hd = save_head(head, out_dir / "head.safetensors", "random", info={})
    return export_model(enc, hd, out_dir / "model.onnx", description="bench model").path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/datasets/fsdd/recordings")
    p.add_argument("--model", type=Path, help="exported model (default: a random test model)")
    p.add_argument("--limit", type=int, default=0, help="first N files only (0: all)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--parallel", type=int, default=8, help="files replayed side by side")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    from audioclust.models.audio import find_audio_files
    from audioclust.models.runtime import OnnxModel
    from audioclust.stream.config import FileConfig, StreamConfig
    from audioclust.stream.pipeline import Pipeline
    from audioclust.stream.sources.file import FileSource

    files = find_audio_files(args.data)
    if args.limit:
        files = files[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or random_model(Path(tmp))
        model = OnnxModel(model_path, provider="cpu", threads=args.threads)
        cfg = StreamConfig(max_batch=args.max_batch, max_queue=max(256, args.max_batch),
                           file=FileConfig(parallel=args.parallel))
        sink = CountingSink()
        source = FileSource(files, model.info.sample_rate, cfg.file)
        pipe = Pipeline(model, source, sink, cfg)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        summary = pipe.run()
        wall = time.perf_counter() - t0
    result = {
        "files": len(files),
        "failed_files": len(source.failures),
        "windows": sink.records,
        "silent_windows": summary.silent,
        "audio_seconds": round(summary.audio_seconds, 2),
        "wall_seconds": round(wall, 3),
        "real_time_factor": round(summary.audio_seconds / wall, 1),
        "model": str(args.model or "random AudioNTT 64-d, K=4"),
        "window_seconds": model.info.window_seconds,
        "hop_seconds": model.info.hop_seconds,
        "max_batch": args.max_batch,
        "parallel": args.parallel,
        "ort_threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
