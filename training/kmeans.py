"""k-means with DeepCluster's empty-cluster fix, in the scikit-learn estimator style.

When a cluster loses all its points during Lloyd iterations, it is re-seeded from a
non-empty cluster (chosen with probability proportional to its size): both centres become
that centre plus and minus a small perturbation, so the big cluster is split in two
instead of one centre being wasted for the rest of the run.
"""

from __future__ import annotations

import numpy as np

from audioclust.models.errors import ConfigError, DataError

__all__ = ["KMeans"]


def _sq_dists(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    d = x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of ``x``, (k, d): one (k, n) @ (n, d) product
    (``np.add.at`` does the same one row at a time, ~100x slower)."""
    onehot = np.zeros((k, x.shape[0]), dtype=x.dtype)
    onehot[labels, np.arange(x.shape[0])] = 1.0
    return onehot @ x


class KMeans:
    """Lloyd's k-means, k-means++ seeding, ``n_init`` restarts, empty clusters re-seeded.

    Attributes after :meth:`fit`: ``cluster_centers_`` (k, d), ``labels_`` (n,),
    ``inertia_``, ``n_iter_`` and ``n_reseeds_`` (empty clusters re-seeded in the kept run).
    """

    def __init__(
        self,
        n_clusters: int = 8,
        n_init: int = 10,
        max_iter: int = 300,
        tol: float = 1e-6,
        perturbation: float = 1e-4,
        random_state: int | None = 0,
    ):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.perturbation = perturbation
        self.random_state = random_state

    def _plus_plus(self, x: np.ndarray, x_sq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        centres = np.empty((self.n_clusters, x.shape[1]), dtype=x.dtype)
        centres[0] = x[rng.integers(n)]
        closest = _sq_dists(x, centres[:1], x_sq)[:, 0]
        for j in range(1, self.n_clusters):
            total = closest.sum()
            idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
            centres[j] = x[idx]
            closest = np.minimum(closest, _sq_dists(x, centres[j : j + 1], x_sq)[:, 0])
        return centres

    def _reseed_empty(
        self, centres: np.ndarray, counts: np.ndarray, rng: np.random.Generator
    ) -> int:
        reseeded = 0
        for j in np.flatnonzero(counts == 0):
            sizes = counts.astype(np.float64)
            donor = rng.choice(len(counts), p=sizes / sizes.sum())
            scale = self.perturbation * (np.abs(centres[donor]).mean() + 1e-12)
            noise = rng.standard_normal(centres.shape[1]) * scale
            centres[j] = centres[donor] + noise
            centres[donor] = centres[donor] - noise
            # Split the donor's count so a second empty cluster does not pick j, which
            # has no points of its own yet.
            counts[j] = counts[donor] // 2
            counts[donor] -= counts[j]
            reseeded += 1
        return reseeded

    def _single_run(self, x: np.ndarray, x_sq: np.ndarray, rng: np.random.Generator):
        centres = self._plus_plus(x, x_sq, rng)
        reseeds = 0
        labels = np.zeros(x.shape[0], dtype=np.int64)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported
            labels = _sq_dists(x, centres, x_sq).argmin(1)
            counts = np.bincount(labels, minlength=self.n_clusters)
            sums = _cluster_sums(x, labels, self.n_clusters)
            new = centres.copy()
            nz = counts > 0
            new[nz] = sums[nz] / counts[nz, None]
            if (~nz).any():
                reseeds += self._reseed_empty(new, counts, rng)
            shift = float(((new - centres) ** 2).sum())
            centres = new
            if shift <= self.tol * float((x.var(0)).mean() + 1e-12) and nz.all():
                break
        d = _sq_dists(x, centres, x_sq)
        labels = d.argmin(1)
        inertia = float(d[np.arange(x.shape[0]), labels].sum())
        return centres, labels, inertia, n_iter, reseeds

    def fit(self, x: np.ndarray, y=None) -> KMeans:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise DataError(f"expected a 2-D array (n_samples, n_features), got {x.shape}")
        if not 1 <= self.n_clusters <= x.shape[0]:
            raise ConfigError(f"n_clusters={self.n_clusters} must be in [1, {x.shape[0]}]")
        if not np.isfinite(x).all():
            raise DataError("input contains NaN or infinite values")
        rng = np.random.default_rng(self.random_state)
        x_sq = (x * x).sum(1)
        best = None
        for _ in range(self.n_init):
            run = self._single_run(x, x_sq, rng)
            if best is None or run[2] < best[2]:
                best = run
        assert best is not None
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_, self.n_reseeds_ = best
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return _sq_dists(x, self.cluster_centers_, (x * x).sum(1)).argmin(1)

    def fit_predict(self, x: np.ndarray, y=None) -> np.ndarray:
        return self.fit(x).labels_
