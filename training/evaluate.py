"""``audioclust-eval``: score clusterings of a labelled audio folder.

Subcommands:

- ``baselines``: the research notes' grid (features x reducer x clusterer) on fixed-size
  clip features; writes a markdown table, JSON rows, a confusion matrix and a 2-D map.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from audioclust.models.cli import UserError, comma_list, run_command
from audioclust.models.config import build_config
from audioclust.training.baselines import (
    CLUSTERERS,
    REDUCERS,
    BaselineConfig,
    BaselineRow,
    reduce,
    run_grid,
)
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import FEATURE_KINDS, extract
from audioclust.training.report import markdown_table, plot_cluster_map, plot_confusion

PROG = "audioclust-eval"
ROW_KEYS = ("features", "reducer", "clusterer", "n_clusters", "nmi", "ari", "acc", "seconds")


@dataclass(frozen=True)
class BaselinesRun:
    """What ``audioclust-eval baselines`` runs; the ``[baselines]`` table of ``--config``."""

    features: tuple[str, ...] = FEATURE_KINDS
    grid: BaselineConfig = field(default_factory=BaselineConfig)
    sample_rate: int = 16000
    cache_dir: str | None = None


def _add_baselines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baselines",
        help="classical clustering grid on log-mel/MFCC clip features",
        description=(
            "Cluster every clip of a labelled folder with each combination of features "
            f"({', '.join(FEATURE_KINDS)}), reducer ({', '.join(REDUCERS)}) and clusterer "
            f"({', '.join(CLUSTERERS)}); score by NMI, ARI and Hungarian accuracy. Methods "
            "that take k get the number of classes; the others use label-free rules "
            "(see docs or training/baselines.py). Features are cached on disk."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="folder of audio clips")
    p.add_argument(
        "--labels",
        required=True,
        help="where labels come from: folder, digit, speaker (FSDD names) or csv:FILE",
    )
    p.add_argument("--out", type=Path, default=Path("runs/baselines"), help="report folder")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    p.add_argument("--config", type=Path, help="TOML/YAML file with a [baselines] table")
    p.add_argument("--features", type=comma_list(FEATURE_KINDS), help="feature kinds to run")
    p.add_argument("--reducers", type=comma_list(REDUCERS), help="reducers to run")
    p.add_argument("--clusterers", type=comma_list(CLUSTERERS), help="clusterers to run")
    p.add_argument("--seed", type=int, help="random seed for k-means, PCA and t-SNE")
    p.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/audioclust)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_baselines)


def _baselines(args: argparse.Namespace) -> int:
    grid_over = {"reducers": args.reducers, "clusterers": args.clusterers, "seed": args.seed}
    run = build_config(
        BaselinesRun,
        args.config,
        {
            "features": args.features,
            "cache_dir": "" if args.no_cache else args.cache_dir,
            "grid": {k: v for k, v in grid_over.items() if v is not None},
        },
        section="baselines",
    )
    bad = [f for f in run.features if f not in FEATURE_KINDS]
    if bad:
        raise UserError(f"unknown features {bad}; known: {', '.join(FEATURE_KINDS)}")
    if args.labels == "none":
        raise UserError("baselines are scored against labels: give --labels")
    dataset = AudioFolder(args.data, labels=args.labels, sample_rate=run.sample_rate)
    if len(dataset.class_names) < 2:
        raise UserError(f"{args.data}: need at least 2 classes to score, found "
                        f"{len(dataset.class_names)}")
    log = (lambda *a: None) if args.json and args.quiet else (
        lambda *a: print(*a, file=sys.stderr))
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({args.labels})")

    t0 = time.perf_counter()
    feats = extract(
        dataset,
        kinds=run.features,  # type: ignore[arg-type]
        cache_dir=run.cache_dir,
        progress=not args.quiet,
        on_cache=lambda p, hit: log(("features from cache " if hit else "features cached in ")
                                    + str(p)),
    )
    log(f"features ready in {time.perf_counter() - t0:.1f} s")

    y = dataset.targets
    g = run.grid
    total = len(run.features) * len(g.reducers) * len(g.clusterers)
    rows: list[BaselineRow] = []
    reduced: dict[tuple[str, str], np.ndarray] = {}
    with tqdm(total=total, desc="grid", unit="row", disable=args.quiet, file=sys.stderr) as bar:
        for row, z in run_grid(feats, y, g, on_step=lambda s: bar.set_postfix_str(s)):
            rows.append(row)
            reduced[(row.features, row.reducer)] = z
            bar.update()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dicts = [r.to_dict() for r in rows]
    meta = {
        "data": str(args.data),
        "labels": args.labels,
        "clips": len(dataset),
        "classes": dataset.class_names,
        "config": {"features": list(run.features), "grid": g.__dict__},
    }
    (out / "baselines.json").write_text(json.dumps({"meta": meta, "rows": dicts}, indent=2))
    table = markdown_table(dicts, (*ROW_KEYS[:7], "purity", "seconds"))
    (out / "baselines.md").write_text(
        f"# Baselines: {args.data} (labels: {args.labels}, {len(dataset)} clips)\n\n{table}"
    )
    # Accuracy picks the best row: NMI rewards over-clustering (DBSCAN's dozens of clusters).
    best = max(rows, key=lambda r: (r.acc, r.nmi))
    title = (f"{best.features}/{best.reducer}/{best.clusterer}: "
             f"NMI {best.nmi:.2f} ACC {best.acc:.2f}")
    plot_confusion(y, best.labels, dataset.class_names, out / "confusion.png", title)
    xy = reduced.get((best.features, "tsne"))
    if xy is None:
        xy = reduce(feats[best.features], "tsne", g)
    plot_cluster_map(xy, best.labels, y, out / "map.png", title)

    if args.json:
        print(json.dumps([{k: d[k] for k in ROW_KEYS} for d in dicts]))
    else:
        print(table, end="")
        print(f"\nbest: {title}\nreport: {out}/ (baselines.md, baselines.json, confusion.png, "
              "map.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate audio clustering against reference labels (NMI, ARI, accuracy).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_baselines(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
