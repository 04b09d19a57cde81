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

Each command builds its settings from the flags, calls the library function of
``training/evaluation.py`` (which returns a report and writes nothing) and passes the report
to its writer here (``write_baselines``, ``write_encoder``, ``write_head``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from audioclust.models.cli import HelpFormatter, comma_list, run_command
from audioclust.models.config import build_config
from audioclust.models.encoder_spec import add_encoder_arguments, encoder_from_args
from audioclust.training.baselines import CLUSTERERS, REDUCERS
from audioclust.training.evaluation import (
    ENCODER_GRID,
    HEAD_ROW_KEYS,
    ROW_KEYS,
    BaselinesReport,
    BaselinesRun,
    EncoderEval,
    EncoderReport,
    HeadEval,
    HeadReport,
    check_features,
    evaluate_baselines,
    evaluate_encoder,
    evaluate_head,
)
from audioclust.training.features import FEATURE_KINDS
from audioclust.training.options import (
    cache_dir_from,
    cache_options,
    data_options,
    output_options,
    seed_options,
)
from audioclust.training.report import markdown_table, plot_cluster_map, plot_confusion

PROG = "audioclust-eval"


def _logger(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines go to stderr; only ``--json --quiet`` silences them."""
    if args.json and args.quiet:
        return lambda *a: None
    return lambda *a: print(*a, file=sys.stderr)


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
    check_features(run)
    # A bad encoder fails now, not after feature extraction.
    encoders = [encoder_from_args(spec, args) for spec in run.encoders]
    report = evaluate_baselines(run, args.data, args.labels, encoders, log=_logger(args),
                                progress=not args.quiet)
    write_baselines(report, args.out, as_json=args.json)
    return 0


def _stream(stream: TextIO | None) -> TextIO:
    return sys.stdout if stream is None else stream


def write_baselines(report: BaselinesReport, out: Path, *, as_json: bool = False,
                    stream: TextIO | None = None) -> None:
    """``baselines.json``, ``baselines.md``, ``confusion.png`` and ``map.png`` in ``out``;
    the table (or ``--json``'s rows) on ``stream`` (default stdout)."""
    stream = _stream(stream)
    out.mkdir(parents=True, exist_ok=True)
    record = report.record()
    (out / "baselines.json").write_text(json.dumps(record, indent=2))
    table = markdown_table(record["rows"], (*ROW_KEYS[:7], "purity", "seconds"))
    (out / "baselines.md").write_text(
        f"# Baselines: {report.data} (labels: {report.labels}, {report.clips} clips)\n\n{table}"
    )
    best, title = report.best, report.title
    plot_confusion(report.targets, best.labels, report.classes, out / "confusion.png", title)
    plot_cluster_map(report.map_xy, best.labels, report.targets, out / "map.png", title)
    if as_json:
        print(json.dumps(report.to_dict()), file=stream)
    else:
        print(table, end="", file=stream)
        print(f"\nbest: {title}\nreport: {out}/ (baselines.md, baselines.json, confusion.png, "
              "map.png)", file=stream)


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
    settings = EncoderEval(folds=args.folds, seed=args.seed, batch_size=args.batch_size,
                           cache_dir=cache_dir_from(args))
    enc = encoder_from_args(args.encoder, args)
    report = evaluate_encoder(enc, args.encoder, args.data, args.labels, settings,
                              log=_logger(args), progress=not args.quiet)
    write_encoder(report, args.out, as_json=args.json)
    return 0


def write_encoder(report: EncoderReport, out: Path, *, as_json: bool = False,
                  stream: TextIO | None = None) -> None:
    """``encoder-eval.json``, ``encoder-eval.md``, ``confusion.png`` and ``map.png`` in
    ``out``; the markdown (or ``--json``'s results) on ``stream`` (default stdout)."""
    stream = _stream(stream)
    out.mkdir(parents=True, exist_ok=True)
    record = report.record()
    (out / "encoder-eval.json").write_text(json.dumps(record, indent=2))
    text = _encoder_markdown(record)
    (out / "encoder-eval.md").write_text(text)
    title = report.title
    plot_confusion(report.targets, report.best.labels, report.classes, out / "confusion.png",
                   title)
    plot_cluster_map(report.map_xy, report.best.labels, report.targets, out / "map.png", title)
    if as_json:
        print(json.dumps(report.to_dict()), file=stream)
    else:
        print(text, end="", file=stream)
        print(f"\nbest (trained): {title}\nreport: {out}/ (encoder-eval.md, encoder-eval.json, "
              "confusion.png, map.png)", file=stream)


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


def _head(args: argparse.Namespace) -> int:
    from audioclust.models.heads import read_head_metadata

    settings = HeadEval(seed=args.seed, batch_size=args.batch_size,
                        cache_dir=cache_dir_from(args))
    meta = read_head_metadata(args.head)  # a bad head file fails before the encoder opens
    enc = encoder_from_args(args.encoder, args)
    report = evaluate_head(args.head, enc, args.encoder, args.data, args.labels, settings,
                           meta, log=_logger(args), progress=not args.quiet)
    write_head(report, args.out, as_json=args.json)
    return 0


def write_head(report: HeadReport, out: Path, *, as_json: bool = False,
               stream: TextIO | None = None) -> None:
    """``head-eval.json``, ``head-eval.md``, ``confusion.png`` and ``map.png`` in ``out``;
    the markdown (or ``--json``'s results) on ``stream`` (default stdout)."""
    stream = _stream(stream)
    out.mkdir(parents=True, exist_ok=True)
    record = report.to_dict()
    (out / "head-eval.json").write_text(json.dumps(record, indent=2))
    table = markdown_table([report.selected_scores, *report.kmeans, *report.heads],
                           HEAD_ROW_KEYS)
    text = (f"# Head evaluation: {report.head}\n\n{report.method} head ({report.n_heads} "
            f"heads, K = {report.n_clusters}, head {report.selected} selected) on "
            f"{report.encoder} (sha256 {report.encoder_sha256[:12]}); data {report.data} "
            f"(labels: {report.labels}, {report.clips} clips, {len(report.classes)} "
            f"classes)\n\n{table}")
    (out / "head-eval.md").write_text(text)
    title = report.title
    plot_confusion(report.targets, report.predictions, report.classes, out / "confusion.png",
                   title)
    plot_cluster_map(report.map_xy, report.predictions, report.targets, out / "map.png", title)
    if as_json:
        print(json.dumps(record), file=stream)
    else:
        print(text, end="", file=stream)
        print(f"\nreport: {out}/ (head-eval.md, head-eval.json, confusion.png, map.png)",
              file=stream)


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
