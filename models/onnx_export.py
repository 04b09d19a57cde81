"""Export torch modules to ONNX with dynamic axes, and attach metadata properties.

One function does it for every module of the project (frontend, encoders, heads, the full
waveform-to-posterior graph), so they all get the same opset and the same exporter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch

__all__ = ["OPSET", "export_onnx", "set_metadata"]

OPSET = 18


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model's metadata properties with ``metadata`` (string values)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, str] | None = None,
    min_sizes: Mapping[str, int] | None = None,
) -> Path:
    """Export ``module`` in eval mode to ``path`` (opset :data:`OPSET`, one file).

    ``dynamic_axes`` names the dynamic axes of each input (``{"waveform": {0: "batch",
    1: "samples"}}``); equal names share one symbol. ``min_sizes`` gives a symbol's lower
    bound (a frontend needs at least a window of samples, say).
    """
    min_sizes = dict(min_sizes or {})
    dims: dict[str, torch.export.Dim] = {}
    for axes in dynamic_axes.values():
        for name in axes.values():
            if name not in dims:
                # Batch 1 examples would otherwise be specialised; min 1 keeps it dynamic.
                dims[name] = torch.export.Dim(name, min=min_sizes.get(name, 1))
    shapes = {
        name: {axis: dims[sym] for axis, sym in dynamic_axes.get(name, {}).items()}
        for name in input_names
    }
    was_training = module.training
    module.eval()
    out = Path(path)
    try:
        # The exporter narrates every pass on stdout; keep command output clean.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # ...and logs that torchvision's ops are absent, which this project never uses.
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                example_inputs,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
    finally:
        module.train(was_training)
    model = program.model_proto
    if metadata:
        set_metadata(model, metadata)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    return out
