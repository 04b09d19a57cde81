"""Encoder specs: the one place where a command's ``--encoder`` becomes a waveform encoder.

Every command that takes an encoder (``audioclust-eval baselines|encoder|head``,
``audioclust-train head``, ``audioclust-train ssl --init``, ``audioclust-export``) passes
its spec to :func:`open_encoder`:

===================  ======================================================================
spec                 encoder
===================  ======================================================================
``PATH.safetensors``  an audioclust embedder checkpoint (``audioclust-train ssl``)
``aisfx``            the aiSFX sound-effects CNN from the installed ``aisfx`` package
                     (``aisfx:FILE`` for another copy of its ``checkpoint.pth``); 512-d
``panns:FILE``       a released PANNs CNN14 checkpoint (16 or 32 kHz); 2048-d
``byola:FILE``       a released BYOL-A AudioNTT2020 checkpoint; 512/1024/2048-d
``onnx:FILE``        any ONNX model waveform (B, T) -> embedding (B, D), run on ONNX
                     Runtime; sample rate and tensor names from ``--onnx-*`` or its metadata
``hf:DIR``           a Hugging Face audio encoder saved in DIR (AST, wav2vec2, HuBERT, CLAP's
                     audio tower); needs the ``pretrained`` extra
===================  ======================================================================

The result, :class:`WaveformEncoder`, says what every command needs: the sample rate to
decode audio at, the shortest clip, the embedding width, a stable identity (``sha256``:
the file's own for a checkpoint, else a digest of the kind and the weight files' content)
that heads record and the commands check, the description stored in exported models, and
how to embed clips. Weights come only from the named files; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audioclust.models.errors import ConfigError, ModelError

from .checkpoint import file_sha256
from .embedder import (
    Embedder,
    embed_by_length,
    embed_clips,
    load_embedder,
    read_embedder_metadata,
)
from .encoders import build_encoder, encoder_name
from .onnx_encoder import OnnxEncoder, OnnxEncoderOptions

__all__ = [
    "SPEC_HELP", "WaveformEncoder", "add_encoder_arguments", "encoder_from_args",
    "onnx_options_from_args", "open_encoder",
]

SPEC_HELP = ("an audioclust checkpoint (.safetensors), aisfx, aisfx:FILE, panns:FILE, "
             "byola:FILE, onnx:FILE or hf:DIR (see the README's 'Encoders')")
PRETRAINED_KINDS = ("aisfx", "panns", "byola", "onnx", "hf")
_IDENTITY_VERSION = "audioclust-encoder-spec/1"


@dataclass
class WaveformEncoder:
    """An encoder as the commands use it: waveform at ``sample_rate`` -> (n, embed_dim).

    ``module`` is the torch network (``forward(waveform, lengths)``; an :class:`Embedder`
    for the log-mel kinds), or None for an ONNX model (``onnx``). ``description`` goes into
    an exported model's ``encoder`` metadata, ``info`` into its training data and method.
    """

    spec: str
    kind: str
    name: str
    sample_rate: int
    min_samples: int
    embed_dim: int
    sha256: str
    description: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    onnx: OnnxEncoder | None = None
    randomise: Callable[[int], nn.Module] | None = None

    @property
    def embedder(self) -> Embedder | None:
        """The log-mel embedder (frontend + normalisation + encoder), if this is one."""
        return self.module if isinstance(self.module, Embedder) else None

    @property
    def method(self) -> str:
        """How the encoder was trained: the checkpoint's method, or ``pretrained:KIND``."""
        return str(self.info.get("method", "unknown"))

    def embed(self, clips: list[np.ndarray], batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """(n, embed_dim) float32 embeddings of mono clips at :attr:`sample_rate`."""
        if self.onnx is not None:
            return self.onnx.embed(clips, batch_size=batch_size, progress=progress)
        assert self.module is not None
        if self.embedder is not None:  # exact under zero padding: batch any lengths
            return embed_clips(self.module, clips, batch_size=batch_size, progress=progress)
        module = self.module.eval()
        device = next(iter(module.state_dict().values())).device

        @torch.inference_mode()
        def run(batch: np.ndarray) -> np.ndarray:
            return module(torch.from_numpy(batch).to(device)).float().cpu().numpy()

        short = self.min_samples
        clips = [np.pad(c, (0, short - len(c))) if len(c) < short else c for c in clips]
        return embed_by_length(run, clips, self.embed_dim, batch_size, progress)

    def random_init(self, seed: int) -> WaveformEncoder:
        """The same architecture (and frontend) with random weights: the untrained control."""
        if self.randomise is None:
            raise ConfigError(f"{self.spec}: a {self.kind} encoder has no random-weights "
                              "counterpart")
        return replace(self, module=self.randomise(seed), onnx=None,
                       info={**self.info, "random_init": seed})

    def require_module(self, purpose: str) -> nn.Module:
        """The torch module, or one line saying ``purpose`` needs one."""
        if self.module is None:
            raise ConfigError(f"{self.spec}: {purpose} needs a torch encoder; an onnx: encoder "
                              "only runs on ONNX Runtime")
        return self.module


def _digest(kind: str, files: list[Path], options: dict[str, Any] | None = None) -> str:
    h = hashlib.sha256(f"{_IDENTITY_VERSION}\n{kind}\n".encode())
    for f in files:
        h.update(f"{f.name}\n{file_sha256(f)}\n".encode())
    h.update(json.dumps(options or {}, sort_keys=True).encode())
    return h.hexdigest()


def _randomiser(embedder: Embedder) -> Callable[[int], Embedder]:
    """Random weights of ``embedder``'s architecture, same frontend and normalisation."""

    def build(seed: int) -> Embedder:
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG untouched
            torch.manual_seed(seed)
            encoder = build_encoder(encoder_name(embedder.encoder),
                                    asdict(embedder.encoder.config))
        return Embedder(encoder, embedder.frontend.config, float(embedder.norm_mean),
                        float(embedder.norm_std)).eval()

    return build


def _from_embedder(spec: str, kind: str, name: str, embedder: Embedder, sha: str,
                   info: dict[str, Any], extra: dict[str, Any] | None = None) -> WaveformEncoder:
    enc_name = encoder_name(embedder.encoder)
    description = {"name": enc_name, "config": asdict(embedder.encoder.config),
                   **(extra or {})}
    return WaveformEncoder(
        spec=spec, kind=kind, name=name, sample_rate=embedder.frontend.config.sample_rate,
        min_samples=max(embedder.min_samples, 1), embed_dim=embedder.embed_dim, sha256=sha,
        description=description, info=info, module=embedder.eval(),
        randomise=_randomiser(embedder))


def checkpoint_name(path: str | Path) -> str:
    """A short name for a checkpoint: the file's stem, or its folder's name when the stem
    is the trainer's generic ``encoder`` (runs/byola-1/encoder.safetensors -> byola-1)."""
    p = Path(path)
    if p.stem == "encoder":
        return p.resolve().parent.name or p.stem
    return p.stem


def _open_checkpoint(spec: str, path: Path) -> WaveformEncoder:
    from safetensors import SafetensorError

    try:
        meta = read_embedder_metadata(path)
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelError(path, f"damaged embedder checkpoint metadata ({exc!r})") from None
    try:
        embedder = load_embedder(path)
    except (RuntimeError, KeyError, TypeError, ValueError, SafetensorError) as exc:
        detail = " ".join(str(exc).split())
        raise ModelError(path, f"cannot load the embedder ({detail[:200]})") from None
    info = dict(meta["info"])
    return _from_embedder(spec, "checkpoint", checkpoint_name(path), embedder,
                          file_sha256(path), info)


def _open_pretrained(spec: str, kind: str, arg: str) -> WaveformEncoder:
    from . import pretrained

    if kind == "aisfx":
        path = Path(arg) if arg else pretrained.aisfx_checkpoint_path()
        embedder = pretrained.load_aisfx(path)
    else:
        if not arg:
            raise ConfigError(f"{spec}: give the checkpoint file, as {kind}:FILE")
        path = Path(arg)
        embedder = (pretrained.load_panns if kind == "panns" else pretrained.load_byola)(path)
    credit = pretrained.PRETRAINED_CREDITS[kind]
    info = {"method": f"pretrained:{kind}", "data": credit, "weights": path.name}
    return _from_embedder(spec, kind, kind, embedder, _digest(kind, [path]), info,
                          {"source": kind, "file": path.name, "credit": credit})


def _open_onnx(spec: str, arg: str, options: OnnxEncoderOptions | None) -> WaveformEncoder:
    if not arg:
        raise ConfigError(f"{spec}: give the model file, as onnx:FILE")
    enc = OnnxEncoder(arg, options)
    description = enc.describe()
    sha = _digest("onnx", [enc.path], {k: v for k, v in description.items() if k != "file"})
    info = {"method": "pretrained:onnx", "data": enc.metadata.get("description", ""),
            "weights": enc.path.name}
    return WaveformEncoder(spec=spec, kind="onnx", name=enc.path.stem,
                           sample_rate=enc.sample_rate, min_samples=enc.min_samples,
                           embed_dim=enc.embed_dim, sha256=sha, description=description,
                           info=info, onnx=enc)


def _open_hf(spec: str, arg: str) -> WaveformEncoder:
    if not arg:
        raise ConfigError(f"{spec}: give the model folder, as hf:DIR")
    from .hf import load_hf_encoder

    module = load_hf_encoder(arg)
    folder = Path(arg)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    info = {"method": f"pretrained:hf:{module.model_type}", "data": "",
            "weights": folder.name}
    return WaveformEncoder(
        spec=spec, kind="hf", name=folder.name, sample_rate=module.sample_rate,
        min_samples=module.min_samples, embed_dim=module.embed_dim,
        sha256=_digest("hf", files), description=module.describe(), info=info,
        module=module, randomise=module.randomised)


def open_encoder(spec: str | os.PathLike | WaveformEncoder,
                 onnx_options: OnnxEncoderOptions | None = None) -> WaveformEncoder:
    """The encoder named by ``spec`` (see the module docstring); one-line UserError
    (ConfigError, ModelError) or FileNotFoundError for anything that cannot be used."""
    if isinstance(spec, WaveformEncoder):
        return spec
    text = os.fspath(spec)
    kind, sep, arg = text.partition(":")
    if sep and kind in PRETRAINED_KINDS and not Path(text).exists():
        if kind == "onnx":
            return _open_onnx(text, arg, onnx_options)
        if kind == "hf":
            return _open_hf(text, arg)
        return _open_pretrained(text, kind, arg)
    if text == "aisfx" and not Path(text).exists():
        return _open_pretrained(text, "aisfx", "")
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"{text}: no such checkpoint; an encoder is "
                                f"{SPEC_HELP}")
    if path.is_dir():
        raise ConfigError(f"{text}: a folder; for a Hugging Face model give hf:{text}")
    return _open_checkpoint(text, path)


# --- command-line plumbing ------------------------------------------------------------------


def add_encoder_arguments(parser: argparse.ArgumentParser, *flags: str,
                          help: str = "the encoder", **kwargs: Any) -> None:
    """``--encoder SPEC`` (or ``flags``; ``kwargs`` go to argparse, default required) and
    the ``--onnx-*`` flags that describe an onnx: encoder."""
    kwargs.setdefault("required", True)
    parser.add_argument(*(flags or ("--encoder",)), metavar="SPEC", help=f"{help}: {SPEC_HELP}",
                        **kwargs)
    group = parser.add_argument_group("onnx: encoders (override the model's metadata)")
    group.add_argument("--onnx-sample-rate", type=int, metavar="HZ",
                       help="sample rate the ONNX encoder takes")
    group.add_argument("--onnx-input", metavar="NAME", help="its waveform input's name")
    group.add_argument("--onnx-output", metavar="NAME", help="its embedding output's name")


def onnx_options_from_args(args: argparse.Namespace) -> OnnxEncoderOptions:
    return OnnxEncoderOptions(sample_rate=getattr(args, "onnx_sample_rate", None),
                              input_name=getattr(args, "onnx_input", None),
                              output_name=getattr(args, "onnx_output", None))


def encoder_from_args(spec: str | os.PathLike, args: argparse.Namespace) -> WaveformEncoder:
    """:func:`open_encoder` with the command's ``--onnx-*`` flags."""
    return open_encoder(spec, onnx_options_from_args(args))


def trainable_copy(encoder: WaveformEncoder, purpose: str) -> Embedder:
    """A copy of a log-mel encoder's embedder for training, or one line saying why not."""
    embedder = encoder.embedder
    if embedder is None:
        what = "an ONNX graph" if encoder.kind == "onnx" else "a Hugging Face waveform model"
        raise ConfigError(f"{encoder.spec}: {purpose} trains log-mel encoders (audioclust "
                          f"checkpoints, aisfx, panns:, byola:); this is {what}")
    return copy.deepcopy(embedder)
