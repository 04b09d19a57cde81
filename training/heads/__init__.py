"""Trainers of clustering heads on frozen embeddings: TEMI, SPICE, DeepCluster.

Each is a scikit-learn-style estimator (settings in the constructor, ``fit(embeddings)``
then ``predict``) whose fitted ``head_`` is a :class:`audioclust.models.heads.ClusterHead`;
:mod:`.base` holds what they share. SPICE's joint stage, which tunes the encoder too, is
:class:`.spice_finetune.SPICEFineTuner`.
"""

from __future__ import annotations

from audioclust.training.heads.base import HeadEstimator, HeadSettings, settings_from_table

__all__ = ["HeadEstimator", "HeadSettings", "settings_from_table"]
