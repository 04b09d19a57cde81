"""Clusterers side by side on one embeddings file: NMI / ARI / ACC / clusters used / time.

Runs, on the same (n, d) embeddings and with K = the number of classes: k-means
(standardised embeddings, 10 restarts, as ``audioclust-eval head`` scores it),
agglomerative (Ward on the standardised embeddings, as ``audioclust-eval baselines``),
and the TEMI, SPICE and DeepCluster heads with their defaults (the estimators
``audioclust-train head`` runs; SPICE without audio views, i.e. on the embeddings
alone). Labels come from ``--data`` / ``--labels`` in the audio folder's clip order, the
order bench/embed_clips.py writes; or from an ``.npz`` holding ``embeddings`` and
``labels`` (bench/embed.py's files), then ``--data`` is not needed. Markdown table on
stdout, JSON with ``--out``.

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
    p.add_argument("--embeddings", required=True, type=Path,
                   help="(n, d) .npy file, or .npz with embeddings and labels")
    p.add_argument("--data", type=Path, help="the labelled audio folder (for a .npy)")
    p.add_argument("--labels", default=None,
                   help="folder, digit, speaker or csv:FILE (for a .npy)")
    p.add_argument("--clusterers", default=",".join(CLUSTERERS),
                   help=f"comma-separated subset of {','.join(CLUSTERERS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of every clusterer")
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

    if args.embeddings.suffix == ".npz":
        with np.load(args.embeddings) as f:
            missing = sorted({"embeddings", "labels"} - set(f.files))
            if missing:
                raise ValueError(f"{args.embeddings}: no {' or '.join(missing)} array")
            x, y = f["embeddings"].astype(np.float32), np.asarray(f["labels"])
    elif args.data is None or args.labels is None:
        raise ValueError("a .npy file needs --data and --labels")
    else:
        x = np.load(args.embeddings).astype(np.float32)
        y = np.asarray(AudioFolder(args.data, labels=args.labels).targets)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"{args.embeddings}: {x.shape} embeddings for {y.size} clips")
    k = int(np.unique(y).size)
    names = [c for c in args.clusterers.split(",") if c]
    unknown = sorted(set(names) - set(CLUSTERERS))
    if unknown:
        raise ValueError(f"unknown clusterer(s) {unknown}; known: {', '.join(CLUSTERERS)}")
    seeds = [int(v) for v in args.seeds.split(",") if v]
    torch.set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for name in names:
            for seed in seeds:
                t0 = time.perf_counter()
                labels, extra = cluster(name, x, k, seed)
                seconds = time.perf_counter() - t0
                s = score_all(y, labels)
                row = {"clusterer": name, "seed": seed, "nmi": round(s.nmi, 4),
                       "ari": round(s.ari, 4), "acc": round(s.acc, 4),
                       "clusters_used": s.n_clusters, "n_clusters": k,
                       "seconds": round(seconds, 1), **extra}
                rows.append(row)
                log(f"{name} seed {seed}: NMI {s.nmi:.3f} ARI {s.ari:.3f} ACC {s.acc:.3f}, "
                    f"{s.n_clusters}/{k} clusters, {seconds:.1f} s")
    return {"embeddings": str(args.embeddings), "name": args.name or args.embeddings.stem,
            "data": str(args.data), "labels": args.labels, "clips": int(y.size),
            "dim": int(x.shape[1]), "n_clusters": k, "seeds": seeds, "rows": rows,
            "machine": machine_info(args.threads)}


def _spread(values: list[float], digits: int = 3) -> str:
    """Mean, and ± half the range over seeds when there are several."""
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """One line per clusterer: mean ± half the range over the seeds."""
    lines = ["| data set | clusterer | NMI | ARI | ACC | clusters used | fit time |",
             "|---|---|---|---|---|---|---|"]
    label = result["name"] + (f" ({result['labels']})" if result["labels"] else "")
    for name in dict.fromkeys(r["clusterer"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["clusterer"] == name]
        used = min(r["clusters_used"] for r in rows)
        lines.append(f"| {label} | {name} | "
                     + " | ".join(_spread([r[m] for r in rows]) for m in ("nmi", "ari", "acc"))
                     + f" | >= {used} of {rows[0]['n_clusters']} | "
                     f"{_spread([r['seconds'] for r in rows], 0)} s |")
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
