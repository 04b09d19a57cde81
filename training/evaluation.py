"""Evaluation as library functions: each scores a labelled audio folder and returns a
report object; nothing is written. ``audioclust-eval`` (``training/evaluate.py``) builds
the settings from its flags, calls one of these and hands the report to its writer.

- :func:`evaluate_baselines`: the features x reducer x clusterer grid (:class:`BaselinesRun`).
- :func:`evaluate_encoder`: an encoder beside its randomly initialised counterpart:
  clustering of the embeddings and a linear probe (:class:`EncoderEval`).
- :func:`evaluate_head`: a trained clustering head beside k-means (:class:`HeadEval`).

Each report's ``to_dict()`` is what ``audioclust-eval ... --json`` prints; ``record()``
what its JSON file holds.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from audioclust.models.cli import UserError
from audioclust.models.encoder_spec import WaveformEncoder, checkpoint_name
from audioclust.training.baselines import BaselineConfig, BaselineRow, reduce, run_grid
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import FEATURE_KINDS, embed_dataset, extract
from audioclust.training.probe import check_folds, linear_probe

Log = Callable[[str], None]
ROW_KEYS = ("features", "reducer", "clusterer", "n_clusters", "nmi", "ari", "acc", "seconds")
# Encoder evaluation clusters with the methods that take k, on raw and PCA-reduced
# embeddings: t-SNE, DBSCAN and mean-shift add their own failure modes, not encoder signal.
ENCODER_GRID = BaselineConfig(reducers=("none", "pca"), clusterers=("kmeans", "agglomerative"))
HEAD_ROW_KEYS = ("clusterer", "n_clusters", "clusters_used", "nmi", "ari", "acc", "purity")


def _quiet(_: str) -> None:
    pass


def labelled_dataset(data: str | Path, labels: str, sample_rate: int,
                     command: str = "evaluate") -> AudioFolder:
    """The folder with its labels, refusing what cannot be scored (no labels, one class)."""
    if labels == "none":
        raise UserError(f"{command}: scoring needs labels; give --labels "
                        "folder|digit|speaker|csv:FILE")
    dataset = AudioFolder(data, labels=labels, sample_rate=sample_rate)
    if len(dataset.class_names) < 2:
        raise UserError(f"{data}: need at least 2 classes to score, found "
                        f"{len(dataset.class_names)}")
    return dataset


def _cache_note(log: Log, prefix: str) -> Callable[[Path, bool], None]:
    return lambda p, hit: log(prefix + ("from cache " if hit else "cached in ") + str(p))


def _best(rows: Sequence[BaselineRow]) -> BaselineRow:
    # Accuracy picks the best row: NMI rewards over-clustering (DBSCAN's dozens of clusters).
    return max(rows, key=lambda r: (r.acc, r.nmi))


def _title(best: BaselineRow) -> str:
    return (f"{best.features}/{best.reducer}/{best.clusterer}: "
            f"NMI {best.nmi:.2f} ACC {best.acc:.2f}")


# --- baselines --------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselinesRun:
    """What ``audioclust-eval baselines`` runs; the ``[baselines]`` table of ``--config``."""

    features: tuple[str, ...] = FEATURE_KINDS
    encoders: tuple[str, ...] = ()  # encoder specs whose embeddings join the grid
    grid: BaselineConfig = field(default_factory=BaselineConfig)
    sample_rate: int = 16000
    cache_dir: str | None = None


def check_features(run: BaselinesRun) -> None:
    """Refuse feature kinds this grid does not know."""
    bad = [f for f in run.features if f not in FEATURE_KINDS]
    if bad:
        raise UserError(f"unknown features {bad}; known: {', '.join(FEATURE_KINDS)}")


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


@dataclass
class BaselinesReport:
    """The grid's rows on one folder, with what the pictures need (the best row's labels,
    its 2-D t-SNE map)."""

    data: str
    labels: str
    classes: list[str]
    run: BaselinesRun
    rows: list[BaselineRow]
    targets: np.ndarray = field(repr=False)
    map_xy: np.ndarray = field(repr=False)

    @property
    def clips(self) -> int:
        return len(self.targets)

    @property
    def best(self) -> BaselineRow:
        return _best(self.rows)

    @property
    def title(self) -> str:
        return _title(self.best)

    def record(self) -> dict:
        """``baselines.json``: the folder and settings, and every row."""
        g = self.run.grid
        meta = {
            "data": self.data,
            "labels": self.labels,
            "clips": self.clips,
            "classes": self.classes,
            "config": {"features": list(self.run.features), "encoders": list(self.run.encoders),
                       "grid": g.__dict__},
        }
        return {"meta": meta, "rows": [r.to_dict() for r in self.rows]}

    def to_dict(self) -> list[dict]:
        """The rows, with the ``ROW_KEYS`` columns (what ``--json`` prints)."""
        return [{k: d[k] for k in ROW_KEYS} for d in (r.to_dict() for r in self.rows)]


def evaluate_baselines(run: BaselinesRun, data: str | Path, labels: str,
                       encoders: Sequence[WaveformEncoder] = (), *, log: Log = _quiet,
                       progress: bool = False) -> BaselinesReport:
    """Cluster every clip of ``data`` with each combination of ``run``'s features
    (log-mel/MFCC, then the ``encoders``' embeddings, named by
    :func:`encoder_feature_names`), reducers and clusterers, and score each by ``labels``."""
    check_features(run)
    dataset = labelled_dataset(data, labels, run.sample_rate, "baselines")
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({labels})")

    t0 = time.perf_counter()
    # Encoders first: one that cannot run fails before the log-mel pass. Each decodes the
    # folder at its own rate (same clips, same order).
    embedded = {
        name: embed_dataset(
            dataset if enc.sample_rate == dataset.sample_rate
            else labelled_dataset(data, labels, enc.sample_rate, "baselines"),
            enc,
            cache_dir=run.cache_dir,
            progress=progress,
            on_cache=_cache_note(log, f"{name}: embeddings "),
        )
        for name, enc in zip(encoder_feature_names(encoders), encoders, strict=True)
    }
    feats = extract(
        dataset,
        kinds=run.features,  # type: ignore[arg-type]
        cache_dir=run.cache_dir,
        progress=progress,
        on_cache=_cache_note(log, "features "),
    )
    feats.update(embedded)  # rows: log-mel/MFCC first, then encoders in command-line order
    log(f"features ready in {time.perf_counter() - t0:.1f} s")

    y = dataset.targets
    g = run.grid
    total = len(feats) * len(g.reducers) * len(g.clusterers)
    rows: list[BaselineRow] = []
    reduced: dict[tuple[str, str], np.ndarray] = {}
    with tqdm(total=total, desc="grid", unit="row", disable=not progress,
              file=sys.stderr) as bar:
        for row, z in run_grid(feats, y, g, on_step=lambda s: bar.set_postfix_str(s)):
            rows.append(row)
            reduced[(row.features, row.reducer)] = z
            bar.update()
    best = _best(rows)
    xy = reduced.get((best.features, "tsne"))
    if xy is None:
        xy = reduce(feats[best.features], "tsne", g)
    return BaselinesReport(data=str(data), labels=labels, classes=dataset.class_names,
                           run=run, rows=rows, targets=y, map_xy=xy)


# --- encoders ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderEval:
    """Settings of ``audioclust-eval encoder``."""

    folds: int = 5  # linear-probe cross-validation folds
    seed: int = 0  # of the random encoder, k-means, PCA, t-SNE and the fold split
    batch_size: int = 64
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")


@dataclass
class EncoderReport:
    """An encoder's (and its random counterpart's) clustering rows and linear probe.

    ``variants`` maps ``trained`` (and ``random`` where the encoder has one) to its
    feature name, random seed, rows (``BaselineRow.to_dict()``) and probe."""

    checkpoint: str
    kind: str
    sha256: str
    encoder: str
    embed_dim: int
    info: dict
    data: str
    labels: str
    classes: list[str]
    folds: int
    seed: int
    variants: dict[str, dict]
    best: BaselineRow = field(repr=False)  # the trained encoder's best row
    targets: np.ndarray = field(repr=False)
    map_xy: np.ndarray = field(repr=False)  # t-SNE of the trained embeddings

    @property
    def clips(self) -> int:
        return len(self.targets)

    @property
    def title(self) -> str:
        return _title(self.best)

    def record(self) -> dict:
        """``encoder-eval.json``."""
        return {
            "checkpoint": self.checkpoint,
            "kind": self.kind,
            "sha256": self.sha256,
            "encoder": self.encoder,
            "embed_dim": self.embed_dim,
            "info": self.info,
            "data": self.data,
            "labels": self.labels,
            "clips": self.clips,
            "classes": self.classes,
            "folds": self.folds,
            "seed": self.seed,
            **self.variants,
        }

    def to_dict(self) -> dict:
        """The record with rows cut to the ``baselines`` row schema (what ``--json`` prints)."""
        d = self.record()
        for variant in self.variants:
            d[variant] = {**d[variant],
                          "rows": [{k: r[k] for k in ROW_KEYS} for r in d[variant]["rows"]]}
        return d


def evaluate_encoder(encoder: WaveformEncoder, spec: str, data: str | Path, labels: str,
                     settings: EncoderEval = EncoderEval(), *, log: Log = _quiet,
                     progress: bool = False) -> EncoderReport:
    """Embed ``data`` with ``encoder`` (opened from ``spec``) and with a randomly
    initialised copy (none for onnx:); cluster both (``ENCODER_GRID``) and probe them
    linearly, scoring by ``labels``."""
    dataset = labelled_dataset(data, labels, encoder.sample_rate, "encoder")
    y = dataset.targets
    check_folds(y, settings.folds, "--folds")  # before minutes of embedding, not after
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({labels}); "
        f"{encoder.description['name']} encoder from {spec}")

    name = encoder.name
    grid = dataclasses.replace(ENCODER_GRID, seed=settings.seed)
    variants: dict[str, tuple[str, int | None]] = {"trained": (f"encoder:{name}", None)}
    if encoder.randomise is not None:
        variants["random"] = (f"random:{name}", settings.seed)
    else:
        log(f"{encoder.kind} encoder: no randomly initialised counterpart to compare with")
    results: dict[str, dict] = {}
    embeddings: dict[str, np.ndarray] = {}
    best_rows: dict[str, BaselineRow] = {}
    for variant, (features, random_init) in variants.items():
        t0 = time.perf_counter()
        x = embed_dataset(
            dataset,
            encoder,
            random_init=random_init,
            cache_dir=settings.cache_dir,
            progress=progress,
            batch_size=settings.batch_size,
            on_cache=_cache_note(log, f"{variant}: embeddings "),
        )
        log(f"{variant}: {x.shape[1]}-d embeddings in {time.perf_counter() - t0:.1f} s")
        rows = [row for row, _ in run_grid({features: x}, y, grid)]
        probe = linear_probe(x, y, settings.folds, settings.seed,
                             log=lambda s, v=variant: log(f"{v}: {s}"))
        log(f"{variant}: linear probe {probe.mean:.3f} +- {probe.std:.3f}, best clustering "
            f"ACC {max(r.acc for r in rows):.3f}")
        embeddings[variant] = x
        best_rows[variant] = _best(rows)
        results[variant] = {
            "features": features,
            "random_init": random_init,
            "rows": [r.to_dict() for r in rows],
            "linear_probe": probe.to_dict(),
        }
    return EncoderReport(
        checkpoint=str(spec), kind=encoder.kind, sha256=encoder.sha256,
        encoder=encoder.description["name"], embed_dim=int(embeddings["trained"].shape[1]),
        info=encoder.info, data=str(data), labels=labels, classes=dataset.class_names,
        folds=settings.folds, seed=settings.seed, variants=results,
        best=best_rows["trained"], targets=y,
        map_xy=reduce(embeddings["trained"], "tsne", grid))


# --- clustering heads -------------------------------------------------------------------


@dataclass(frozen=True)
class HeadEval:
    """Settings of ``audioclust-eval head``."""

    seed: int = 0  # of k-means and t-SNE
    batch_size: int = 64
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")


def _head_row(name: str, y: np.ndarray, pred: np.ndarray, k: int) -> dict:
    from audioclust.training.metrics import score_all

    s = score_all(y, pred)
    return {"clusterer": name, "n_clusters": k, "clusters_used": s.n_clusters,
            **{m: round(getattr(s, m), 4) for m in ("nmi", "ari", "acc", "purity")}}


@dataclass
class HeadReport:
    """Scores of every head of a checkpoint and of the selected one, beside k-means."""

    head: str
    method: str
    encoder: str
    encoder_sha256: str
    data: str
    labels: str
    classes: list[str]
    n_clusters: int
    n_heads: int
    selected: int
    head_info: dict
    selected_scores: dict
    heads: list[dict]
    kmeans: list[dict]
    predictions: np.ndarray = field(repr=False)  # the selected head's clusters
    targets: np.ndarray = field(repr=False)
    map_xy: np.ndarray = field(repr=False)  # t-SNE of the embeddings

    @property
    def clips(self) -> int:
        return len(self.targets)

    @property
    def title(self) -> str:
        s = self.selected_scores
        return f"{self.method} head {self.selected}: NMI {s['nmi']:.2f} ACC {s['acc']:.2f}"

    def to_dict(self) -> dict:
        """``head-eval.json``, and what ``--json`` prints."""
        return {
            "head": self.head,
            "method": self.method,
            "encoder": self.encoder,
            "encoder_sha256": self.encoder_sha256,
            "data": self.data,
            "labels": self.labels,
            "clips": self.clips,
            "classes": self.classes,
            "n_clusters": self.n_clusters,
            "n_heads": self.n_heads,
            "selected": self.selected,
            "head_info": self.head_info,
            "selected_scores": self.selected_scores,
            "heads": self.heads,
            "kmeans": self.kmeans,
        }

    record = to_dict


def evaluate_head(head_path: str | Path, encoder: WaveformEncoder, spec: str,
                  data: str | Path, labels: str, settings: HeadEval = HeadEval(),
                  meta: dict | None = None, *, log: Log = _quiet,
                  progress: bool = False) -> HeadReport:
    """Assign ``data``'s clips with each head of the checkpoint at ``head_path`` and score
    them by ``labels`` beside k-means on the same embeddings of ``encoder`` (opened from
    ``spec``), after checking it is the encoder the head was trained on. ``meta`` is the
    head's metadata when already read."""
    import torch

    from audioclust.models.heads import load_head, read_head_metadata
    from audioclust.training.kmeans import KMeans

    meta = read_head_metadata(head_path) if meta is None else meta
    if not meta["encoder_sha256"]:
        log(f"warning: {head_path} records no encoder SHA-256; cannot check it matches "
            f"{spec}")
    elif meta["encoder_sha256"] != encoder.sha256:
        raise UserError(
            f"{head_path} was trained on the encoder with SHA-256 "
            f"{meta['encoder_sha256'][:12]}..., but {spec} is "
            f"{encoder.sha256[:12]}...: pass the encoder the head was trained with")
    head = load_head(head_path)
    config = head.config
    dataset = labelled_dataset(data, labels, encoder.sample_rate, "head")
    y = dataset.targets
    log(f"{len(dataset)} clips, {len(dataset.class_names)} classes ({labels}); "
        f"{meta['method']} head, {config.n_heads} heads x {config.n_clusters} clusters")

    x = embed_dataset(dataset, encoder, cache_dir=settings.cache_dir, progress=progress,
                      batch_size=settings.batch_size, on_cache=_cache_note(log, "embeddings "))
    if x.shape[1] != config.in_dim:
        raise UserError(f"{head_path} takes {config.in_dim}-d embeddings, {spec} "
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
    kmeans_rows = []
    for kk in dict.fromkeys((k, len(dataset.class_names))):
        kmeans_labels = KMeans(kk, n_init=10, random_state=settings.seed).fit_predict(z)
        kmeans_rows.append(_head_row(f"k-means (k={kk})", y, kmeans_labels, kk))
    return HeadReport(
        head=str(head_path), method=meta["method"], encoder=str(spec),
        encoder_sha256=encoder.sha256, data=str(data), labels=labels,
        classes=dataset.class_names, n_clusters=k, n_heads=config.n_heads,
        selected=selected, head_info=meta["info"], selected_scores=selected_row,
        heads=rows, kmeans=kmeans_rows, predictions=preds[selected], targets=y,
        map_xy=reduce(x, "tsne", BaselineConfig(seed=settings.seed)))
