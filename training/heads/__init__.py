"""Trainers of clustering heads on frozen embeddings: TEMI, SPICE, DeepCluster."""
