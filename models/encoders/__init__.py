"""Audio encoders: log-mel (B, 1, 64, T) -> clip embedding (B, d)."""
