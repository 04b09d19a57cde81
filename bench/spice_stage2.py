"""SPICE stage 2 study: every stage-2 head scored against labels, per setting (issue 4).

Embeds the clips and SPICE's weak/strong view sets once with a frozen encoder, then runs
:class:`~audioclust.training.heads.spice.SPICE`'s stage 2 (its own code) for each
``center_ratio`` x seed, and scores every head (not only the lowest-loss one that SPICE
keeps) by NMI and Hungarian accuracy against the folder's labels, beside k-means on the
same standardised embeddings, with label-free guides to a good head (the head's loss,
its agreement with the other heads, with the clips' nearest neighbours) and their
Spearman correlation with accuracy. Views use seed 0 for every run; the seed varies the heads'
initialisation and batches. JSON on stdout.

    python bench/spice_stage2.py --encoder runs/slicer/encoder.safetensors \\
        --center-ratios 0.5,0.2,0.1,0.05 --seeds 0 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import default_fsdd, log, machine_info, write_json


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--encoder", required=True, type=Path, help="encoder checkpoint")
    p.add_argument("--data", type=Path, default=default_fsdd(), help="labelled audio folder")
    p.add_argument("--labels", default="digit", help="label field of the file names")
    p.add_argument("--clusters", type=int, default=10, help="K")
    p.add_argument("--center-ratios", type=_floats, default=[0.2],
                   help="comma-separated SPICE center_ratio values")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=30, help="SPICE epochs")
    p.add_argument("--heads", type=int, default=10, help="SPICE n_heads")
    p.add_argument("--head-batch-size", type=int, default=5000, help="SPICE batch_size")
    p.add_argument("--crop-frames", type=int, default=64, help="SPICE crop_frames")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--cache-dir", default=None, help="log-mel cache (default: the usual)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from scipy.stats import spearmanr
    from sklearn.preprocessing import StandardScaler

    from audioclust.models.embedder import load_embedder
    from audioclust.training.datasets import AudioFolder
    from audioclust.training.features import embed_dataset, logmel_bank
    from audioclust.training.heads.neighbors import knn
    from audioclust.training.heads.spice import SPICE
    from audioclust.training.heads.spice_finetune import SPICEFineTuneSettings, audio_views
    from audioclust.training.kmeans import KMeans
    from audioclust.training.metrics import accuracy, nmi

    torch.set_num_threads(args.threads)
    embedder = load_embedder(args.encoder)
    dataset = AudioFolder(args.data, labels=args.labels,
                          sample_rate=embedder.frontend.config.sample_rate)
    y = np.asarray(dataset.targets)
    bank = logmel_bank(dataset, embedder.frontend.config, cache_dir=args.cache_dir,
                       progress=False)

    def estimator(center_ratio: float, seed: int) -> SPICE:
        return SPICE(args.clusters, n_heads=args.heads, epochs=args.epochs,
                     batch_size=args.head_batch_size, center_ratio=center_ratio, seed=seed)

    t0 = time.perf_counter()
    original = embed_dataset(dataset, args.encoder, cache_dir=args.cache_dir, progress=False)
    view_settings = SPICEFineTuneSettings(crop_frames=args.crop_frames)
    views = audio_views(embedder, bank, view_settings, seed=0)
    view_seconds = time.perf_counter() - t0
    log(f"{len(bank)} clips embedded, {view_settings.n_view_sets} weak + strong view sets "
        f"({view_seconds:.0f} s)")

    z = StandardScaler().fit_transform(original.astype(np.float64))
    km = KMeans(args.clusters, n_init=10, random_state=0).fit_predict(z)
    kmeans = {"nmi": round(nmi(y, km), 4), "acc": round(accuracy(y, km), 4)}
    log(f"k-means: NMI {kmeans['nmi']:.3f}, ACC {kmeans['acc']:.3f}")

    x = torch.from_numpy(original)
    neighbours = None
    runs = []
    for center_ratio in args.center_ratios:
        for seed in args.seeds:
            sp = estimator(center_ratio, seed).fit(original, views=views)
            history = sp.history_
            with torch.no_grad():
                preds = sp.head_.all_logits(x).argmax(-1).numpy()
                if neighbours is None:  # the heads' input space does not depend on the seed
                    neighbours = knn(sp.head_.prepare(x).numpy(), 20, seed=0)[0]
            # Label-free guides to a good head, besides SPICE's loss: agreement with the
            # other heads (mean NMI) and with the clip's nearest neighbours.
            agree = [float(np.mean([nmi(p, q) for j, q in enumerate(preds) if j != h]))
                     for h, p in enumerate(preds)]
            knn_agree = [float((p[neighbours] == p[:, None]).mean()) for p in preds]
            scores = [{"nmi": round(nmi(y, p), 4), "acc": round(accuracy(y, p), 4),
                       "clusters_used": int(np.unique(p).size),
                       "loss": round(history["last_epoch_per_head"][h], 5),
                       "head_agreement": round(agree[h], 4),
                       "knn_agreement": round(knn_agree[h], 4)}
                      for h, p in enumerate(preds)]
            acc = [s["acc"] for s in scores]
            guides = {key: round(float(spearmanr([s[key] for s in scores], acc)[0]), 3)
                      for key in ("loss", "head_agreement", "knn_agreement")}
            kept = history["selected"]
            seconds = history["seconds"]
            row = {
                "center_ratio": center_ratio, "seed": seed, "seconds": round(seconds, 1),
                "kept_head": kept, "kept": scores[kept],
                "mean_nmi": round(float(np.mean([s["nmi"] for s in scores])), 4),
                "mean_acc": round(float(np.mean([s["acc"] for s in scores])), 4),
                "spearman_with_acc": guides,
                "heads_above_kmeans_on_both": sum(
                    s["nmi"] > kmeans["nmi"] and s["acc"] > kmeans["acc"] for s in scores),
                "heads": scores,
            }
            runs.append(row)
            log(f"center_ratio {center_ratio}, seed {seed}: kept head {kept} NMI "
                f"{scores[kept]['nmi']:.3f} ACC {scores[kept]['acc']:.3f}; head means "
                f"{row['mean_nmi']:.3f} / {row['mean_acc']:.3f} ({seconds:.0f} s)")
    return {
        "encoder": str(args.encoder), "data": str(args.data), "labels": args.labels,
        "clips": len(bank), "n_clusters": args.clusters, "epochs": args.epochs,
        "n_heads": args.heads, "threads": args.threads, "view_seconds": round(view_seconds, 1),
        "kmeans": kmeans, "runs": runs, "machine": machine_info(args.threads),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.encoder.is_file():
        print(f"error: encoder checkpoint not found: {args.encoder}", file=sys.stderr)
        return 2
    result = run(args)
    write_json(result, args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
