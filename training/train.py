"""``audioclust-train``: train encoders and clustering heads on unlabelled audio.

    audioclust-train ssl --method byola|msn|slicer --data DIR --out DIR [--epochs N] \
        [--init ENCODER]
    audioclust-train head --method temi|spice|deepcluster --encoder ENCODER --data DIR \
        --clusters K|auto --out DIR [--config FILE] [--epochs N] [--seed S] [--json]

ENCODER is any encoder spec (an audioclust checkpoint, aisfx, panns:FILE, byola:FILE,
onnx:FILE, hf:DIR; see ``models/encoder_spec.py``). ``ssl --init`` starts from a log-mel
encoder's weights, frontend and normalisation (a checkpoint, aisfx, panns:, byola:): the
SSL methods train networks on log-mel crops, which an ONNX graph (no gradients here) and
the Hugging Face waveform models (their own inputs) are not; MSN needs the ViT, so the
pretrained CNNs train with byola or slicer.

``ssl`` runs unchanged on one CPU process and under ``torchrun --nproc_per_node N`` (one
process per GPU, or several CPU processes with gloo). ``head`` embeds every clip with the
frozen encoder (cached on disk), trains the heads and writes ``head.safetensors`` (with
the encoder checkpoint's SHA-256), ``history.json`` and ``loss.png``.

``--clusters auto`` picks K before training, by a label-free rule
(:func:`~audioclust.training.nclusters.choose_n_clusters`, on the embeddings as the heads
see them): the K after which k-means starts cutting a cluster whose halves mostly lie
within each other's radius, the same notion of distinct clusters the stream's open-set
clusterer creates and merges by. The criterion of every K is kept in ``history.json``
and drawn in ``n_clusters.png``.

Each command builds its settings, calls the library function (``train_ssl``, ``train_head``:
they write the models and return a report) and hands the report to its writer
(``write_ssl``, ``write_head_training``: report files, the summary on stdout).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from audioclust.models.cli import HelpFormatter, UserError, run_command
from audioclust.models.config import build_config
from audioclust.models.encoder_spec import add_encoder_arguments
from audioclust.models.encoders import ENCODERS
from audioclust.models.errors import ConfigError
from audioclust.training.datasets import AudioFolder
from audioclust.training.nclusters import choose_n_clusters, plot_n_clusters
from audioclust.training.options import (
    cache_dir_from,
    cache_options,
    data_options,
    output_options,
    seed_options,
)
from audioclust.training.ssl.trainer import (
    SSLConfig,
    TrainResult,
    initial_embedder,
    train_ssl,
)

PROG = "audioclust-train"


def _add_ssl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ssl",
        help="self-supervised encoder training (BYOL-A, MSN, SLICER)",
        description=(
            "Train an audio encoder without labels. Writes encoder.safetensors (frontend + "
            "normalisation + encoder: what every other command takes), snapshots in "
            "checkpoints/, state.safetensors for --resume, history.json and loss.png. "
            "Settings come from the defaults, then --config (its [ssl] table), then flags."
        ),
        formatter_class=HelpFormatter,
        parents=[data_options(labels=False),
                 output_options(out=None, what="run", json_help="a summary"),
                 seed_options("random seed (default 0)"),
                 cache_options("log-mel", can_disable=False)],
    )
    p.add_argument("--method", choices=("byola", "msn", "slicer"), help="SSL method "
                   "(default byola)")
    p.add_argument("--epochs", type=int, help="passes over the data (default 30)")
    p.add_argument("--config", type=Path, help="TOML/YAML file with an [ssl] table")
    p.add_argument("--encoder", choices=sorted(ENCODERS), help="architecture (default: "
                   "audiontt; vit for MSN)")
    p.add_argument("--init", metavar="SPEC", help="start from this encoder's weights, "
                   "frontend and normalisation: an audioclust checkpoint, aisfx, aisfx:FILE, "
                   "panns:FILE or byola:FILE (byola and slicer train any of them; msn needs "
                   "a vit checkpoint)")
    p.add_argument("--batch-size", type=int, help="clips per step and process")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the method's)")
    p.add_argument("--crop-frames", type=int, help="training crop length in frames (10 ms)")
    p.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    p.add_argument("--threads", type=int, help="torch threads per process (0: default)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    p.set_defaults(func=_ssl)


def _ssl(args: argparse.Namespace) -> int:
    if args.init is not None and args.encoder is not None:
        raise UserError("--init sets the architecture; leave out --encoder")
    overrides = {
        "method": args.method,
        "init": args.init,
        "epochs": args.epochs,
        "encoder": args.encoder,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "crop_frames": args.crop_frames,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "threads": args.threads,
        "cache_dir": args.cache_dir,
    }
    if args.method == "msn" and args.encoder is None and args.init is None:
        overrides["encoder"] = "vit"  # MSN masks patch tokens: it needs the ViT
    config = build_config(SSLConfig, args.config, overrides, section="ssl")
    sample_rate = 16000
    if config.init is not None:  # decode at the rate the starting encoder takes
        from audioclust.models.encoder_spec import open_encoder

        sample_rate = open_encoder(config.init).sample_rate
    data = AudioFolder(args.data, sample_rate=sample_rate)
    if config.init is not None:
        initial_embedder(config, data)  # one line on what cannot be trained, before any work
    rank = int(os.environ.get("RANK", "0"))
    log = (lambda s: None) if rank else (lambda s: print(s, file=sys.stderr))
    start = f"from {config.init}" if config.init else config.encoder
    log(f"{config.method} ({start}) on {len(data)} clips from {args.data}, "
        f"{config.epochs} epochs")
    result = train_ssl(config, data, args.out, resume=args.resume, progress=not args.quiet,
                       log=log)
    if rank == 0:
        write_ssl(result, as_json=args.json, log=log)
    return 0


def write_ssl(result: TrainResult, *, as_json: bool = False,
              log: Callable[[str], None] = lambda s: None, stream: TextIO | None = None) -> None:
    """The run's summary: ``--json``'s object on ``stream`` (default stdout), else a line
    to ``log``. (``train_ssl`` writes the encoder, checkpoints and curves itself.)"""
    summary = result.to_dict()
    if as_json:
        print(json.dumps(summary), file=sys.stdout if stream is None else stream)
    else:
        log(f"done in {summary['seconds']} s ({summary['clips_per_second']} clips/s); "
            f"encoder: {result.encoder_path}")


# --- clustering heads -------------------------------------------------------------------

HEAD_METHODS = ("temi", "spice", "deepcluster")
# module and class of each method's estimator, imported only when used
_ESTIMATORS = {
    "temi": ("audioclust.training.heads.temi", "TEMI"),
    "deepcluster": ("audioclust.training.heads.deepcluster", "DeepCluster"),
    "spice": ("audioclust.training.heads.spice", "SPICE"),
}


@dataclass(frozen=True)
class HeadRun:
    """What ``audioclust-train head`` runs: the ``[head]`` table of ``--config``.

    ``[head.temi]``, ``[head.deepcluster]`` and ``[head.spice]`` hold that method's
    settings (the fields of ``TEMISettings``, ``DeepClusterSettings``, ``SPICESettings``:
    e.g. ``n_heads``, ``lr``); ``epochs`` overrides the method's ``epochs``.
    ``fine_tune`` (SPICE only) adds SPICE's joint stage: stage 2 on embeddings of
    augmented crops, then encoder and head tuned together (``[head.spice_finetune]``:
    ``SPICEFineTuneSettings``); the run then writes the tuned encoder too.
    """

    method: str = "temi"
    clusters: int | str | None = None  # K >= 2, or "auto"
    k_max: int = 50
    epochs: int | None = None
    seed: int = 0
    threads: int = 1  # 0: the libraries' defaults
    batch_size: int = 64  # clips per encoder forward pass while embedding
    cache_dir: str | None = None
    fine_tune: bool = False
    temi: dict[str, Any] = field(default_factory=dict)
    deepcluster: dict[str, Any] = field(default_factory=dict)
    spice: dict[str, Any] = field(default_factory=dict)
    spice_finetune: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in HEAD_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(HEAD_METHODS)}")
        if self.k_max < 2 or self.threads < 0 or self.batch_size < 1:
            raise ConfigError("k_max >= 2, threads >= 0 and batch_size >= 1 needed")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


def parse_clusters(value: int | str | None) -> int | None:
    """K from ``--clusters`` (an integer >= 2), or None for ``auto``."""
    if value is None:
        raise UserError("give --clusters K (an integer >= 2) or --clusters auto")
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return None
        try:
            value = int(value)
        except ValueError:
            raise UserError(f"--clusters must be an integer >= 2 or auto, got {value!r}") from None
    if value < 2:
        raise UserError(f"--clusters must be at least 2 (or auto), got {value}")
    return value


def _estimator_class(method: str) -> type:
    module_name, class_name = _ESTIMATORS[method]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module is there but one of its imports is not
            raise
        raise UserError(f"--method {method}: {module_name} is not available in this "
                        "installation") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"--method {method}: {module_name} defines no {class_name} estimator")
    return cls


def _method_settings(cls: type, run: HeadRun) -> Any:
    """The method's settings from its ``[head.<method>]`` table and ``--epochs``."""
    from audioclust.training.heads import settings_from_table

    table = dict(getattr(run, run.method))
    if run.epochs is not None:
        table["epochs"] = run.epochs
    return settings_from_table(cls.Settings, table, f"[head.{run.method}]")


def _finetune_settings(run: HeadRun) -> Any:
    """SPICE's joint-stage settings (``[head.spice_finetune]``) with ``--fine-tune``, else
    None."""
    if run.method != "spice" and (run.fine_tune or run.spice_finetune):
        raise UserError("--fine-tune and [head.spice_finetune] apply to --method spice only")
    if not run.fine_tune:
        if run.spice_finetune:
            raise UserError("[head.spice_finetune] needs --fine-tune")
        return None
    from audioclust.training.heads import settings_from_table
    from audioclust.training.heads.spice_finetune import SPICEFineTuneSettings

    return settings_from_table(SPICEFineTuneSettings, run.spice_finetune,
                               "[head.spice_finetune]")


def _fit_spice(estimator: Any, x: np.ndarray, tune: Any, encoder: Any, dataset: AudioFolder,
               run: HeadRun, log, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    """SPICE with ``--fine-tune``: stage 2 with views from the audio, then (unless the
    joint stage's ``epochs`` is 0) stage 3. Returns (head, tuned embedder or None,
    history)."""
    from audioclust.training.heads.spice_finetune import SPICEFineTuner, audio_views

    views = audio_views(encoder, dataset, tune, seed=run.seed, cache_dir=run.cache_dir,
                        progress=progress)
    estimator.fit(x, views=views)
    if not tune.epochs:
        return estimator.head_, None, estimator.history_
    tuner = SPICEFineTuner(tune, seed=run.seed, cache_dir=run.cache_dir, progress=progress,
                           log=log).fit(encoder, dataset, estimator.head_)
    history = {**tuner.history_, "stage2": estimator.history_,
               "head_losses": estimator.history_["head_losses"]}
    return tuner.head_, tuner.embedder_, history


def _loss_curves(history: dict[str, Any]) -> dict[str, list[float]]:
    """Curves for loss.png: the mean over heads and the selected head when the history
    has per-head losses per epoch, else every list of numbers under a ``*loss*`` key."""
    losses = history.get("loss")
    if isinstance(losses, list) and losses and all(isinstance(v, list) for v in losses):
        curves = {"mean over heads": [float(np.mean(v)) for v in losses]}
        sel = history.get("selected")
        if isinstance(sel, int):
            curves[f"head {sel} (selected)"] = [float(v[sel]) for v in losses]
        return curves
    curves = {}

    def visit(path: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                visit(f"{path}/{k}" if path else str(k), v)
        elif "loss" in path.rsplit("/", 1)[-1] and isinstance(obj, list) and obj:
            if all(isinstance(v, int | float) for v in obj):
                curves[path] = [float(v) for v in obj]
            elif all(isinstance(v, list) and v for v in obj):
                curves[f"{path} (mean)"] = [float(np.mean(v)) for v in obj]

    visit("", history)
    return curves


def _json_default(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def _add_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "head",
        help="clustering heads on a frozen encoder (TEMI, SPICE, DeepCluster)",
        description=(
            "Embed every clip with the encoder checkpoint (cached on disk, labels ignored), "
            "train clustering heads and write head.safetensors (all heads, the best one "
            "selected, its cluster prior and input statistics, and the encoder's SHA-256), "
            "history.json and loss.png. --clusters auto chooses K by the open-set notion "
            "of distinct clusters and draws it in n_clusters.png (training/nclusters.py). "
            "Settings: defaults, then --config ([head] table; method settings in "
            "[head.temi], [head.deepcluster], [head.spice]), then flags."
        ),
        formatter_class=HelpFormatter,
        parents=[data_options(labels=False),
                 output_options(out=None, what="run", json_help="a summary"),
                 seed_options("random seed (default 0)"),
                 cache_options("embedding")],
    )
    p.add_argument("--method", choices=HEAD_METHODS, help="clustering method (default temi)")
    add_encoder_arguments(p, help="the frozen encoder (a checkpoint from `audioclust-train "
                          "ssl`, or a pretrained model)")
    p.add_argument("--clusters", metavar="K|auto", help="number of clusters (>= 2), or auto")
    p.add_argument("--config", type=Path, help="TOML/YAML file with a [head] table")
    p.add_argument("--epochs", type=int, help="training epochs (default: the method's)")
    p.add_argument("--fine-tune", action="store_true", default=None,
                   help="SPICE only: also tune the encoder with the head (SPICE's stage 3, "
                   "views from augmented crops of the audio); writes OUT/encoder.safetensors")
    p.add_argument("--k-max", type=int, help="largest K --clusters auto considers (default 50)")
    p.add_argument("--threads", type=int, help="CPU threads, 0 = library defaults (default 1: "
                   "the heads are small, and on a shared machine extra threads mostly wait)")
    p.add_argument("--batch-size", type=int, help="clips per encoder forward pass (default 64)")
    p.set_defaults(func=_head)


@dataclass
class HeadTraining:
    """What ``train_head`` trained and wrote: the K it used (with ``--clusters auto``'s
    criterion), the saved head (and tuned encoder) and the training history."""

    run: HeadRun
    out: Path
    clips: int
    n_clusters: int
    k_given: int | None
    auto_k_scores: dict[int, float] | None
    head_path: Path
    encoder_path: Path  # the encoder the head takes: the tuned one when SPICE tuned it
    encoder_sha256: str
    n_heads: int
    selected: int
    history: dict[str, Any]
    embed_seconds: float
    fit_seconds: float

    @property
    def clusters(self) -> str:
        return "auto" if self.k_given is None else "given"

    def loss_curves(self) -> dict[str, list[float]]:
        return _loss_curves(self.history)

    def record(self) -> dict[str, Any]:
        """``history.json``."""
        return {
            "run": {**asdict(self.run),
                    "clusters": self.k_given if self.k_given is not None else "auto"},
            "encoder": str(self.encoder_path),
            "encoder_sha256": self.encoder_sha256,
            "n_clusters": self.n_clusters,
            "auto_k_scores": self.auto_k_scores,
            "embed_seconds": round(self.embed_seconds, 2),
            "fit_seconds": round(self.fit_seconds, 2),
            "history": self.history,
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary ``--json`` prints."""
        return {
            "head": str(self.head_path),
            "history": str(self.out / "history.json"),
            "loss_plot": str(self.out / "loss.png") if self.loss_curves() else None,
            "method": self.run.method,
            "encoder": str(self.encoder_path),
            "encoder_sha256": self.encoder_sha256,
            "n_clusters": self.n_clusters,
            "clusters": self.clusters,
            "n_heads": self.n_heads,
            "selected": self.selected,
            "head_losses": self.history.get("head_losses"),
            "cluster_usage": self.history.get("cluster_usage"),
            "embed_seconds": round(self.embed_seconds, 2),
            "fit_seconds": round(self.fit_seconds, 2),
        }


def train_head(run: HeadRun, encoder: Any, spec: str | Path, data: str | Path, out: Path, *,
               log: Callable[[str], None] = lambda s: None,
               progress: bool = False) -> HeadTraining:
    """Embed every clip of ``data`` with ``encoder`` (opened from ``spec``), choose K
    (``run.clusters``, or ``auto``), train ``run.method``'s heads and save them (and a
    tuned encoder with SPICE's ``fine_tune``) in ``out``; the report files are the
    writer's (:func:`write_head_training`)."""
    from contextlib import nullcontext

    import torch
    from threadpoolctl import threadpool_limits

    from audioclust.models.checkpoint import file_sha256
    from audioclust.models.embedder import save_embedder
    from audioclust.models.encoder_spec import trainable_copy
    from audioclust.models.heads import save_head
    from audioclust.training.features import embed_dataset

    k_given = parse_clusters(run.clusters)
    cls = _estimator_class(run.method)
    settings = _method_settings(cls, run)
    tune = _finetune_settings(run)
    # SPICE's joint stage trains the encoder: a log-mel one (checked before any work)
    start = None if tune is None else trainable_copy(encoder, "--fine-tune")
    dataset = AudioFolder(data, sample_rate=encoder.sample_rate)
    if k_given is not None and k_given > len(dataset):
        raise UserError(f"--clusters {k_given}: more clusters than the {len(dataset)} clips")

    if run.threads:
        torch.set_num_threads(run.threads)
    limits = threadpool_limits(run.threads) if run.threads else nullcontext()
    with limits:
        t0 = time.perf_counter()
        x = embed_dataset(dataset, encoder, cache_dir=run.cache_dir,
                          progress=progress, batch_size=run.batch_size,
                          on_cache=lambda p, hit: log(
                              ("embeddings from cache " if hit else "embeddings cached in ")
                              + str(p)))
        embed_seconds = time.perf_counter() - t0
        log(f"{len(dataset)} clips, {x.shape[1]}-d embeddings ({embed_seconds:.1f} s)")
        auto_scores = None
        if k_given is None:
            t1 = time.perf_counter()
            k, auto_scores = choose_n_clusters(x, run.k_max, seed=run.seed)
            log(f"--clusters auto: K = {k} (share {auto_scores[k]:.2f} < 1/2; "
                f"K = {k + 1} gives {auto_scores.get(k + 1, float('nan')):.2f}; "
                f"{time.perf_counter() - t1:.1f} s; {out / 'n_clusters.png'})")
        else:
            k = k_given
        log(f"{run.method}: {k} clusters")
        estimator = cls(k, settings, seed=run.seed, progress=progress, log=log)
        t2 = time.perf_counter()
        tuned = None
        if tune is not None:
            head, tuned, history = _fit_spice(estimator, x, tune, start, dataset, run,
                                              log, progress=progress)
        else:
            estimator.fit(x)
            head, history = estimator.head_, estimator.history_
        fit_seconds = time.perf_counter() - t2

    out.mkdir(parents=True, exist_ok=True)
    encoder_path, encoder_sha = Path(spec), encoder.sha256
    if tuned is not None:
        encoder_path = save_embedder(tuned, out / "encoder.safetensors", info={
            "tuned_by": run.method, "tuned_from_sha256": encoder.sha256,
            "tuned_from": str(spec), "base_info": encoder.info})
        encoder_sha = file_sha256(encoder_path)
        log(f"{run.method} fine-tuned the encoder: evaluate the head with {encoder_path}")
    params = estimator.get_params()
    if tune is not None:
        params["spice_finetune"] = tune.to_dict()
    head_path = save_head(head, out / "head.safetensors", run.method, encoder_sha256=encoder_sha,
                          info={"data": str(data), "clips": len(dataset),
                                "clusters": "auto" if k_given is None else "given",
                                "seed": run.seed, "params": params,
                                "fit_seconds": round(fit_seconds, 2)})
    return HeadTraining(
        run=run, out=out, clips=len(dataset), n_clusters=k, k_given=k_given,
        auto_k_scores=auto_scores, head_path=head_path, encoder_path=encoder_path,
        encoder_sha256=encoder_sha, n_heads=head.config.n_heads, selected=int(head.selected),
        history=history, embed_seconds=embed_seconds, fit_seconds=fit_seconds)


def write_head_training(report: HeadTraining, *, as_json: bool = False,
                        log: Callable[[str], None] = lambda s: None,
                        stream: TextIO | None = None) -> None:
    """``n_clusters.png`` (with ``--clusters auto``), ``history.json`` and ``loss.png`` in
    the run's folder; the summary (``--json``) on ``stream`` (default stdout), or a line to
    ``log``."""
    from audioclust.training.report import plot_curves

    out, k = report.out, report.n_clusters
    out.mkdir(parents=True, exist_ok=True)
    if report.auto_k_scores is not None:
        plot_n_clusters(report.auto_k_scores, k, out / "n_clusters.png",
                        f"--clusters auto on {report.clips} clips: K = {k}")
    (out / "history.json").write_text(
        json.dumps(report.record(), indent=2, default=_json_default))
    curves = report.loss_curves()
    if curves:
        longest = max(len(c) for c in curves.values())
        plot_curves(curves, out / "loss.png", xlabel="epoch",
                    title=f"{report.run.method}, K = {k}: training loss",
                    smooth=max(1, min(5, longest // 10)))
    else:
        log(f"no loss curve in {report.run.method}'s history: loss.png not written")
    if as_json:
        print(json.dumps(report.to_dict(), default=_json_default),
              file=sys.stdout if stream is None else stream)
    else:
        log(f"done: {report.head_path} (head {report.selected} of {report.n_heads} selected; "
            f"fit {report.fit_seconds:.1f} s)")


def _head(args: argparse.Namespace) -> int:
    from audioclust.models.encoder_spec import encoder_from_args

    run = build_config(
        HeadRun,
        args.config,
        {"method": args.method, "clusters": args.clusters, "k_max": args.k_max,
         "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
         "fine_tune": args.fine_tune,
         "batch_size": args.batch_size,
         "cache_dir": cache_dir_from(args)},
        section="head",
    )
    parse_clusters(run.clusters)  # a bad --clusters fails before the encoder opens
    log = (lambda s: None) if (args.json and args.quiet) else (
        lambda s: print(s, file=sys.stderr))
    enc = encoder_from_args(args.encoder, args)  # missing or not an encoder: fail first
    report = train_head(run, enc, args.encoder, args.data, args.out, log=log,
                        progress=not args.quiet)
    write_head_training(report, as_json=args.json, log=log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train audioclust encoders and clustering heads on unlabelled audio.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ssl(sub)
    _add_head(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
