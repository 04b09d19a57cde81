"""Clip embeddings of an audio folder into one ``.npy`` file, for bench/heads_table.py.

Rows follow :class:`~audioclust.training.datasets.AudioFolder`'s clip order (the order
every ``--labels`` spec gives), so one file serves digit and speaker labels alike.
``--encoder`` is any encoder spec the CLIs take (an audioclust checkpoint, ``aisfx``,
``onnx:FILE``, ...), embedded as ``audioclust-train head`` embeds it (same feature cache).

    python bench/embed_clips.py --encoder aisfx --data ../shared/datasets/gm-notes \\
        --out runs/emb/gm-aisfx.npy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--encoder", required=True, help="encoder spec: checkpoint, aisfx, ...")
    p.add_argument("--data", required=True, type=Path, help="audio folder")
    p.add_argument("--out", required=True, type=Path, help=".npy file to write")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--cache-dir", default=None, help="embedding cache")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from audioclust.models.encoder_spec import open_encoder
    from audioclust.training.datasets import AudioFolder
    from audioclust.training.features import embed_dataset

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        enc = open_encoder(args.encoder)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = AudioFolder(args.data, sample_rate=enc.sample_rate)
    x = embed_dataset(folder, enc, cache_dir=args.cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x.astype(np.float32))
    log(f"{x.shape[0]} clips, {x.shape[1]}-d, {time.perf_counter() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
