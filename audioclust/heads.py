"""Clustering heads on embeddings, scikit-learn style: hyperparameters in the constructor,
``fit(embeddings)``, ``predict`` / ``predict_proba``; the fitted ``head_`` exports with
``audioclust-export``. Needs the ``train`` extra (torch)."""

from __future__ import annotations

from audioclust.training.heads.deepcluster import DeepCluster, DeepClusterSettings
from audioclust.training.heads.spice import SPICE, SPICESettings
from audioclust.training.heads.temi import TEMI, TEMISettings

__all__ = ["SPICE", "TEMI", "DeepCluster", "DeepClusterSettings", "SPICESettings",
           "TEMISettings"]
