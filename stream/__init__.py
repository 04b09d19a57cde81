"""Online half: sources, windowing, ONNX inference, cluster assignment, sinks, metrics."""
