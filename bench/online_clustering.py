"""Online clustering of embedding streams: the open-set clusterer against river's.

    python bench/online_clustering.py runs/emb/fsdd-speaker-slicer.npz [more.npz ...]
        [--orders shuffled,grouped] [--algorithms openset,dbstream,...] [--limit N]
        [--json] [--out FILE.json]

Each ``.npz`` holds ``embeddings`` (n, d) and ``labels`` (n,) (``bench/embed.py`` writes
them for any encoder). Every algorithm sees the same stream of windows, one at a time, in
two orders: ``shuffled`` (a fixed random permutation) and ``grouped`` (label after label,
the way a stream moves from one sound to the next). Per window it learns the window, then
says its cluster, as the service writes a record; NMI is computed between those online
answers and the labels.

- ``openset``: the head-free mode's clustering (the stream's running space,
  :class:`~audioclust.stream.openset.StreamSpace`, then
  :class:`~audioclust.stream.openset.OpenSetClusterer`), with the reference an export
  would build from the same embeddings (its cluster scale by ``--clusters auto``'s rule):
  transductive, as the heads are. ``openset-service`` is the whole head-free window of
  the service (:class:`~audioclust.stream.headfree.HeadFreeStream`: also the novelty
  score, the confidence and the drift detectors): the same clusters, its own time.
- river's ``dbstream``, ``denstream``, ``clustream`` and ``streamkmeans`` with their
  documented defaults, K given to the two that take one (CluStream's
  ``n_macro_clusters``, STREAMKMeans' ``n_clusters``); they get the same unit vectors
  (the reference's standardisation, then L2-normalised) as dicts, which is how river
  takes them.
- ``kmeans``: offline scikit-learn k-means given the true K (10 restarts) on the same
  unit vectors: the target the online ones are measured against.
- ``chunks``: no clustering at all, the stream cut into K equal runs of windows in the
  order they come (a new id every n/K windows): the NMI that the order alone earns. In
  ``grouped`` order it is high (labels come in runs), so there an answer that changes over
  time scores without telling sounds apart.

Reported per (file, order, algorithm): NMI, clusters created (ids handed out), the ids
that hold at least 1 % of the windows (what a listener would call the clusters), ms per
window (learn + answer), and the K ``--clusters auto`` finds in the file. ``--limit`` bounds
the windows per file for the slow ones (river's CluStream takes about 0.1 s a window).
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

ALGORITHMS = ("openset", "openset-service", "dbstream", "denstream", "clustream",
              "streamkmeans", "kmeans", "chunks")
ORDERS = ("shuffled", "grouped")
TAKES_K = ("kmeans", "clustream", "streamkmeans", "chunks")


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        if "embeddings" not in f.files or "labels" not in f.files:
            raise ValueError(f"{path}: needs arrays 'embeddings' and 'labels' (bench/embed.py)")
        x, y = f["embeddings"].astype(np.float64), f["labels"]
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{path}: embeddings {x.shape} and labels {y.shape} do not match")
    return x, np.unique(y, return_inverse=True)[1]


def order_of(kind: str, y: np.ndarray, seed: int = 0) -> np.ndarray:
    if kind == "shuffled":
        return np.random.default_rng(seed).permutation(y.size)
    groups = np.random.default_rng(seed).permutation(int(y.max()) + 1)  # label order
    rank = np.argsort(groups)[y]
    return np.lexsort((np.random.default_rng(seed + 1).permutation(y.size), rank))


def _openset(x: np.ndarray, reference: Any) -> tuple[np.ndarray, int, float]:
    """The clustering of the head-free mode: the stream's space, then the clusterer."""
    from audioclust.stream.openset import OpenSetClusterer, StreamSpace

    space = StreamSpace(reference.mean, reference.std)
    clusterer = OpenSetClusterer(reference.dim, reference.cluster_radius,
                                 reference.cluster_similarity)
    out = np.empty(x.shape[0], dtype=np.int64)
    t0 = time.perf_counter()
    for i, z in enumerate(x):
        out[i] = clusterer.learn_one(space.learn_transform(z))
    return out, clusterer.next_id, time.perf_counter() - t0


def _service(x: np.ndarray, reference: Any) -> tuple[np.ndarray, int, float]:
    """The whole head-free window of the service: also novelty, confidence, drift."""
    from audioclust.stream.headfree import HeadFreeStream

    stream = HeadFreeStream(reference)
    out = np.empty(x.shape[0], dtype=np.int64)
    t0 = time.perf_counter()
    for i, z in enumerate(x):
        out[i] = stream.process(z).cluster
    return out, stream.clusterer.next_id, time.perf_counter() - t0


def _river(name: str, units: np.ndarray, k: int) -> tuple[np.ndarray, int, float]:
    from river import cluster

    model = {
        "dbstream": lambda: cluster.DBSTREAM(),
        "denstream": lambda: cluster.DenStream(),
        "clustream": lambda: cluster.CluStream(n_macro_clusters=k, seed=0),
        "streamkmeans": lambda: cluster.STREAMKMeans(n_clusters=k, seed=0),
    }[name]()
    out = np.empty(units.shape[0], dtype=np.int64)
    t0 = time.perf_counter()
    for i, u in enumerate(units):
        features = dict(enumerate(u.tolist()))
        model.learn_one(features)
        label = model.predict_one(features)
        out[i] = -1 if label is None else int(label)
    return out, int(np.unique(out).size), time.perf_counter() - t0


def run_file(path: Path, algorithms: list[str], orders: list[str], limit: int | None,
             seed: int = 0, cache: dict | None = None) -> dict[str, Any]:
    """Rows for one file. ``cache`` keeps each algorithm's answers by stream (the same
    embeddings in the same order, e.g. one FSDD embedding under digit and speaker labels,
    are clustered once)."""
    import hashlib

    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from audioclust.models.reference import NoveltyReference
    from audioclust.training.nclusters import auto_clusters

    x, y = load_embeddings(path)
    if limit is not None and limit < y.size:
        keep = np.sort(np.random.default_rng(seed).choice(y.size, limit, replace=False))
        x, y = x[keep], np.unique(y[keep], return_inverse=True)[1]
    k_true = int(y.max()) + 1
    k_auto, _, rows, found = auto_clusters(x)
    labels = np.full(y.size, -1)
    labels[rows] = found
    reference = NoveltyReference.fit(x, labels, "auto")
    units = reference.unit(x)
    result: dict[str, Any] = {"file": str(path), "windows": int(y.size), "dim": x.shape[1],
                              "classes": k_true, "auto_k": k_auto, "rows": []}
    cache = {} if cache is None else cache
    for order in orders:
        idx = order_of(order, y, seed)
        stream = hashlib.sha256(x[idx].tobytes()).hexdigest()
        for name in algorithms:
            log(f"{path.name} {order} {name} ...")
            key = (stream, name, k_true if name in TAKES_K else 0)
            if key in cache:
                pred, created, seconds = cache[key]
            elif name == "kmeans":
                t0 = time.perf_counter()
                pred = KMeans(k_true, n_init=10, random_state=seed).fit_predict(units[idx])
                seconds, created = time.perf_counter() - t0, k_true
            elif name == "chunks":
                t0 = time.perf_counter()
                pred = np.arange(y.size) * k_true // y.size
                seconds, created = time.perf_counter() - t0, k_true
            elif name == "openset":
                pred, created, seconds = _openset(x[idx], reference)
            elif name == "openset-service":
                pred, created, seconds = _service(x[idx], reference)
            else:
                pred, created, seconds = _river(name, units[idx], k_true)
            cache[key] = pred, created, seconds
            _, sizes = np.unique(pred, return_counts=True)
            result["rows"].append({
                "order": order, "algorithm": name,
                "nmi": round(float(normalized_mutual_info_score(y[idx], pred)), 4),
                "clusters_created": int(created),
                "clusters_1pct": int((sizes >= 0.01 * y.size).sum()),
                "ms_per_window": round(1e3 * seconds / y.size, 4),
            })
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| embeddings | n | classes | auto K | order | algorithm | NMI | clusters "
             "created | ids ≥ 1 % | ms / window |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {Path(r['file']).stem} | {r['windows']} | {r['classes']} | "
                         f"{r['auto_k']} | {row['order']} | {row['algorithm']} | "
                         f"{row['nmi']:.3f} | {row['clusters_created']} | "
                         f"{row['clusters_1pct']} | "
                         f"{row['ms_per_window']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help=".npz files (embeddings, labels)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS),
                   help=f"comma-separated subset of {','.join(ALGORITHMS)}")
    p.add_argument("--orders", default=",".join(ORDERS), help="shuffled, grouped or both")
    p.add_argument("--limit", type=int, help="at most this many windows per file (random)")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of markdown")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    algorithms = [a for a in args.algorithms.split(",") if a]
    orders = [o for o in args.orders.split(",") if o]
    bad = sorted(set(algorithms) - set(ALGORITHMS)) + sorted(set(orders) - set(ORDERS))
    if bad:
        p.error(f"unknown algorithm or order: {', '.join(bad)}")
    try:
        cache: dict = {}
        results = [run_file(f, algorithms, orders, args.limit, cache=cache)
                   for f in args.files]
    except (OSError, ValueError) as exc:
        print(f"online_clustering: error: {exc}", file=sys.stderr)
        return 1
    doc = {"machine": machine_info(1), "results": results}
    if args.out:
        write_json(doc, args.out)
    print(json.dumps(doc) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
