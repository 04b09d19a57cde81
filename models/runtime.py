"""Running an exported audioclust model on ONNX Runtime: the one loader for everything.

No torch here: the streaming service imports this and onnxruntime only. The loader reads
and checks the model's metadata, picks the CUDA execution provider when ONNX Runtime has
it and the CPU provider otherwise (the choice is logged and exposed as ``provider``),
sets thread counts, and runs batches of variable-length audio by zero-padding them and
passing each row's length, which the graph uses to ignore the padding.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .reference import NoveltyReference

__all__ = ["ModelError", "ModelInfo", "OnnxModel", "available_providers"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "audioclust-model"
SUPPORTED_VERSIONS = ("1",)
_INPUTS = {"waveform": "tensor(float)", "lengths": "tensor(int64)"}
_OUTPUTS = ("embedding", "posterior")


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupt, not ours, or mismatched."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ModelInfo:
    """The metadata an exported model carries, parsed."""

    sample_rate: int
    window_seconds: float
    hop_seconds: float
    min_samples: int
    frontend: dict[str, Any]
    embedding_dim: int
    n_clusters: int
    prior: np.ndarray
    encoder: dict[str, Any]
    encoder_method: str
    head_method: str
    training_data: dict[str, Any]
    audioclust_version: str
    weights_sha256: str
    quantization: str
    description: str
    #: What the training audio looked like to the model (``novelty_reference``), if exported
    #: with it; the stream's novelty test rests on it.
    reference: NoveltyReference | None = None

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_seconds * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["prior"] = [float(p) for p in self.prior]
        ref = d.pop("reference")
        d["novelty_reference"] = None if ref is None else {"windows": ref.windows,
                                                           "alpha": ref.alpha}
        return d

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | os.PathLike) -> ModelInfo:
        if meta.get("format") != MODEL_FORMAT:
            raise ModelError(path, "not an audioclust model (no audioclust metadata; export "
                             "one with audioclust-export)")
        if meta.get("format_version") not in SUPPORTED_VERSIONS:
            raise ModelError(path, f"model format version {meta.get('format_version')!r}; "
                             f"this version reads {', '.join(SUPPORTED_VERSIONS)}")
        try:
            info = cls(
                sample_rate=int(meta["sample_rate"]),
                window_seconds=float(meta["window_seconds"]),
                hop_seconds=float(meta["hop_seconds"]),
                min_samples=int(meta["min_samples"]),
                frontend=json.loads(meta["frontend"]),
                embedding_dim=int(meta["embedding_dim"]),
                n_clusters=int(meta["n_clusters"]),
                prior=np.asarray(json.loads(meta["prior"]), dtype=np.float64),
                encoder=json.loads(meta["encoder"]),
                encoder_method=meta["encoder_method"],
                head_method=meta["head_method"],
                training_data=json.loads(meta["training_data"]),
                audioclust_version=meta["audioclust_version"],
                weights_sha256=meta["weights_sha256"],
                quantization=meta["quantization"],
                description=meta.get("description", ""),
                reference=None if "novelty_reference" not in meta
                else NoveltyReference.from_json(meta["novelty_reference"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(path, f"damaged metadata ({type(exc).__name__}: {exc})") from exc
        if info.reference is not None and info.reference.dim != info.embedding_dim:
            raise ModelError(path, f"novelty reference of {info.reference.dim}-d embeddings in a "
                             f"model of {info.embedding_dim}-d ones")
        if info.n_clusters == 0:  # head-free: embeddings only, no prior
            if info.prior.size:
                raise ModelError(path, f"head-free model (n_clusters 0) with a prior of "
                                 f"{info.prior.size} values")
        elif info.prior.shape != (info.n_clusters,) or not np.isclose(info.prior.sum(), 1, 1e-3):
            raise ModelError(path, f"metadata prior has shape {info.prior.shape} / sum "
                             f"{info.prior.sum():.4f}; expected {info.n_clusters} values "
                             "summing to 1")
        return info


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _choose_providers(requested: str) -> list[str]:
    available = available_providers()
    if requested == "auto":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(requested,
                                                                              requested)
    if name not in available:
        raise ValueError(f"execution provider {name} is not available here (have: "
                         f"{', '.join(available)}); the gpu extra installs onnxruntime-gpu")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


class OnnxModel:
    """An exported model, ready to run.

    ``provider``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or a full
    provider name. ``threads``: intra-op threads (0 lets ONNX Runtime decide).
    """

    def __init__(self, path: str | os.PathLike, provider: str = "auto", threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(self.path, "no such model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; ours are clearer
        providers = _choose_providers(provider)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(self.path, f"not a loadable ONNX model ({first})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, self.path)
        self._check_signature()
        self.provider = self.session.get_providers()[0]
        log.info("model %s on %s (requested %s)", self.path.name, self.provider, provider)

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        for name, dtype in _INPUTS.items():
            if name not in inputs:
                raise ModelError(self.path, f"model has no input {name!r} (inputs: "
                                 f"{sorted(inputs)})")
            if inputs[name].type != dtype:
                raise ModelError(self.path, f"input {name!r} is {inputs[name].type}, "
                                 f"expected {dtype}")
        outputs = [o.name for o in self.session.get_outputs()]
        if list(outputs) != list(self._outputs):
            raise ModelError(self.path, f"outputs {outputs}, expected {list(self._outputs)}")

    @property
    def head_free(self) -> bool:
        """An encoder without a clustering head: :meth:`run` gives no posterior."""
        return self.info.n_clusters == 0

    @property
    def _outputs(self) -> tuple[str, ...]:
        return _OUTPUTS[:1] if self.head_free else _OUTPUTS

    def _session_run(self, batch: np.ndarray,
                     lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(list(self._outputs), {"waveform": batch, "lengths": lengths})
        return out[0], (None if self.head_free else out[1])

    def run(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings (B, d) and posteriors (B, K) for mono float32 clips at the model's rate.

        Clips may differ in length; each must be at least ``info.min_samples`` long. A
        head-free model gives None for the posteriors.
        """
        if not clips:
            return (np.zeros((0, self.info.embedding_dim), np.float32),
                    None if self.head_free else np.zeros((0, self.info.n_clusters), np.float32))
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        short = int(lengths.min())
        if short < self.info.min_samples:
            raise ValueError(f"a clip of {short} samples is shorter than the model's minimum "
                             f"{self.info.min_samples}")
        batch = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
        for row, clip in enumerate(clips):
            batch[row, : len(clip)] = clip
        return self._session_run(batch, lengths)

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like :meth:`run` for an equal-length (B, T) float32 array, without copying."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2:
            raise ValueError(f"expected (batch, samples), got shape {batch.shape}")
        if batch.shape[1] < self.info.min_samples:
            raise ValueError(f"{batch.shape[1]} samples is shorter than the model's minimum "
                             f"{self.info.min_samples}")
        lengths = np.full(batch.shape[0], batch.shape[1], dtype=np.int64)
        return self._session_run(batch, lengths)
