"""``--clusters auto``'s rule on labelled embedding files, against their number of classes.

    python bench/choose_k.py runs/emb/*.npz [--synthetic] [--plots DIR] [--json]

Each ``.npz`` holds ``embeddings`` and ``labels`` (``bench/embed.py``). ``--synthetic``
adds Gaussian mixtures of known K (centres ~N(0, I), unit noise, 256-d, 40 points per
cluster). Prints per set: classes, the chosen K, whether it is within ±30 % of the
classes, and the criterion at the chosen K and one past it; ``--plots`` writes each
curve as ``<set>.png`` (:func:`~audioclust.training.nclusters.plot_n_clusters`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import log

SYNTHETIC = ((5, 1), (10, 2), (20, 3))


def main(argv: list[str] | None = None) -> int:
    from audioclust.training.nclusters import choose_n_clusters, plot_n_clusters

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help=".npz files (embeddings, labels)")
    p.add_argument("--synthetic", action="store_true", help="add Gaussian mixtures of known K")
    p.add_argument("--plots", type=Path, help="folder for one PNG per set")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    args = p.parse_args(argv)
    sets: list[tuple[str, np.ndarray, int]] = []
    for f in args.files:
        with np.load(f, allow_pickle=False) as d:
            sets.append((f.stem, d["embeddings"], int(np.unique(d["labels"]).size)))
    if args.synthetic:
        for k, seed in SYNTHETIC:
            rng = np.random.default_rng(seed)
            y = np.repeat(np.arange(k), 40)
            x = rng.standard_normal((k, 256))[y] + rng.standard_normal((y.size, 256))
            sets.append((f"gaussians-{k}", x, k))
    rows = []
    for name, x, classes in sets:
        log(f"{name} ...")
        t0 = time.perf_counter()
        k, scores = choose_n_clusters(x)
        rows.append({"set": name, "n": int(x.shape[0]), "classes": classes, "chosen": k,
                     "within_30pct": bool(abs(k - classes) <= 0.3 * classes),
                     "share_at_k": scores.get(k), "share_at_k_plus_1": scores.get(k + 1),
                     "seconds": round(time.perf_counter() - t0, 1), "curve": scores})
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_n_clusters(scores, k, args.plots / f"{name}.png",
                            f"{name}: {classes} classes, K = {k}")
    if args.json:
        print(json.dumps(rows))
    else:
        print("| set | n | classes | chosen K | within ±30 % | share at K | at K + 1 | s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['set']} | {r['n']} | {r['classes']} | {r['chosen']} | "
                  f"{'yes' if r['within_30pct'] else 'no'} | {r['share_at_k']:.2f} | "
                  f"{r['share_at_k_plus_1']:.2f} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
