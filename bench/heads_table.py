"""Clusterers side by side on one embeddings file: NMI / ARI / ACC / clusters used / time.

Runs, on the same (n, d) embeddings and with K = the number of classes: k-means
(standardised embeddings, 10 restarts, as ``audioclust-eval head`` scores it),
agglomerative (Ward on the standardised embeddings, as ``audioclust-eval baselines``),
and the TEMI, SPICE and DeepCluster heads with their defaults (the estimators
``audioclust-train head`` runs; SPICE without audio views, i.e. on the embeddings
alone). Labels come from ``--data`` / ``--labels`` in the audio folder's clip order, the
order bench/embed_clips.py writes. Markdown table on stdout, JSON with ``--out``.

    python bench/heads_table.py --embeddings runs/emb/gm-aisfx.npy \\
        --data ../shared/datasets/gm-notes --labels folder --out runs/bench/gm-aisfx.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import log, machine_info, write_json

CLUSTERERS = ("kmeans", "agglomerative", "temi", "spice", "deepcluster")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--embeddings", required=True, type=Path, help="(n, d) .npy file")
    p.add_argument("--data", required=True, type=Path, help="the labelled audio folder")
    p.add_argument("--labels", required=True, help="folder, digit, speaker or csv:FILE")
    p.add_argument("--clusterers", default=",".join(CLUSTERERS),
                   help=f"comma-separated subset of {','.join(CLUSTERERS)}")
    p.add_argument("--seed", type=int, default=0, help="seed of every clusterer")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--name", default=None, help="row label (default: the file's stem)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def cluster(name: str, x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels of the training points and extra facts (e.g. the selected head)."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.preprocessing import StandardScaler

    if name == "kmeans":
        from audioclust.training.kmeans import KMeans

        z = StandardScaler().fit_transform(x.astype(np.float64))
        return KMeans(k, n_init=10, random_state=seed).fit_predict(z), {}
    if name == "agglomerative":
        z = StandardScaler().fit_transform(x.astype(np.float64))
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(z), {}
    if name == "temi":
        from audioclust.training.heads.temi import TEMI as cls
    elif name == "spice":
        from audioclust.training.heads.spice import SPICE as cls
    elif name == "deepcluster":
        from audioclust.training.heads.deepcluster import DeepCluster as cls
    else:
        raise ValueError(f"unknown clusterer {name!r}")
    est = cls(k, seed=seed).fit(x)
    return est.labels_, {"selected": est.history_["selected"],
                         "head_usage": [round(u, 3) for u in est.cluster_usage_.tolist()]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    from audioclust.training.datasets import AudioFolder
    from audioclust.training.metrics import score_all

    x = np.load(args.embeddings).astype(np.float32)
    y = np.asarray(AudioFolder(args.data, labels=args.labels).targets)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"{args.embeddings}: {x.shape} embeddings for {y.size} clips")
    k = int(np.unique(y).size)
    names = [c for c in args.clusterers.split(",") if c]
    unknown = sorted(set(names) - set(CLUSTERERS))
    if unknown:
        raise ValueError(f"unknown clusterer(s) {unknown}; known: {', '.join(CLUSTERERS)}")
    torch.set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for name in names:
            t0 = time.perf_counter()
            labels, extra = cluster(name, x, k, args.seed)
            seconds = time.perf_counter() - t0
            s = score_all(y, labels)
            row = {"clusterer": name, "nmi": round(s.nmi, 4), "ari": round(s.ari, 4),
                   "acc": round(s.acc, 4), "clusters_used": s.n_clusters, "n_clusters": k,
                   "seconds": round(seconds, 1), **extra}
            rows.append(row)
            log(f"{name}: NMI {s.nmi:.3f} ARI {s.ari:.3f} ACC {s.acc:.3f}, "
                f"{s.n_clusters}/{k} clusters, {seconds:.1f} s")
    return {"embeddings": str(args.embeddings), "name": args.name or args.embeddings.stem,
            "data": str(args.data), "labels": args.labels, "clips": int(y.size),
            "dim": int(x.shape[1]), "n_clusters": k, "seed": args.seed, "rows": rows,
            "machine": machine_info(args.threads)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| data set | clusterer | NMI | ARI | ACC | clusters used | fit time |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {result['name']} ({result['labels']}) | {r['clusterer']} | "
                     f"{r['nmi']:.3f} | {r['ari']:.3f} | {r['acc']:.3f} | "
                     f"{r['clusters_used']} of {r['n_clusters']} | {r['seconds']:.1f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.embeddings.is_file():
        print(f"error: embeddings file not found: {args.embeddings}", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(result, args.out)
    print(markdown(result), end="")
    if args.out is None:
        log(json.dumps(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
