"""Trainers of clustering heads on frozen embeddings: TEMI, SPICE, DeepCluster.

Each is a scikit-learn-style estimator (hyperparameters in the constructor, ``fit`` then
``predict``) whose fitted ``head_`` is a :class:`audioclust.models.heads.ClusterHead`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from audioclust.models.heads import ClusterHead

__all__ = ["HeadEstimator"]


class HeadEstimator:
    """Inference shared by the head trainers, from the fitted ``head_``."""

    head_: ClusterHead
    labels_: np.ndarray

    @staticmethod
    def _check_n_clusters(n_clusters: int) -> None:
        if n_clusters < 2:
            raise ValueError(f"n_clusters: need at least 2 clusters, got {n_clusters}")

    def _check_fitted(self) -> ClusterHead:
        head = getattr(self, "head_", None)
        if head is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")
        return head

    @torch.no_grad()
    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """The selected head's posterior (n, K)."""
        head = self._check_fitted().eval()
        return head(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))).numpy()

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """The selected head's cluster of each row."""
        return self.predict_proba(embeddings).argmax(1)

    def fit_predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self.fit(embeddings).labels_  # type: ignore[attr-defined]

    def get_params(self) -> dict[str, Any]:
        """The constructor's settings (without the progress/log hooks)."""
        return {k: v for k, v in vars(self).items()
                if not k.endswith("_") and k not in ("progress", "log")}
