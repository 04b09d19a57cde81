"""Head fit time against data size, on synthetic embeddings (issue 12: TEMI on 3,000
precomputed embeddings under 2 minutes, on 30,000 under 10).

For each size n: a mixture of ``--clusters`` Gaussians in ``--dim`` dimensions (centres
N(0, 4 I), unit-variance noise scaled by ``--spread``), then each method with its
defaults (the estimators ``audioclust-train head`` runs) on one thread. Reports wall and
CPU seconds, the run plan the rules chose (batch, epochs, steps, k), NMI against the
mixture's labels and clusters used. JSON on stdout.

    python bench/heads_scale.py --sizes 3000,30000 --methods temi --out runs/bench/scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from benchlib import log, machine_info, write_json


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_ints, default=[3000, 30000], help="comma-separated n")
    p.add_argument("--dim", type=int, default=512, help="embedding width")
    p.add_argument("--clusters", type=int, default=10, help="K")
    p.add_argument("--spread", type=float, default=0.5, help="noise std per dimension")
    p.add_argument("--methods", default="temi", help="comma-separated temi,spice,deepcluster")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def mixture(n: int, dim: int, k: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 2.0
    y = rng.integers(k, size=n)
    x = centres[y] + spread * rng.standard_normal((n, dim))
    return x.astype(np.float32), y


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    from audioclust.training.heads.deepcluster import DeepCluster
    from audioclust.training.heads.spice import SPICE
    from audioclust.training.heads.temi import TEMI
    from audioclust.training.metrics import nmi

    classes = {"temi": TEMI, "spice": SPICE, "deepcluster": DeepCluster}
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(classes))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(classes)}")
    torch.set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for n in args.sizes:
            x, y = mixture(n, args.dim, args.clusters, args.spread, args.seed)
            for method in methods:
                t0, c0 = time.perf_counter(), time.process_time()
                est = classes[method](args.clusters, seed=args.seed).fit(x)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                h = est.history_
                row = {"method": method, "n": n, "dim": args.dim, "clusters": args.clusters,
                       "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                       "plan": h.get("plan"), "k_neighbors": h.get("k_neighbors"),
                       "knn_seconds": h.get("knn_seconds"),
                       "nmi": round(nmi(y, est.labels_), 4),
                       "clusters_used": int(np.unique(est.labels_).size)}
                rows.append(row)
                log(f"{method} n={n}: {wall:.0f} s wall, {cpu:.0f} s CPU, NMI {row['nmi']:.3f}, "
                    f"plan {row['plan']}")
    return {"rows": rows, "machine": machine_info(args.threads)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(result, args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
