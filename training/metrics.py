"""Clustering quality against reference labels: NMI, ARI, Hungarian accuracy, purity.

All four work from the contingency table, so the number of clusters may differ from the
number of classes, and label values are arbitrary (a permutation scores the same).
Noise labels (DBSCAN's -1) are treated as one more cluster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import comb

from audioclust.models.errors import DataError

__all__ = [
    "ClusteringScores",
    "accuracy",
    "adjusted_rand_index",
    "contingency",
    "hungarian_mapping",
    "nmi",
    "purity",
    "score_all",
]


def contingency(labels_true, labels_pred) -> np.ndarray:
    """Counts n[i, j] of items in class i and cluster j, shape (n_classes, n_clusters)."""
    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise DataError(f"label arrays differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise DataError("no labels to score")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((ti.max() + 1, pi.max() + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information, I(Y;C) / sqrt(H(Y) H(C)) (the notes' definition).

    Defined as 1 when both labelings are a single group (nothing to tell apart) and 0 when
    exactly one of them is.
    """
    n = contingency(labels_true, labels_pred)
    h_true, h_pred = _entropy(n.sum(1)), _entropy(n.sum(0))
    if h_true == 0 and h_pred == 0:
        return 1.0
    if h_true == 0 or h_pred == 0:
        return 0.0
    total = n.sum()
    nz = n > 0
    outer = np.outer(n.sum(1), n.sum(0))
    mi = float((n[nz] / total * np.log(n[nz] * total / outer[nz])).sum())
    return float(np.clip(mi / np.sqrt(h_true * h_pred), 0.0, 1.0))


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Hubert-Arabie adjusted Rand index: 1 for identical partitions, ~0 for chance."""
    n = contingency(labels_true, labels_pred)
    total = comb(n.sum(), 2)
    sum_ij = comb(n, 2).sum()
    sum_a = comb(n.sum(1), 2).sum()
    sum_b = comb(n.sum(0), 2).sum()
    expected = sum_a * sum_b / total if total else 0.0
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:  # both trivial partitions: they agree perfectly
        return 1.0
    return float((sum_ij - expected) / (max_index - expected))


def hungarian_mapping(labels_true, labels_pred) -> dict:
    """The one-to-one cluster -> class map that maximises matched items.

    With more clusters than classes the surplus clusters stay unmapped (their items count
    as errors); with fewer, some classes get no cluster.
    """
    t_vals = np.unique(np.asarray(labels_true))
    p_vals = np.unique(np.asarray(labels_pred))
    n = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(n, maximize=True)
    return {p_vals[c].item(): t_vals[r].item() for r, c in zip(rows, cols, strict=True)}


def accuracy(labels_true, labels_pred) -> float:
    """Clustering accuracy: fraction correct under the best one-to-one cluster->class map."""
    n = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(n, maximize=True)
    return float(n[rows, cols].sum() / n.sum())


def purity(labels_true, labels_pred) -> float:
    """Fraction of items whose cluster's majority class is their class (many-to-one)."""
    n = contingency(labels_true, labels_pred)
    return float(n.max(axis=0).sum() / n.sum())


@dataclass(frozen=True)
class ClusteringScores:
    nmi: float
    ari: float
    acc: float
    purity: float
    n_clusters: int

    def to_dict(self) -> dict:
        return asdict(self)


def score_all(labels_true, labels_pred) -> ClusteringScores:
    return ClusteringScores(
        nmi=nmi(labels_true, labels_pred),
        ari=adjusted_rand_index(labels_true, labels_pred),
        acc=accuracy(labels_true, labels_pred),
        purity=purity(labels_true, labels_pred),
        n_clusters=int(np.unique(np.asarray(labels_pred)).size),
    )
