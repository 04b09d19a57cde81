"""One ONNX graph from a waveform to the clip embedding and the cluster posterior.

Inputs: ``waveform`` (B, T) float32 at the encoder's sample rate and ``lengths`` (B,)
int64 (real samples per row, so rows of a batch may be zero-padded to a common T).
Outputs: ``embedding`` (B, d) and ``posterior`` (B, K). Batch and length are dynamic. The
metadata properties carry what a runtime needs to use the model without any training
code: see :data:`METADATA_KEYS`.

The encoder is any encoder spec (``models/encoder_spec.py``): torch encoders (audioclust
checkpoints, the pretrained log-mel CNNs, Hugging Face models) are exported with the head
by torch; an ``onnx:`` encoder's own graph is merged with the exported head by
:func:`~audioclust.models.onnx_encoder.merge_with_head`. A pretrained encoder's credit
and licence travel in the ``encoder`` metadata.

With training audio (``reference_data``; ``audioclust-export --data DIR``) the metadata
also carries ``novelty_reference``: the exported graph embeds that audio cut into the
stream's windows and :class:`~audioclust.models.reference.NoveltyReference` summarises
it, so the stream can tell audio unlike the training data from the first window on.
It is computed from the audio rather than carried by the head checkpoint because it must
describe what the stream sees: the exported (possibly int8) graph, on windows, behind the
energy gate; head-free models get one the same way. One pass of the model over the data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from audioclust.models.errors import ConfigError, DataError, ModelError
from audioclust.stream.window import check_geometry

from .encoder_spec import WaveformEncoder, open_encoder
from .heads import ClusterHead, load_head, read_head_metadata
from .onnx_export import export_onnx, set_metadata

__all__ = [
    "METADATA_KEYS", "MODEL_FORMAT", "REFERENCE_KEY", "ExportResult", "FullModel", "export_model",
    "quantize_model",
]

MODEL_FORMAT = "audioclust-model"
#: Metadata every exported model carries (all strings; JSON where structured).
METADATA_KEYS = (
    "format", "format_version", "audioclust_version", "sample_rate", "window_seconds",
    "hop_seconds", "min_samples", "frontend", "embedding_dim", "n_clusters", "prior",
    "encoder", "encoder_method", "head_method", "training_data", "weights_sha256",
    "quantization", "description",
)
#: Optional metadata: the novelty reference (JSON), present when exported with audio.
REFERENCE_KEY = "novelty_reference"
FORMAT_VERSION = "1"


class FullModel(nn.Module):
    """Waveform (B, T) + lengths (B,) -> (embedding (B, d), posterior (B, K)).

    Without a head (head-free export) the graph returns the embedding alone.
    """

    def __init__(self, embedder: nn.Module, head: ClusterHead | None):
        super().__init__()
        if head is not None and head.config.in_dim != embedder.embed_dim:
            raise DataError(f"head expects {head.config.in_dim}-d embeddings, encoder gives "
                            f"{embedder.embed_dim}")
        self.embedder = embedder
        self.head = head

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        z = self.embedder(waveform, lengths)
        if self.head is None:
            return z
        return z, self.head(z)


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]


def _version() -> str:
    try:
        return importlib_metadata.version("audioclust")
    except importlib_metadata.PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"


def _weights_sha256(model: onnx.ModelProto) -> str:
    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode())
        h.update(init.SerializeToString())
    return h.hexdigest()


def _check_prior(head: ClusterHead, path: str | os.PathLike) -> None:
    """The streaming assigner divides by the prior: every entry must be finite and > 0."""
    bad = [i for i, p in enumerate(head.prior.tolist()) if not (math.isfinite(p) and p > 0)]
    if bad:
        raise ModelError(path, f"the head's cluster prior is zero or not finite for "
                         f"cluster(s) {bad}; retrain the head (its trainer smooths the prior)")


def export_model(
    encoder_path: str | os.PathLike | WaveformEncoder,
    head_path: str | os.PathLike | None,
    out: str | os.PathLike,
    window_seconds: float = 1.0,
    hop_seconds: float = 0.5,
    quantize: str | None = None,
    description: str = "",
    reference_data: str | os.PathLike | None = None,
    progress: bool = False,
) -> ExportResult:
    """Export encoder (any encoder spec) + head checkpoint to one ONNX file at ``out``.

    ``head_path=None`` exports the encoder alone (head-free): the graph's only output is
    the embedding, the metadata says ``n_clusters`` 0, ``prior`` [] and ``head_method``
    "none", and audioclust-stream clusters the embeddings online instead.

    ``window_seconds``/``hop_seconds`` are the streaming window the model is meant for
    (recorded in the metadata; the graph itself takes any length above ``min_samples``).
    ``quantize="int8"`` applies ONNX Runtime's dynamic quantisation to the encoder and
    head weights (the frontend's DFT stays float: it sets the spectrum's precision).
    """
    if quantize not in (None, "int8"):
        raise ConfigError(f"unknown quantisation {quantize!r}; use int8 or none")
    check_geometry(window_seconds, hop_seconds, " s")
    reference_paths = None if reference_data is None else _reference_paths(reference_data)
    enc = open_encoder(encoder_path)
    head_meta = read_head_metadata(head_path) if head_path is not None else None
    # as audioclust-eval head checks: a head recording its encoder's identity needs that one
    if (head_meta is not None and head_meta["encoder_sha256"]
            and head_meta["encoder_sha256"] != enc.sha256):
        raise DataError(f"{head_path} was trained on the encoder with SHA-256 "
                        f"{head_meta['encoder_sha256'][:12]}..., but {enc.spec} is "
                        f"{enc.sha256[:12]}...: pass the encoder the head was trained with")
    head = load_head(head_path) if head_path is not None else None
    if head is not None and head.config.in_dim != enc.embed_dim:
        raise DataError(f"head expects {head.config.in_dim}-d embeddings, encoder gives "
                        f"{enc.embed_dim}")
    if head is not None:
        _check_prior(head, head_path)
    sr = enc.sample_rate
    embedder = enc.embedder
    if embedder is not None:
        frontend = embedder.frontend.config.to_dict()
        min_samples = max(embedder.min_samples, embedder.frontend.config.n_fft)
    else:
        frontend = {"kind": enc.kind}
        min_samples = enc.min_samples
    if window_seconds * sr < min_samples:
        raise ConfigError(f"window {window_seconds} s is shorter than the model's minimum "
                          f"{min_samples / sr:.3f} s")

    meta: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "audioclust_version": _version(),
        "sample_rate": sr,
        "window_seconds": window_seconds,
        "hop_seconds": hop_seconds,
        "min_samples": min_samples,
        "frontend": json.dumps(frontend, sort_keys=True),
        "embedding_dim": enc.embed_dim,
        "n_clusters": 0 if head is None else head.config.n_clusters,
        "prior": json.dumps([] if head is None else [round(float(p), 8) for p in head.prior]),
        "encoder": json.dumps(enc.description, sort_keys=True),
        "encoder_method": enc.method,
        "head_method": "none" if head_meta is None else head_meta["method"],
        "training_data": json.dumps({"encoder": enc.info.get("data", ""),
                                     "encoder_clips": enc.info.get("clips"),
                                     "head": "" if head_meta is None
                                     else head_meta["info"].get("data", "")}),
        "quantization": quantize or "none",
        "description": description,
    }
    out = Path(out)
    float_path = out if quantize is None else out.with_suffix(".fp32.onnx")
    if enc.onnx is not None:
        _export_onnx_encoder(enc, head, float_path)
    else:
        model = FullModel(enc.require_module("export"), head).eval()
        example = (torch.zeros(2, int(window_seconds * sr)),
                   torch.full((2,), int(window_seconds * sr)))
        outputs = ["embedding"] if head is None else ["embedding", "posterior"]
        export_onnx(
            model, example, float_path, ["waveform", "lengths"], outputs,
            {"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}},
            min_sizes={"samples": min_samples},
        )
    if quantize == "int8":
        _quantize_int8(float_path, out)
        float_path.unlink()
    onnx_model = onnx.load(out)
    meta["weights_sha256"] = _weights_sha256(onnx_model)
    strings = {k: str(v) for k, v in meta.items()}
    set_metadata(onnx_model, strings)
    onnx.save(onnx_model, out)
    if reference_paths is not None:
        try:
            strings[REFERENCE_KEY] = _novelty_reference(out, reference_paths, progress)
        except BaseException:
            out.unlink(missing_ok=True)  # no model that silently lacks what was asked for
            raise
        set_metadata(onnx_model, strings)
        onnx.save(onnx_model, out)
    return ExportResult(out, strings)


def _reference_paths(data: str | os.PathLike) -> list[Path]:
    from .audio import find_audio_files

    root = Path(data)
    paths = [root] if root.is_file() else find_audio_files(root) if root.is_dir() else []
    if not paths:
        raise DataError(f"{root}: no audio files for the novelty reference")
    return paths


def _novelty_reference(model_path: Path, paths: list[Path], progress: bool) -> str:
    """The reference of the audio files ``paths``, embedded by the model at ``model_path``."""
    from .reference import NoveltyReference, reference_embeddings
    from .runtime import OnnxModel

    z, posterior = reference_embeddings(OnnxModel(model_path, provider="cpu"), paths,
                                        progress=progress)
    if posterior is not None:
        labels, source = posterior.argmax(1), "head"
    else:  # head-free: the clusters --clusters auto finds in the training windows
        from audioclust.training.nclusters import auto_clusters

        _, _, rows, found = auto_clusters(z)
        labels, source = np.full(z.shape[0], -1), "auto"
        labels[rows] = found
    return NoveltyReference.fit(z, labels, source).to_json()


def _export_onnx_encoder(enc: WaveformEncoder, head: ClusterHead | None, out: Path) -> None:
    """An onnx: encoder's own graph, merged with the head exported on its own."""
    import tempfile

    from .onnx_encoder import merge_with_head

    head_model = None
    if head is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(head.eval(), (torch.zeros(2, enc.embed_dim),),
                               Path(tmp) / "head.onnx", ["z"], ["posterior"],
                               {"z": {0: "batch"}})
            head_model = onnx.load(path)
    merged = merge_with_head(enc.onnx, head_model)
    onnx.checker.check_model(merged)
    onnx.save(merged, out)


def quantize_model(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """An int8 copy of an exported fp32 model at ``out``, with its metadata carried over
    (``quantization`` = int8, ``weights_sha256`` recomputed), as ``--quantize int8`` writes.
    """
    src, out = Path(src), Path(out)
    meta = {p.key: p.value for p in onnx.load(src).metadata_props}
    if meta.get("quantization", "none") != "none":
        raise ModelError(src, f"already quantised ({meta['quantization']})")
    # The quantiser writes scratch files beside its input: work on a copy next to ``out``
    # so nothing lands beside the source (the default model lives in the package).
    scratch = out.with_suffix(".fp32.onnx")
    shutil.copyfile(src, scratch)
    try:
        _quantize_int8(scratch, out)
    finally:
        scratch.unlink(missing_ok=True)
    model = onnx.load(out)
    meta["quantization"] = "int8"
    meta["weights_sha256"] = _weights_sha256(model)
    set_metadata(model, meta)
    onnx.save(model, out)
    return out


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(src)
    # The frontend's DFT convolution and mel matmul stay float: quantising the spectrum
    # costs far more accuracy than it saves time.
    keep_float = [n.name for n in model.graph.node
                  if any(i.startswith("embedder.frontend.") for i in n.input)]
    # The exporter's shape annotations trip the quantiser's own shape inference on
    # Gemm nodes; it re-derives them anyway.
    del model.graph.value_info[:]
    plain = src.with_suffix(".noshape.onnx")
    onnx.save(model, plain)
    try:
        quantize_dynamic(str(plain), str(dst), weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep_float,
                         op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    finally:
        plain.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``audioclust-export``: encoder + head checkpoint -> one ONNX model."""
    import argparse
    import sys

    from .cli import HelpFormatter, run_command
    from .encoder_spec import add_encoder_arguments, encoder_from_args

    parser = argparse.ArgumentParser(
        prog="audioclust-export",
        description=(
            "Export an encoder (a checkpoint from audioclust-train ssl, or a pretrained "
            "model: aisfx, panns:FILE, byola:FILE, onnx:FILE, hf:DIR) and a head checkpoint "
            "(audioclust-train head) as one ONNX graph: waveform + lengths at the encoder's "
            "sample rate -> embedding + cluster posterior, with the metadata "
            "audioclust-stream needs (a pretrained encoder's credit and licence included)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--general", action="store_true", help="build the general-audio model "
                        "audioclust-stream runs without --model (aisfx, head-free, the shipped "
                        "reference of speech and instrument notes; models/general.py) into the "
                        "user's cache, or to -o; without -o, nothing is done when the cached "
                        "one is current")
    add_encoder_arguments(parser, help="the encoder the head was trained on", required=False)
    parser.add_argument("--head", type=Path, help="head .safetensors; without it the model is "
                        "head-free (embedding only; audioclust-stream clusters online)")
    parser.add_argument("-o", "--output", type=Path, help="model .onnx to write (required "
                        "but with --general)")
    parser.add_argument("--quantize", choices=("int8",), help="dynamic int8 quantisation")
    parser.add_argument("--window", type=float, help="stream window, seconds (default 1)")
    parser.add_argument("--hop", type=float, help="stream hop, seconds (default 0.5)")
    parser.add_argument("--description", default="", help="free text stored in the model")
    parser.add_argument("--data", type=Path, help="the training audio (folder or file): the "
                        "model embeds it in stream windows and stores a novelty reference, so "
                        "audioclust-stream flags sound unlike it from the first window; "
                        "without it novelty rests on the stream's running statistics alone")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    args = parser.parse_args(argv)
    if args.general:
        given = [f for f, v in (("--encoder", args.encoder), ("--head", args.head),
                                ("--data", args.data), ("--window", args.window),
                                ("--hop", args.hop), ("--quantize", args.quantize),
                                ("--description", args.description or None))
                 if v is not None]
        if given:
            parser.error(f"--general builds a fixed model; it takes no {', '.join(given)}")
    elif args.encoder is None or args.output is None:
        parser.error("--encoder and -o/--output are required (or --general)")

    def general() -> int:
        from .general import build_general_model, general_model_path, is_current

        if args.output is None and is_current(general_model_path()):
            print(f"audioclust-export: general model {general_model_path()} is current",
                  file=sys.stderr)
            return 0
        result = build_general_model(args.output, progress=not args.quiet)
        ref = json.loads(result.metadata[REFERENCE_KEY])
        print(f"audioclust-export: built the general-audio model {result.path} (aisfx, "
              f"head-free, reference of {ref['windows']} windows)", file=sys.stderr)
        if args.json:
            print(json.dumps({"path": str(result.path), "metadata": result.metadata}))
        return 0

    def body() -> int:
        if args.general:
            return general()
        result = export_model(encoder_from_args(args.encoder, args), args.head, args.output,
                              1.0 if args.window is None else args.window,
                              0.5 if args.hop is None else args.hop, args.quantize,
                              args.description,
                              reference_data=args.data, progress=not args.quiet)
        if args.data is None:
            print("audioclust-export: no --data: the model carries no novelty reference",
                  file=sys.stderr)
        if args.json:
            print(json.dumps({"path": str(result.path), "metadata": result.metadata}))
        else:
            size = result.path.stat().st_size / 1e6
            k = result.metadata["n_clusters"]
            ref = result.metadata.get(REFERENCE_KEY)
            ref_text = "no novelty reference" if ref is None else \
                f"novelty reference of {json.loads(ref)['windows']} windows"
            print(f"wrote {result.path} ({size:.1f} MB, K={k if k != '0' else 'head-free'}, "
                  f"d={result.metadata['embedding_dim']}, {result.metadata['quantization']}, "
                  f"{ref_text})", file=sys.stderr)
        return 0

    return run_command("audioclust-export", body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
