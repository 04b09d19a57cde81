"""Write a labelled embeddings file (``.npz``) for the clustering benches.

    python bench/embed.py --data DIR --labels digit|speaker|folder --encoder SPEC -o FILE.npz

The file holds ``embeddings`` (n, d) float32, ``labels`` (n,) int64, ``class_names`` and
``paths`` (str arrays) and ``source`` (a JSON string saying how it was made): no pickle.
Every clip is embedded whole, one vector per clip, as ``audioclust-train head`` embeds it:
``--encoder`` is any encoder spec the CLIs take (an audioclust checkpoint such as
``models/assets/default-encoder.safetensors``, ``aisfx``, ``onnx:FILE``, ...), through the
feature cache. (``bench/embed_clips.py`` writes the same rows as a bare ``.npy``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from benchlib import log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="folder of labelled clips")
    p.add_argument("--labels", required=True, help="digit, speaker, folder or csv:FILE")
    p.add_argument("--encoder", required=True, help="encoder spec: checkpoint, aisfx, ...")
    p.add_argument("-o", "--output", required=True, type=Path, help=".npz to write")
    args = p.parse_args(argv)

    from audioclust.models.encoder_spec import open_encoder
    from audioclust.training.datasets import AudioFolder
    from audioclust.training.features import embed_dataset

    enc = open_encoder(args.encoder)
    data = AudioFolder(args.data, labels=args.labels, sample_rate=enc.sample_rate)
    paths = [c.path for c in data.clips]
    x = embed_dataset(data, enc)
    source = {"data": str(args.data), "labels": args.labels, "encoder": args.encoder}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, embeddings=x.astype(np.float32), labels=data.targets,
             class_names=np.array(data.class_names), paths=np.array([str(q) for q in paths]),
             source=np.array(json.dumps(source)))
    log(f"wrote {args.output}: {x.shape[0]} x {x.shape[1]}, {len(data.class_names)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
