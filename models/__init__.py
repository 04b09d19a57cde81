"""Model-side building blocks: audio I/O, the log-mel frontend, encoders, heads, config."""
