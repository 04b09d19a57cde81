"""``audioclust-eval``: score clusterings of a labelled audio folder.

Subcommands:

- ``baselines``: the research notes' grid (features x reducer x clusterer) on fixed-size
  clip features, optionally with encoder embeddings as extra features (``--encoder``);
  writes a markdown table, JSON rows, a confusion matrix and a 2-D map.
- ``encoder``: an encoder (a trained checkpoint or a pretrained model, any encoder spec)
  beside a randomly initialised one of the same architecture: k-means/agglomerative
  clustering of the embeddings (raw and PCA) and a linear probe (logistic regression,
  stratified k-fold); same report files. An onnx: encoder has no random counterpart.
- ``head``: a trained clustering head (``audioclust-train head``): NMI/ARI/ACC of each of
  its heads and of the selected one beside k-means on the same embeddings, after checking
  the encoder is the one the head was trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from audioclust.models.cli import HelpFormatter, UserError, comma_list, run_command
from audioclust.models.config import build_config
from audioclust.models.encoder_spec import (
    WaveformEncoder,
    add_encoder_arguments,
    checkpoint_name,
    encoder_from_args,
)
from audioclust.training.baselines import (
    CLUSTERERS,
    REDUCERS,
    BaselineConfig,
    BaselineRow,
    reduce,
    run_grid,
)
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import FEATURE_KINDS, embed_dataset, extract
from audioclust.training.options import (
    cache_dir_from,
    cache_options,
    data_options,
    output_options,
    seed_options,
)
from audioclust.training.probe import check_folds, linear_probe
from audioclust.training.report import markdown_table, plot_cluster_map, plot_confusion

PROG = "audioclust-eval"
ROW_KEYS = ("features", "reducer", "clusterer", "n_clusters", "nmi", "ari", "acc", "seconds")
# Encoder evaluation clusters with the methods that take k, on raw and PCA-reduced
# embeddings: t-SNE, DBSCAN and mean-shift add their own failure modes, not encoder signal.
ENCODER_GRID = BaselineConfig(reducers=("none", "pca"), clusterers=("kmeans", "agglomerative"))


@dataclass(frozen=True)
class BaselinesRun:
    """What ``audioclust-eval baselines`` runs; the ``[baselines]`` table of ``--config``."""

    features: tuple[str, ...] = FEATURE_KINDS
    encoders: tuple[str, ...] = ()  # encoder specs whose embeddings join the grid
    grid: BaselineConfig = field(default_factory=BaselineConfig)
    sample_rate: int = 16000
    cache_dir: str | None = None


def encoder_feature_names(paths: Sequence[str | Path | WaveformEncoder]) -> list[str]:
    """Feature names ``encoder:<name>`` (a checkpoint's name, or the pretrained kind),
    made unique within ``paths``."""
    names: list[str] = []
    for p in paths:
        name = p.name if isinstance(p, WaveformEncoder) else checkpoint_name(p)
        base, i = f"encoder:{name}", 2
        unique = base
        while unique in names:
            unique, i = f"{base}-{i}", i + 1
        names.append(unique)
    return names


def _logger(args: argparse.Namespace) -> Callable[..., None]:
    """Progress lines go to stderr; only ``--json --quiet`` silences them."""
    if args.json and args.quiet:
        return lambda *a: None
    return lambda *a: print(*a, file=sys.stderr)


def _labelled_dataset(args: argparse.Namespace, sample_rate: int) -> AudioFolder:
    if args.labels == "none":
        raise UserError(f"{args.command}: scoring needs labels; give --labels "
                        "folder|digit|speaker|csv:FILE")
    dataset = AudioFolder(args.data, labels=args.labels, sample_rate=sample_rate)
    if len(dataset.class_names) < 2:
        raise UserError(f"{args.data}: need at least 2 classes to score, found "
                        f"{len(dataset.class_names)}")
    return dataset


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
        formatter_class=HelpFormatter,
        parents=[data_options(labels=True),
                 output_options(out=Path("runs/baselines"), what="report", json_help="the rows"),
                 seed_options("random seed for k-means, PCA and t-SNE"),
                 cache_options("feature")],
    )
    p.add_argument("--config", type=Path, help="TOML/YAML file with a [baselines] table")
    p.add_argument("--features", type=comma_list(FEATURE_KINDS), help="feature kinds to run")
    add_encoder_arguments(
        p, action="append", required=False,
        help="also cluster this encoder's embeddings (repeatable; rows are named "
        "encoder:<file stem, folder for encoder.safetensors, or the kind>)")
    p.add_argument("--reducers", type=comma_list(REDUCERS), help="reducers to run")
    p.add_argument("--clusterers", type=comma_list(CLUSTERERS), help="clusterers to run")
    p.set_defaults(func=_baselines)


def _baselines(args: argparse.Namespace) -> int:
    grid_over = {"reducers": args.reducers, "clusterers": args.clusterers, "seed": args.seed}
    run = build_config(
        BaselinesRun,
        args.config,
        {
            "features": args.features,
            "encoders": tuple(map(str, args.encoder)) if args.encoder else None,
            "cache_dir": cache_dir_from(args),
            "grid": {k: v for k, v in grid_over.items() if v is not None},
        },
        section="baselines",
    )
    bad = [f for f in run.features if f not in FEATURE_KINDS]
    if bad:
        raise UserError(f"unknown features {bad}; known: {', '.join(FEATURE_KINDS)}")
    # A bad encoder fails now, not after feature extraction.
    encoders = [encoder_from_args(spec, args) for spec in run.encoders]
    dataset = _labelled_dataset(args, run.sample_rate)
    log = _logger(args)
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({args.labels})")

    t0 = time.perf_counter()
    # Encoders first: one that cannot run fails before the log-mel pass. Each decodes the
    # folder at its own rate (same clips, same order).
    embedded = {
        name: embed_dataset(
            dataset if enc.sample_rate == dataset.sample_rate
            else _labelled_dataset(args, enc.sample_rate),
            enc,
            cache_dir=run.cache_dir,
            progress=not args.quiet,
            on_cache=lambda p, hit, n=name: log(
                f"{n}: embeddings " + ("from cache " if hit else "cached in ") + str(p)),
        )
        for name, enc in zip(encoder_feature_names(encoders), encoders, strict=True)
    }
    feats = extract(
        dataset,
        kinds=run.features,  # type: ignore[arg-type]
        cache_dir=run.cache_dir,
        progress=not args.quiet,
        on_cache=lambda p, hit: log(("features from cache " if hit else "features cached in ")
                                    + str(p)),
    )
    feats.update(embedded)  # rows: log-mel/MFCC first, then encoders in command-line order
    log(f"features ready in {time.perf_counter() - t0:.1f} s")

    y = dataset.targets
    g = run.grid
    total = len(feats) * len(g.reducers) * len(g.clusterers)
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
        "config": {"features": list(run.features), "encoders": list(run.encoders),
                   "grid": g.__dict__},
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


def _add_encoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoder",
        help="trained or pretrained vs randomly initialised encoder: clustering and linear "
        "probe",
        description=(
            "Embed every clip of a labelled folder with the encoder (a checkpoint from "
            "audioclust-train, or a pretrained model: aisfx, panns:FILE, byola:FILE, "
            "onnx:FILE, hf:DIR) and with a randomly initialised encoder of the same "
            "architecture (same frontend and normalisation; none for onnx:). For both: "
            "k-means and agglomerative clustering of the raw and PCA-reduced embeddings "
            "(k = number of classes; NMI, ARI, Hungarian accuracy), and linear-probe "
            "accuracy (logistic regression on standardised embeddings, stratified k-fold, "
            "mean +- std). Embeddings are cached on disk, keyed on the encoder's content."
        ),
        formatter_class=HelpFormatter,
        parents=[data_options(labels=True),
                 output_options(out=Path("runs/encoder-eval"), what="report",
                                json_help="the results"),
                 seed_options("seed of the random encoder, k-means, PCA, t-SNE and the fold "
                              "split", default=0),
                 cache_options("embedding")],
    )
    add_encoder_arguments(p, "--encoder", "--checkpoint", dest="encoder",
                          help="the encoder to evaluate")
    p.add_argument("--folds", type=int, default=5, help="linear-probe cross-validation folds")
    p.add_argument("--batch-size", type=int, default=64, help="clips per forward pass")
    p.set_defaults(func=_encoder)


def _encoder(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    enc = encoder_from_args(args.encoder, args)
    # Decode audio at the rate the encoder takes.
    dataset = _labelled_dataset(args, enc.sample_rate)
    y = dataset.targets
    check_folds(y, args.folds, "--folds")  # before minutes of embedding, not after
    log = _logger(args)
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({args.labels}); "
        f"{enc.description['name']} encoder from {args.encoder}")

    name = enc.name
    grid = dataclasses.replace(ENCODER_GRID, seed=args.seed)
    variants: dict[str, tuple[str, int | None]] = {"trained": (f"encoder:{name}", None)}
    if enc.randomise is not None:
        variants["random"] = (f"random:{name}", args.seed)
    else:
        log(f"{enc.kind} encoder: no randomly initialised counterpart to compare with")
    results: dict[str, dict] = {}
    embeddings: dict[str, np.ndarray] = {}
    best_rows: dict[str, BaselineRow] = {}
    for variant, (features, random_init) in variants.items():
        t0 = time.perf_counter()
        x = embed_dataset(
            dataset,
            enc,
            random_init=random_init,
            cache_dir=cache_dir_from(args),
            progress=not args.quiet,
            batch_size=args.batch_size,
            on_cache=lambda p, hit, v=variant: log(
                f"{v}: embeddings " + ("from cache " if hit else "cached in ") + str(p)),
        )
        log(f"{variant}: {x.shape[1]}-d embeddings in {time.perf_counter() - t0:.1f} s")
        rows = [row for row, _ in run_grid({features: x}, y, grid)]
        probe = linear_probe(x, y, args.folds, args.seed, log=lambda s, v=variant: log(
            f"{v}: {s}"))
        log(f"{variant}: linear probe {probe.mean:.3f} +- {probe.std:.3f}, best clustering "
            f"ACC {max(r.acc for r in rows):.3f}")
        embeddings[variant] = x
        # Accuracy picks the best row, as in `baselines`.
        best_rows[variant] = max(rows, key=lambda r: (r.acc, r.nmi))
        results[variant] = {
            "features": features,
            "random_init": random_init,
            "rows": [r.to_dict() for r in rows],
            "linear_probe": probe.to_dict(),
        }

    report = {
        "checkpoint": str(args.encoder),
        "kind": enc.kind,
        "sha256": enc.sha256,
        "encoder": enc.description["name"],
        "embed_dim": int(embeddings["trained"].shape[1]),
        "info": enc.info,
        "data": str(args.data),
        "labels": args.labels,
        "clips": len(dataset),
        "classes": dataset.class_names,
        "folds": args.folds,
        "seed": args.seed,
        **results,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder-eval.json").write_text(json.dumps(report, indent=2))
    text = _encoder_markdown(report)
    (out / "encoder-eval.md").write_text(text)

    best = best_rows["trained"]
    title = (f"{best.features}/{best.reducer}/{best.clusterer}: "
             f"NMI {best.nmi:.2f} ACC {best.acc:.2f}")
    plot_confusion(y, best.labels, dataset.class_names, out / "confusion.png", title)
    plot_cluster_map(reduce(embeddings["trained"], "tsne", grid), best.labels, y,
                     out / "map.png", title)

    if args.json:
        for variant in variants:  # stdout rows share the `baselines` row schema
            report[variant]["rows"] = [{k: r[k] for k in ROW_KEYS}
                                       for r in report[variant]["rows"]]
        print(json.dumps(report))
    else:
        print(text, end="")
        print(f"\nbest (trained): {title}\nreport: {out}/ (encoder-eval.md, encoder-eval.json, "
              "confusion.png, map.png)")
    return 0


def _encoder_markdown(report: dict) -> str:
    """Linear probe and clustering scores, trained and random side by side."""
    label = "pretrained" if report.get("kind", "checkpoint") != "checkpoint" else "trained"
    labels = [("trained", label)]
    if report.get("random"):
        labels.append(("random", f"random init (seed {report['random']['random_init']})"))
    probe_rows = [
        {
            "encoder": name,
            "accuracy": report[v]["linear_probe"]["mean"],
            "std": report[v]["linear_probe"]["std"],
            "per fold": ", ".join(f"{a:.3f}" for a in report[v]["linear_probe"]["folds"]),
        }
        for v, name in labels
    ]
    by_row = {v: {(r["reducer"], r["clusterer"]): r for r in report[v]["rows"]}
              for v, _ in labels}
    short = {"trained": label, "random": "random"}
    side = []
    for r in report["trained"]["rows"]:
        key = (r["reducer"], r["clusterer"])
        side.append({"reducer": r["reducer"], "clusterer": r["clusterer"],
                     **{f"{m} {short[v]}": by_row[v][key][m] for m in ("nmi", "ari", "acc")
                        for v, _ in labels}})
    cols = ("reducer", "clusterer", *(f"{m} {short[v]}" for m in ("nmi", "ari", "acc")
                                      for v, _ in labels))
    return (
        f"# Encoder evaluation: {report['checkpoint']}\n\n"
        f"{report['encoder']} ({report['embed_dim']}-d), sha256 {report['sha256'][:12]}; "
        f"data {report['data']} (labels: {report['labels']}, {report['clips']} clips, "
        f"{len(report['classes'])} classes)\n\n"
        f"Training info: `{json.dumps(report['info'], sort_keys=True)}`\n\n"
        f"## Linear probe\n\nLogistic regression on standardised embeddings, "
        f"{report['folds']}-fold stratified cross-validation (mean, std over folds).\n\n"
        f"{markdown_table(probe_rows, ('encoder', 'accuracy', 'std', 'per fold'))}\n"
        f"## Clustering\n\nk = number of classes; standardised embeddings, raw or PCA "
        f"({ENCODER_GRID.pca_variance:.0%} of the variance).\n\n{markdown_table(side, cols)}"
    )


# --- clustering heads -------------------------------------------------------------------

HEAD_ROW_KEYS = ("clusterer", "n_clusters", "clusters_used", "nmi", "ari", "acc", "purity")


def _add_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "head",
        help="a trained clustering head: every head's and the selected head's scores vs k-means",
        description=(
            "Embed every clip of a labelled folder with the encoder, assign clusters with "
            "each head of the checkpoint (argmax of its logits) and with the selected head, "
            "and score them (NMI, ARI, Hungarian accuracy, purity) beside k-means with the "
            "head's K on the same (standardised) embeddings. The encoder must be the one the "
            "head was trained on (its SHA-256 is checked). Writes head-eval.json, "
            "head-eval.md, a confusion matrix and a 2-D (t-SNE) map of the selected head."
        ),
        formatter_class=HelpFormatter,
        parents=[data_options(labels=True),
                 output_options(out=Path("runs/head-eval"), what="report",
                                json_help="the results"),
                 seed_options("seed of k-means and t-SNE", default=0),
                 cache_options("embedding")],
    )
    p.add_argument("--head", required=True, type=Path,
                   help="head checkpoint (head.safetensors from `audioclust-train head`)")
    add_encoder_arguments(p, help="the encoder the head was trained on")
    p.add_argument("--batch-size", type=int, default=64, help="clips per forward pass")
    p.set_defaults(func=_head)


def _head_row(name: str, y: np.ndarray, pred: np.ndarray, k: int) -> dict:
    from audioclust.training.metrics import score_all

    s = score_all(y, pred)
    return {"clusterer": name, "n_clusters": k, "clusters_used": s.n_clusters,
            **{m: round(getattr(s, m), 4) for m in ("nmi", "ari", "acc", "purity")}}


def _head(args: argparse.Namespace) -> int:
    import torch

    from audioclust.models.heads import load_head, read_head_metadata
    from audioclust.training.kmeans import KMeans

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    meta = read_head_metadata(args.head)
    enc = encoder_from_args(args.encoder, args)
    log = _logger(args)
    if not meta["encoder_sha256"]:
        log(f"warning: {args.head} records no encoder SHA-256; cannot check it matches "
            f"{args.encoder}")
    elif meta["encoder_sha256"] != enc.sha256:
        raise UserError(
            f"{args.head} was trained on the encoder with SHA-256 "
            f"{meta['encoder_sha256'][:12]}..., but {args.encoder} is "
            f"{enc.sha256[:12]}...: pass the encoder the head was trained with")
    head = load_head(args.head)
    config = head.config
    dataset = _labelled_dataset(args, enc.sample_rate)
    y = dataset.targets
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({args.labels}); "
        f"{meta['method']} head, {config.n_heads} heads x {config.n_clusters} clusters")

    x = embed_dataset(
        dataset, enc, cache_dir=cache_dir_from(args),
        progress=not args.quiet, batch_size=args.batch_size,
        on_cache=lambda p, hit: log(("embeddings from cache " if hit else
                                     "embeddings cached in ") + str(p)))
    if x.shape[1] != config.in_dim:
        raise UserError(f"{args.head} takes {config.in_dim}-d embeddings, {args.encoder} "
                        f"gives {x.shape[1]}-d")
    with torch.no_grad():
        preds = head.all_logits(torch.from_numpy(x)).argmax(-1).numpy()  # (H, n)
    selected = int(head.selected)
    k = config.n_clusters
    rows = [_head_row(f"head {h}" + (" (selected)" if h == selected else ""), y, p, k)
            for h, p in enumerate(preds)]
    selected_row = {**rows[selected], "clusterer": f"{meta['method']} (head {selected})"}
    # k-means on the same embeddings, standardised as in `baselines`; with the head's K,
    # and with the number of classes when that differs.
    z = StandardScaler().fit_transform(x.astype(np.float64))
    kmeans_rows, kmeans_labels = [], None
    for kk in dict.fromkeys((k, len(dataset.class_names))):
        labels = KMeans(kk, n_init=10, random_state=args.seed).fit_predict(z)
        kmeans_rows.append(_head_row(f"k-means (k={kk})", y, labels, kk))
        kmeans_labels = labels if kmeans_labels is None else kmeans_labels

    report = {
        "head": str(args.head),
        "method": meta["method"],
        "encoder": str(args.encoder),
        "encoder_sha256": enc.sha256,
        "data": str(args.data),
        "labels": args.labels,
        "clips": len(dataset),
        "classes": dataset.class_names,
        "n_clusters": k,
        "n_heads": config.n_heads,
        "selected": selected,
        "head_info": meta["info"],
        "selected_scores": selected_row,
        "heads": rows,
        "kmeans": kmeans_rows,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "head-eval.json").write_text(json.dumps(report, indent=2))
    table = markdown_table([selected_row, *kmeans_rows, *rows], HEAD_ROW_KEYS)
    text = (f"# Head evaluation: {args.head}\n\n{meta['method']} head ({config.n_heads} heads, "
            f"K = {k}, head {selected} selected) on {args.encoder} (sha256 "
            f"{enc.sha256[:12]}); data {args.data} (labels: {args.labels}, "
            f"{len(dataset)} clips, {len(dataset.class_names)} classes)\n\n{table}")
    (out / "head-eval.md").write_text(text)
    s = selected_row
    title = f"{meta['method']} head {selected}: NMI {s['nmi']:.2f} ACC {s['acc']:.2f}"
    plot_confusion(y, preds[selected], dataset.class_names, out / "confusion.png", title)
    xy = reduce(x, "tsne", BaselineConfig(seed=args.seed))
    plot_cluster_map(xy, preds[selected], y, out / "map.png", title)

    if args.json:
        print(json.dumps(report))
    else:
        print(text, end="")
        print(f"\nreport: {out}/ (head-eval.md, head-eval.json, confusion.png, map.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate audio clustering against reference labels (NMI, ARI, accuracy).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_baselines(sub)
    _add_encoder(sub)
    _add_head(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
