"""Self-supervised trainers for the encoders (BYOL-A, MSN, SLICER)."""
