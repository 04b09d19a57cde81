"""Offline half: datasets, features, self-supervised encoders, clustering heads, evaluation."""
