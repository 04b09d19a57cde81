"""The linear probe: how linearly separable frozen embeddings are by reference labels.

The EVAR protocol as the research notes used it: logistic regression (default L2
strength) on features standardised on each fold's training part only (test clips must
not leak into the scaling), stratified k-fold, mean and std over folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audioclust.models.errors import ConfigError

__all__ = ["PROBE_MAX_ITER", "ProbeResult", "check_folds", "linear_probe"]

PROBE_MAX_ITER = 1000  # lbfgs on standardised features converges well within this


@dataclass(frozen=True)
class ProbeResult:
    """Linear-probe accuracy per fold, with its mean and (population) std over folds."""

    folds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds))

    @property
    def std(self) -> float:
        return float(np.std(self.folds))

    def to_dict(self) -> dict:
        return {"mean": round(self.mean, 4), "std": round(self.std, 4),
                "folds": [round(a, 4) for a in self.folds]}


def check_folds(y: np.ndarray, folds: int, name: str = "folds") -> None:
    """Stratified k-fold needs every class in every fold (ConfigError naming ``name``)."""
    smallest = int(np.bincount(y[y >= 0]).min(initial=len(y)))
    if folds < 2 or folds > smallest:
        raise ConfigError(f"{name} {folds}: need 2 <= folds <= the smallest class's size "
                          f"({smallest} clips)")


def linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = PROBE_MAX_ITER,
    log: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Accuracy of logistic regression on the embeddings ``x`` (n, d) for the integer
    labels ``y`` (n,), stratified ``folds``-fold cross-validation split by ``seed``."""
    check_folds(y, folds)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)
    accs: list[float] = []
    for i, (train, test) in enumerate(splits, start=1):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x[train], y[train])
        if log and any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log(f"linear probe fold {i}: not converged in {max_iter} iterations")
        accs.append(float(model.score(x[test], y[test])))
    return ProbeResult(tuple(accs))
