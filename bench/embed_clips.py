"""Clip embeddings of an audio folder into one ``.npy`` file, for bench/heads_table.py.

Rows follow :class:`~audioclust.training.datasets.AudioFolder`'s clip order (the order
every ``--labels`` spec gives), so one file serves digit and speaker labels alike.

- ``--encoder CKPT``: an audioclust embedder checkpoint (the same cached embeddings
  ``audioclust-train head`` uses);
- ``--encoder aisfx``: the pretrained sound-effects CNN of the ``aisfx`` package (Ma and
  Lerch, ISMIR 2022; weights CC BY 4.0, installed with ``pip install --no-deps
  aisfx==0.1.2``), computed with the package's own code: its librosa mel spectrogram
  (44.1 kHz, frame 2048, hop 1024, 96 HTK bands, log10(1e4 x + 1)), its "original" min-max
  normalisation, 100-frame blocks at hop 0.5 (the package's default; the partial last
  block dropped unless it is the only one), one 512-d vector per block, averaged over the
  clip's blocks. The checkpoint (a pickle of tensors and numpy scalars) is read with
  ``torch.load(weights_only=True)`` and an allow-list of exactly those numpy types.

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
    p.add_argument("--encoder", required=True, help="embedder checkpoint, or aisfx")
    p.add_argument("--data", required=True, type=Path, help="audio folder")
    p.add_argument("--out", required=True, type=Path, help=".npy file to write")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--cache-dir", default=None, help="embedding cache (audioclust encoders)")
    return p.parse_args(argv)


def _aisfx_model():
    import aisfx.inference as ai
    import torch

    path = ai.get_path_modelWeights()
    from numpy._core.multiarray import scalar

    # numpy 2 renamed numpy.core; the pickle names the old path.
    safe = [(scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Float64DType,
            np.dtypes.Int64DType]
    with torch.serialization.safe_globals(safe):
        weights, ds_dict = torch.load(path, map_location="cpu", weights_only=True)
    return ai, ai.load_bestModel(weights, ds_dict, "cpu")


def aisfx_embeddings(files: list[Path]) -> np.ndarray:
    import librosa
    import torch
    from tqdm import tqdm

    ai, model = _aisfx_model()
    out = np.empty((len(files), 512), dtype=np.float32)
    for i, path in enumerate(tqdm(files, desc="aisfx", unit="clip")):
        y, _ = librosa.load(path, sr=ai.SAMPLE_RATE)
        y = y / (np.abs(y).max() or 1.0)
        spec = librosa.feature.melspectrogram(
            y=y, sr=ai.SAMPLE_RATE, n_mels=ai.MEL_BINS, norm=1.0, fmin=ai.F_MIN,
            fmax=ai.F_MAX, htk=True, power=2.0, hop_length=ai.SPEC_HOP_LENGTH,
            win_length=ai.SPEC_BLOCK_LENGTH)
        # The package's librosa path returns (mels, frames); its model and blocking take
        # (frames, mels), as its essentia path gives them.
        spec = np.log10(spec * 10000.0 + 1).T
        spec = ai.spectrogram_normalize(spec, spec_norm="original")
        hop = max(1, round(ai.EMB_BLOCK_LENGTH * 0.5))
        blocks = ai.blocking(spec, ai.EMB_BLOCK_LENGTH, hop, drop_partial_block=True)
        with torch.no_grad():
            emb = model.get_embedding(torch.as_tensor(blocks, dtype=torch.float32))
        out[i] = emb.mean(0).numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from audioclust.training.datasets import AudioFolder
    from audioclust.training.features import embed_dataset, embedder_checkpoint

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.encoder == "aisfx":
        try:
            import aisfx  # noqa: F401
        except ModuleNotFoundError:
            print("error: aisfx is not installed (pip install --no-deps aisfx==0.1.2)",
                  file=sys.stderr)
            return 2
        files = [c.path for c in AudioFolder(args.data).clips]
        x = aisfx_embeddings(files)
    else:
        try:
            ckpt = embedder_checkpoint(args.encoder)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        folder = AudioFolder(args.data, sample_rate=int(ckpt["frontend"]["sample_rate"]))
        x = embed_dataset(folder, args.encoder, cache_dir=args.cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x.astype(np.float32))
    log(f"{x.shape[0]} clips, {x.shape[1]}-d, {time.perf_counter() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
