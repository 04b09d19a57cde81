"""The research notes' baseline grid: features x reducer x clusterer, scored against labels.

Pipeline per row: standardise the features (zero mean, unit variance per dimension), reduce,
cluster. Label-free rules fix everything the labels must not:

- PCA keeps the fewest components that explain ``pca_variance`` of the variance.
- t-SNE maps to 2-D from the first 50 principal components (the usual speed-up), with
  ``tsne_perplexity`` and PCA initialisation.
- k-means and agglomerative (Ward) clustering get k = the number of classes, as in the
  notes; they are the methods that take k.
- DBSCAN: ``min_samples = clip(2 * dim, 5, 20)`` (Sander et al.'s 2*dim, bounded), and
  ``eps`` at the knee of the sorted ``min_samples``-th-neighbour distance curve (the point
  farthest from the chord joining its ends). Noise points form one extra cluster in the
  scores.
- Mean-shift: bandwidth from scikit-learn's ``estimate_bandwidth`` on up to 1,000 points at
  quantile ``1 / (2k)`` (a kernel spans about half of one of k equal clusters; override
  with ``meanshift_quantile``), bin seeding on. In high dimensions it often finds a single
  mode: that is reported, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from sklearn.cluster import DBSCAN, AgglomerativeClustering, MeanShift, estimate_bandwidth
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from audioclust.models.errors import ConfigError
from audioclust.training.kmeans import KMeans
from audioclust.training.metrics import score_all

__all__ = [
    "CLUSTERERS",
    "REDUCERS",
    "BaselineConfig",
    "BaselineRow",
    "cluster",
    "dbscan_params",
    "reduce",
    "run_grid",
]

Reducer = Literal["none", "pca", "tsne"]
Clusterer = Literal["kmeans", "agglomerative", "dbscan", "meanshift"]
REDUCERS: tuple[Reducer, ...] = ("none", "pca", "tsne")
CLUSTERERS: tuple[Clusterer, ...] = ("kmeans", "agglomerative", "dbscan", "meanshift")


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the baseline grid; every default is the stated label-free rule."""

    reducers: tuple[Reducer, ...] = REDUCERS
    clusterers: tuple[Clusterer, ...] = CLUSTERERS
    pca_variance: float = 0.9
    tsne_perplexity: float = 30.0
    meanshift_quantile: float | None = None
    kmeans_n_init: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [r for r in self.reducers if r not in REDUCERS]
        bad += [c for c in self.clusterers if c not in CLUSTERERS]
        if bad:
            raise ConfigError(f"unknown reducer/clusterer {bad}; known: {REDUCERS + CLUSTERERS}")
        if not 0 < self.pca_variance <= 1:
            raise ConfigError(f"pca_variance must be in (0, 1], got {self.pca_variance}")


@dataclass
class BaselineRow:
    features: str
    reducer: str
    clusterer: str
    n_clusters: int
    nmi: float
    ari: float
    acc: float
    purity: float
    seconds: float
    labels: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["labels"]
        return d


def reduce(x: np.ndarray, reducer: Reducer, config: BaselineConfig) -> np.ndarray:
    """Standardise, then apply the reducer. Returns float64 (n, d')."""
    z = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    if reducer == "none":
        return z
    if reducer == "pca":
        return PCA(n_components=config.pca_variance, svd_solver="full").fit_transform(z)
    if reducer == "tsne":
        n_pc = min(50, z.shape[1], z.shape[0])
        pre = PCA(n_components=n_pc, random_state=config.seed).fit_transform(z)
        perplexity = min(config.tsne_perplexity, (z.shape[0] - 1) / 3)
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=config.seed
        ).fit_transform(pre)
    raise ValueError(f"unknown reducer {reducer!r}")


def dbscan_params(x: np.ndarray) -> tuple[float, int]:
    """(eps, min_samples) by the module's label-free rule."""
    min_samples = int(np.clip(2 * x.shape[1], 5, 20))
    min_samples = min(min_samples, x.shape[0] - 1)
    dist, _ = NearestNeighbors(n_neighbors=min_samples + 1).fit(x).kneighbors(x)
    kd = np.sort(dist[:, -1])
    # Knee: the point of the increasing curve farthest below the chord from first to last.
    t = np.linspace(0.0, 1.0, kd.size)
    span = kd[-1] - kd[0]
    if span <= 0:
        return float(kd[-1] or 1.0), min_samples
    curve = (kd - kd[0]) / span
    knee = int(np.argmax(t - curve))
    return float(max(kd[knee], 1e-12)), min_samples


def cluster(x: np.ndarray, clusterer: Clusterer, k: int, config: BaselineConfig) -> np.ndarray:
    """Cluster labels for ``x`` (-1 marks DBSCAN noise)."""
    if clusterer == "kmeans":
        return KMeans(k, n_init=config.kmeans_n_init, random_state=config.seed).fit_predict(x)
    if clusterer == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    if clusterer == "dbscan":
        eps, min_samples = dbscan_params(x)
        return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
    if clusterer == "meanshift":
        bw = estimate_bandwidth(
            x,
            quantile=config.meanshift_quantile or 1.0 / (2 * k),
            n_samples=min(1000, x.shape[0]),
            random_state=config.seed,
        )
        return MeanShift(bandwidth=bw if bw > 0 else None, bin_seeding=True).fit_predict(x)
    raise ValueError(f"unknown clusterer {clusterer!r}")


def run_grid(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    config: BaselineConfig | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Iterator[tuple[BaselineRow, np.ndarray]]:
    """Yield each (row, reduced features) of the grid as it finishes.

    ``features`` maps a feature name to (n, dim) clip features; ``labels`` are the class
    indices used only for scoring and for k.
    """
    config = config or BaselineConfig()
    k = int(np.unique(labels).size)
    for name, x in features.items():
        for reducer in config.reducers:
            if on_step:
                on_step(f"{name}/{reducer}")
            t0 = time.perf_counter()
            z = reduce(x, reducer, config)
            reduce_s = time.perf_counter() - t0
            for clusterer in config.clusterers:
                if on_step:
                    on_step(f"{name}/{reducer}/{clusterer}")
                t1 = time.perf_counter()
                pred = cluster(z, clusterer, k, config)
                s = score_all(labels, pred)
                row = BaselineRow(
                    features=name,
                    reducer=reducer,
                    clusterer=clusterer,
                    n_clusters=s.n_clusters,
                    nmi=round(s.nmi, 4),
                    ari=round(s.ari, 4),
                    acc=round(s.acc, 4),
                    purity=round(s.purity, 4),
                    seconds=round(reduce_s + time.perf_counter() - t1, 2),
                    labels=pred,
                )
                yield row, z
