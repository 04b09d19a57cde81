"""Any ONNX audio encoder, waveform (B, T) -> embedding (B, D), as an audioclust encoder.

A user's export of CLAP, BEATs, PANNs, ... runs on ONNX Runtime: :class:`OnnxEncoder`
embeds clips with it (heads train on those embeddings), and :func:`merge_with_head`
joins it and a clustering head into one graph with :mod:`onnx.compose`, with the
``waveform`` / ``lengths`` inputs and ``embedding`` / ``posterior`` outputs every
audioclust model has, so ``audioclust-stream`` runs it.

What the model is, from flags (:class:`OnnxEncoderOptions`) or else its metadata
properties: ``sample_rate`` (required, Hz), ``waveform_input`` and ``embedding_output``
(tensor names; not needed when the graph has one input and one output), ``min_samples``
(shortest input it takes; default 1). The embedding width comes from the output's shape
(or one run on silence when it is dynamic).

The graph takes no lengths, so clips are never zero-padded together: clips of equal
length are batched, the others run one by one. A graph with a fixed input length gets
every clip cut or zero-padded to it. The merged model's ``lengths`` input is accepted and
unused (its rows are equal-length stream windows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audioclust.models.errors import ConfigError, DataError, ModelError

from .embedder import embed_by_length

__all__ = ["OnnxEncoder", "OnnxEncoderOptions", "merge_with_head"]


@dataclass(frozen=True)
class OnnxEncoderOptions:
    """What flags say about an ONNX encoder; None: from its metadata (or its signature)."""

    sample_rate: int | None = None
    input_name: str | None = None
    output_name: str | None = None

    def __post_init__(self) -> None:
        if self.sample_rate is not None and self.sample_rate < 1:
            raise ConfigError(f"ONNX encoder sample rate must be positive, got "
                              f"{self.sample_rate}")


def _pick(kind: str, names: list[str], flag: str | None, meta: str | None, path: Path,
          flag_name: str, meta_key: str) -> str:
    chosen = flag or meta
    if chosen is None:
        if len(names) != 1:
            raise ModelError(path, f"the graph has {len(names)} {kind}s ({', '.join(names)}); "
                             f"name one with {flag_name} or the metadata key {meta_key}")
        return names[0]
    if chosen not in names:
        raise ModelError(path, f"no {kind} {chosen!r} (the graph has {', '.join(names)})")
    return chosen


class OnnxEncoder:
    """An ONNX waveform encoder on ONNX Runtime; see the module docstring."""

    def __init__(self, path: str | os.PathLike, options: OnnxEncoderOptions | None = None,
                 provider: str = "cpu", threads: int = 0):
        import onnxruntime as ort

        from .runtime import _choose_providers

        options = options or OnnxEncoderOptions()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so,
                                                providers=_choose_providers(provider))
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelError(self.path, f"not a loadable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") == "audioclust-model":
            raise ModelError(self.path, "an exported audioclust model, not an encoder; "
                             "stream it with audioclust-stream")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.input_name = _pick("input", list(inputs), options.input_name,
                                meta.get("waveform_input"), self.path, "--onnx-input",
                                "waveform_input")
        self.output_name = _pick("output", list(outputs), options.output_name,
                                 meta.get("embedding_output"), self.path, "--onnx-output",
                                 "embedding_output")
        inp, out = inputs[self.input_name], outputs[self.output_name]
        if inp.type != "tensor(float)" or len(inp.shape) != 2:
            raise ModelError(self.path, f"input {self.input_name!r} is {inp.type} of rank "
                             f"{len(inp.shape)}; an encoder takes float waveforms (batch, "
                             "samples)")
        if len(out.shape) != 2:
            raise ModelError(self.path, f"output {self.output_name!r} has rank "
                             f"{len(out.shape)}; an encoder gives embeddings (batch, dim)")
        if options.sample_rate is not None:
            self.sample_rate = int(options.sample_rate)
        elif "sample_rate" in meta:
            try:
                self.sample_rate = int(float(meta["sample_rate"]))
            except ValueError:
                raise ModelError(self.path, f"metadata sample_rate {meta['sample_rate']!r} "
                                 "is not a number") from None
        else:
            raise ModelError(self.path, "sample rate unknown: give --onnx-sample-rate or "
                             "store sample_rate in the model's metadata")
        if self.sample_rate < 1:
            raise ModelError(self.path, "sample rate must be positive")
        self.static_length = inp.shape[1] if isinstance(inp.shape[1], int) else None
        self.min_samples = max(1, int(meta.get("min_samples", 0) or 0),
                               self.static_length or 0)
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        dim = out.shape[1]
        if not isinstance(dim, int):
            dim = self._run([np.zeros(max(self.min_samples, self.sample_rate), np.float32)]
                            ).shape[1]
        self.embed_dim = int(dim)
        self.metadata = dict(meta)

    def _fit(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip, dtype=np.float32)
        if self.static_length is not None:
            clip = clip[: self.static_length]
        target = max(self.min_samples, len(clip))
        return np.pad(clip, (0, target - len(clip))) if target > len(clip) else clip

    def _run(self, clips: list[np.ndarray]) -> np.ndarray:
        return self.run_batch(np.stack([self._fit(c) for c in clips]))

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """(B, T) float32 waveforms -> (B, D) embeddings; one-line error if the model fails."""
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(self.path, f"the model failed on a batch of shape "
                             f"{batch.shape} ({first})") from None
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise ModelError(self.path, f"output of shape {out.shape} for {batch.shape[0]} "
                             "clips")
        return out

    def embed(self, clips: list[np.ndarray], batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """(n, D) float32 embeddings; clips batched with others of the same length."""
        size = 1 if self.static_batch == 1 else batch_size
        return embed_by_length(self.run_batch, [self._fit(c) for c in clips], self.embed_dim,
                               size, progress)

    def describe(self) -> dict[str, Any]:
        return {"name": "onnx", "file": self.path.name, "input": self.input_name,
                "output": self.output_name, "sample_rate": self.sample_rate}


def _with_opset(model: Any, version: int) -> Any:
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current == version:
        return model
    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:
        raise DataError(f"cannot bring the encoder graph from opset {current} to {version} "
                        f"for merging ({str(exc).splitlines()[0][:160]})") from None


def merge_with_head(encoder: OnnxEncoder, head_model: Any | None) -> Any:
    """One graph: ``waveform`` (B, T) and ``lengths`` (B,) -> ``embedding`` (and
    ``posterior`` when ``head_model``, an ONNX graph ``embedding`` -> ``posterior``, is
    given). The encoder's tensors are renamed under ``encoder/``."""
    import onnx
    from onnx import TensorProto, compose, helper

    model = onnx.load(encoder.path)
    if head_model is not None:
        head_opset = next(o.version for o in head_model.opset_import
                          if o.domain in ("", "ai.onnx"))
        enc_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         head_opset)
        target = max(head_opset, enc_opset)
        model = _with_opset(model, target)
        head_model = _with_opset(head_model, target)
    model = compose.add_prefix(model, "encoder/")
    g = model.graph
    old_in, old_out = f"encoder/{encoder.input_name}", f"encoder/{encoder.output_name}"
    kept = [i for i in g.input if i.name != old_in and i.name.startswith("encoder/")
            and not any(init.name == i.name for init in g.initializer)]
    if kept:
        raise ModelError(encoder.path, f"the graph has other inputs "
                         f"({', '.join(i.name[8:] for i in kept)}); an encoder takes one")
    params = [i for i in g.input if i.name != old_in]
    del g.input[:]
    g.input.extend([
        helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"]),
        helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        *params,
    ])
    g.node.insert(0, helper.make_node("Identity", ["waveform"], [old_in], name="waveform_in"))
    g.node.append(helper.make_node("Identity", [old_out], ["embedding"], name="embedding_out"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                                  ["batch", encoder.embed_dim]))
    if head_model is None:
        return model
    ir = max(model.ir_version, head_model.ir_version)
    model.ir_version = head_model.ir_version = ir
    head_in = head_model.graph.input[0].name
    return compose.merge_models(model, head_model, io_map=[("embedding", head_in)],
                                outputs=["embedding", "posterior"])
