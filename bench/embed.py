"""Write a labelled embeddings file (``.npz``) for the clustering benches.

    python bench/embed.py --data DIR --labels digit|speaker|folder --encoder CKPT -o FILE.npz
    python bench/embed.py --data DIR --labels folder --encoder aisfx-package -o FILE.npz

The file holds ``embeddings`` (n, d) float32, ``labels`` (n,) int64, ``class_names`` and
``paths`` (str arrays) and ``source`` (a JSON string saying how it was made): no pickle.
Every clip is embedded whole, one vector per clip.

``--encoder CKPT`` is an audioclust embedder checkpoint (``audioclust-train ssl``, e.g.
``models/assets/default-encoder.safetensors``), through the feature cache.
``--encoder aisfx-package`` runs the aisfx wheel's own code (``pip install --no-deps
aisfx==0.1.2``): its librosa log-mel spectrogram (44.1 kHz, frame 2048, hop 1024, 96 HTK
bands), its min-max normalisation, its 100-frame blocks with hop 0.5 (the last partial
block dropped, as its ``inference.main`` does; a clip shorter than a block is zero-padded
to one), and the mean of the block embeddings. Its checkpoint is a pickle of tensors and
numpy scalars; it is read with ``torch.load(weights_only=True)`` allowing exactly those.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from benchlib import log

AISFX = "aisfx-package"


def _aisfx_model():
    import torch
    from aisfx import inference

    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
               np.dtypes.Int64DType, np.dtypes.Float64DType]
    with torch.serialization.safe_globals(allowed):
        weights, datasets = torch.load(inference.get_path_modelWeights(), map_location="cpu",
                                       weights_only=True)
    return inference.load_bestModel(weights, datasets, "cpu")


def aisfx_embeddings(paths: list[Path]) -> np.ndarray:
    """One 512-d vector per file by the aisfx package's own spectrogram and network."""
    from aisfx import inference
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram
    from tqdm import tqdm

    model = _aisfx_model()
    out = []
    for path in tqdm(paths, desc="aisfx", unit="clip"):
        spec = compute_spectrogram(str(path), inference.SAMPLE_RATE, inference.SPEC_BLOCK_LENGTH,
                                   inference.SPEC_HOP_LENGTH, inference.MEL_BINS,
                                   inference.F_MIN, inference.F_MAX)
        spec = spectrogram_normalize(spec.T)  # the network takes (frames, bands)
        if spec.shape[0] <= inference.EMB_BLOCK_LENGTH:
            spec = np.pad(spec, ((0, inference.EMB_BLOCK_LENGTH + 1 - spec.shape[0]), (0, 0)))
        blocks = inference.model_get_embedding(spec, 0.5, True, model, "cpu")
        out.append(np.asarray(blocks, dtype=np.float32).mean(0))
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="folder of labelled clips")
    p.add_argument("--labels", required=True, help="digit, speaker, folder or csv:FILE")
    p.add_argument("--encoder", required=True, help=f"embedder checkpoint, or {AISFX}")
    p.add_argument("-o", "--output", required=True, type=Path, help=".npz to write")
    args = p.parse_args(argv)

    from audioclust.training.datasets import AudioFolder

    data = AudioFolder(args.data, labels=args.labels)
    paths = [c.path for c in data.clips]
    if args.encoder == AISFX:
        x = aisfx_embeddings(paths)
    else:
        from audioclust.training.features import embed_dataset

        x = embed_dataset(data, args.encoder)
    source = {"data": str(args.data), "labels": args.labels, "encoder": args.encoder}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, embeddings=x.astype(np.float32), labels=data.targets,
             class_names=np.array(data.class_names), paths=np.array([str(q) for q in paths]),
             source=np.array(json.dumps(source)))
    log(f"wrote {args.output}: {x.shape[0]} x {x.shape[1]}, {len(data.class_names)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
