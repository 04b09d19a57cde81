"""Running an exported audioclust model on ONNX Runtime: the one loader for everything.

No torch here: the streaming service imports this and onnxruntime only. The loader reads
and checks the model's metadata, picks the CUDA execution provider when ONNX Runtime has
it and the CPU provider otherwise (the choice is logged and exposed as ``provider``),
sets thread counts, and embeds windows of any lengths with :meth:`OnnxModel.embed`:
length-bucketed batches, zero-padded only where lengths differ, each row with its length,
which the graph uses to ignore the padding.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audioclust.models.errors import ConfigError, DataError, ModelError

from .reference import NoveltyReference

__all__ = ["ModelError", "ModelInfo", "OnnxModel", "available_providers"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "audioclust-model"
SUPPORTED_VERSIONS = ("1",)
_INPUTS = {"waveform": "tensor(float)", "lengths": "tensor(int64)"}
_OUTPUTS = ("embedding", "posterior")


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
        raise ConfigError(f"execution provider {name} is not available here (have: "
                          f"{', '.join(available)}); the gpu extra installs onnxruntime-gpu")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


class OnnxModel:
    """An exported model, ready to run.

    ``provider``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or a full
    provider name. ``threads``: intra-op threads (0 lets ONNX Runtime decide).
    ``device_id``: the GPU the CUDA provider runs on. On CUDA every batch runs through
    I/O binding: the inputs are copied to the GPU once and the outputs are allocated
    there by ONNX Runtime, then copied back, instead of ONNX Runtime's per-call staging.
    """

    def __init__(self, path: str | os.PathLike, provider: str = "auto", threads: int = 0,
                 device_id: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(self.path, "no such model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; ours are clearer
        providers = _choose_providers(provider)
        if "CUDAExecutionProvider" in providers:
            _preload_cuda_libraries()
        provider_options = [{"device_id": str(device_id)} if p == "CUDAExecutionProvider"
                            else {} for p in providers]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers,
                                                provider_options=provider_options)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(self.path, f"not a loadable ONNX model ({first})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, self.path)
        self._check_signature()
        self.provider = self.session.get_providers()[0]
        self.device_id = device_id
        #: Where the outputs are allocated: "cuda" binds them on the GPU, None runs plainly.
        self.output_device: str | None = "cuda" if self.provider == "CUDAExecutionProvider" \
            else None
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
        """An encoder without a clustering head: :meth:`embed` gives no posterior."""
        return self.info.n_clusters == 0

    @property
    def _outputs(self) -> tuple[str, ...]:
        return _OUTPUTS[:1] if self.head_free else _OUTPUTS

    def _run(self, batch: np.ndarray,
             lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One call of the graph on a (B, T) float32 batch and its (B,) int64 lengths."""
        names = list(self._outputs)
        if self.output_device is None:
            out = self.session.run(names, {"waveform": batch, "lengths": lengths})
        else:
            binding = self.session.io_binding()
            binding.bind_cpu_input("waveform", batch)
            binding.bind_cpu_input("lengths", lengths)
            for name in names:
                binding.bind_output(name, self.output_device, self.device_id)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()
        return out[0], (None if self.head_free else out[1])

    def embed(self, windows: Sequence[np.ndarray] | np.ndarray, max_batch: int = 32,
              on_batch: Callable[[int, float], None] | None = None,
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings (n, d) and posteriors (n, K) of mono float32 windows at the model's
        rate, in their order; a head-free model gives None for the posteriors.

        Windows may differ in length; each must be at least ``info.min_samples`` long.
        They run in batches of at most ``max_batch``: the windows of a length that
        several share (a stream's full windows) as they are, the others (the tails of
        ended streams) sorted by length and zero-padded together, each row with its
        length, which the graph uses to ignore the padding. A (B, T) array is B windows of
        one length. ``on_batch(size, seconds)`` is called after each batch.
        """
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        n = len(windows)
        emb = np.zeros((n, self.info.embedding_dim), np.float32)
        post = None if self.head_free else np.zeros((n, self.info.n_clusters), np.float32)
        if n == 0:
            return emb, post
        if isinstance(windows, np.ndarray) and windows.ndim != 2:
            raise DataError(f"expected (batch, samples) or a list of 1-D windows, got shape "
                            f"{windows.shape}")
        lengths = np.array([len(w) for w in windows], dtype=np.int64)
        short = int(lengths.min())
        if short < self.info.min_samples:
            raise DataError(f"a window of {short} samples is shorter than the model's "
                            f"minimum {self.info.min_samples}")
        for idx in _buckets(lengths, max_batch):
            t0 = time.perf_counter()
            if isinstance(windows, np.ndarray):
                whole = len(idx) == n and bool((idx == np.arange(n)).all())
                batch = np.ascontiguousarray(windows if whole else windows[idx],
                                             dtype=np.float32)
            else:
                batch = np.zeros((len(idx), int(lengths[idx].max())), dtype=np.float32)
                for row, i in enumerate(idx):
                    batch[row, : lengths[i]] = windows[i]
            z, p = self._run(batch, lengths[idx])
            emb[idx] = z
            if post is not None:
                post[idx] = p
            if on_batch is not None:
                on_batch(len(idx), time.perf_counter() - t0)
        return emb, post


def _buckets(lengths: np.ndarray, max_batch: int) -> list[np.ndarray]:
    """Index batches of at most ``max_batch``: each length several windows share on its
    own (no padding), the lengths no other window has sorted and packed together."""
    values, counts = np.unique(lengths, return_counts=True)
    shared = set(values[counts > 1].tolist())
    groups = [np.flatnonzero(lengths == v) for v in values if v in shared]
    single = np.flatnonzero(~np.isin(lengths, list(shared)))
    groups.append(single[np.argsort(lengths[single], kind="stable")])
    return [g[lo : lo + max_batch] for g in groups for lo in range(0, len(g), max_batch)]


def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels when they are installed
    (``onnxruntime-gpu[cuda,cudnn]``), so no system CUDA install is needed."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # ONNX Runtime >= 1.21
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a system CUDA install may still serve
            log.debug("onnxruntime.preload_dlls: %s", exc)
