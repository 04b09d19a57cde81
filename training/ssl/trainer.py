"""The training loop all self-supervised methods share.

A method (``training/ssl/byola.py``, ``msn.py``, ``slicer.py``) is an ``nn.Module`` whose
``forward(crops)`` returns the loss of one batch of normalised log-mel crops; it owns its
networks, augmentations and EMA targets. This module does the rest, once for all methods:

- data: every clip's log-mel decoded once (cached on disk), random crops of
  ``crop_frames`` frames; a clip shorter than that is tiled (repeated) to length, so no
  crop holds zero padding; normalised by the data set's scalar mean and std;
- one code path for a single process and for ``torchrun`` (DistributedDataParallel with a
  DistributedSampler; gloo on CPU, nccl on GPU): a single process is world size 1;
- learning rate set every step from the method's schedule (so resuming needs no scheduler
  state), EMA updates after every step;
- checkpoints without pickle: ``encoder.safetensors`` (the embedder: frontend,
  normalisation, encoder) and ``state.safetensors`` + ``state.json`` (everything needed to
  resume: all weights, optimiser moments, RNG states, the step) every ``checkpoint_every``
  epochs and at the end; ``--resume`` continues from the last one;
- progress bar with loss and clips/s, ``history.json`` and a loss-curve ``loss.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from audioclust.models.embedder import Embedder, save_embedder
from audioclust.models.encoders import build_encoder, encoder_name
from audioclust.models.errors import ConfigError, DataError
from audioclust.models.frontend import FrontendConfig
from audioclust.training.crops import CropDataset
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import logmel_bank

__all__ = [
    "SSLConfig",
    "SSLMethod",
    "TrainResult",
    "initial_embedder",
    "train_ssl",
]

Method = Literal["byola", "msn", "slicer"]


@dataclass(frozen=True)
class SSLConfig:
    """Everything a self-supervised run needs; method-specific settings in their tables."""

    method: Method = "byola"
    # Start from this encoder (an encoder spec: a checkpoint, aisfx, panns:FILE,
    # byola:FILE): its architecture, weights, frontend and normalisation; None: fresh.
    init: str | None = None
    encoder: str = "audiontt"
    encoder_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None  # None: the method's default
    weight_decay: float | None = None  # None: the method's default
    warmup_epochs: float = 1.0
    crop_frames: int = 64
    seed: int = 0
    checkpoint_every: int = 5
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    cache_dir: str | None = None
    byola: dict[str, Any] = field(default_factory=dict)
    msn: dict[str, Any] = field(default_factory=dict)
    slicer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.checkpoint_every < 1:
            raise ConfigError("epochs >= 1, batch_size >= 2 and checkpoint_every >= 1 needed")
        if self.crop_frames < 8:
            raise ConfigError(f"crop_frames must be >= 8, got {self.crop_frames}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SSLMethod(nn.Module):
    """Base of the self-supervised methods: loss in ``forward``, EMA in ``after_step``."""

    #: Default learning rate and weight decay when the run's config leaves them unset.
    default_lr: float = 3e-4
    default_weight_decay: float = 0.0

    def __init__(self, encoder: nn.Module, generator: torch.Generator):
        super().__init__()
        self.encoder = encoder
        self.generator = generator

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def lr_factor(self, step: int, total_steps: int, warmup_steps: int) -> float:
        """Learning-rate multiplier at ``step``: linear warm-up, then cosine to zero."""
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (EMA target updates)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@dataclass
class TrainResult:
    """What ``train_ssl`` trained: the encoder it wrote and how the run went."""

    encoder_path: Path
    epochs_run: int
    seconds: float
    clips_per_second: float
    final_loss: float

    def to_dict(self) -> dict[str, Any]:
        """The summary ``audioclust-train ssl --json`` prints."""
        return {
            "encoder": str(self.encoder_path),
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 1),
            "clips_per_second": round(self.clips_per_second, 1),
            "final_loss": self.final_loss,
        }


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# --- checkpoint state without pickle -----------------------------------------------------


def _save_state(path: Path, method: SSLMethod, opt: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in method.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.augment"] = method.generator.get_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, "optim_groups": opt_state["param_groups"], "optim_scalars": scalars}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    json_tmp = path.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(json_tmp, path.with_suffix(".json"))


def _load_state(path: Path, method: SSLMethod, opt: torch.optim.Optimizer) -> dict:
    meta = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path))
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    method.load_state_dict(model, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, extra in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    method.generator.set_state(tensors["rng.augment"])
    return meta


def _plot_history(history: dict, path: Path) -> None:
    from audioclust.training.report import plot_curves

    plot_curves(
        {"loss (per step)": history["loss"]},
        path,
        title=history.get("title", ""),
        xlabel="step",
        smooth=max(1, len(history["loss"]) // 100),
    )


# --- the loop ----------------------------------------------------------------------------


def initial_embedder(config: SSLConfig, data: AudioFolder) -> Embedder:
    """The embedder ``config.init`` names, checked against the method and the data."""
    from audioclust.models.encoder_spec import open_encoder, trainable_copy

    start = trainable_copy(open_encoder(config.init), "audioclust-train ssl --init")
    name = encoder_name(start.encoder)
    if config.method == "msn" and name != "vit":
        raise ConfigError(f"--init {config.init}: MSN masks the ViT's patch tokens and this is "
                          f"a {name} encoder; use --method byola or slicer")
    if start.frontend.config.sample_rate != data.sample_rate:
        raise ConfigError(f"--init {config.init}: the encoder takes "
                          f"{start.frontend.config.sample_rate} Hz, the data is decoded at "
                          f"{data.sample_rate} Hz")
    if config.crop_frames < start.encoder.min_frames:
        raise ConfigError(f"--crop-frames {config.crop_frames}: {name} needs at least "
                          f"{start.encoder.min_frames}")
    return start


def build_method(config: SSLConfig, encoder: nn.Module, generator: torch.Generator) -> SSLMethod:
    """The method module named by ``config.method`` around ``encoder``."""
    if config.method == "byola":
        from audioclust.training.ssl.byola import BYOLA

        return BYOLA(encoder, generator, config.crop_frames, **config.byola)
    if config.method == "msn":
        from audioclust.training.ssl.msn import MSN

        return MSN(encoder, generator, config.crop_frames, **config.msn)
    if config.method == "slicer":
        from audioclust.training.ssl.slicer import SLICER

        return SLICER(encoder, generator, config.crop_frames, **config.slicer)
    raise ConfigError(f"unknown method {config.method!r}; known: byola, msn, slicer")


def train_ssl(
    config: SSLConfig,
    data: AudioFolder,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.method`` on ``data``; write checkpoints and reports to ``out``.

    Seeds and ``config.threads`` hold for the run only: the caller's torch RNG (CPU) and
    thread count are as before when it returns."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            return _train_ssl(config, data, out, resume, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train_ssl(config: SSLConfig, data: AudioFolder, out: str | os.PathLike, resume: bool,
               progress: bool, log: Callable[[str], None]) -> TrainResult:
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = _device(local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.threads:
        torch.set_num_threads(config.threads)
    is_main = rank == 0
    out = Path(out)
    state_path = out / "state.safetensors"
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: nothing to resume from")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    start = initial_embedder(config, data) if config.init is not None else None
    if start is not None:  # the run's record names the architecture it really trains
        config = replace(config, encoder=encoder_name(start.encoder),
                         encoder_config=asdict(start.encoder.config))
    frontend = (start.frontend.config if start is not None
                else FrontendConfig(sample_rate=data.sample_rate))
    bank = logmel_bank(data, frontend, cache_dir=config.cache_dir, progress=progress and is_main)
    # A pretrained encoder keeps the normalisation it was trained with.
    mean, std = (bank.stats() if start is None
                 else (float(start.norm_mean), float(start.norm_std)))
    dataset = CropDataset(bank, config.crop_frames, mean, std, config.seed)
    if len(dataset) < config.batch_size * world:
        raise DataError(f"{len(dataset)} clips are fewer than one batch of "
                        f"{config.batch_size} x {world} processes")

    torch.manual_seed(config.seed)
    encoder = (build_encoder(config.encoder, config.encoder_config) if start is None
               else start.encoder.train())
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    method = build_method(config, encoder, generator).to(device)
    lr = config.lr if config.lr is not None else method.default_lr
    wd = config.weight_decay if config.weight_decay is not None else method.default_weight_decay
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=lr, weight_decay=wd)

    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, round(config.warmup_epochs * steps_per_epoch))

    history: dict[str, Any] = {"loss": [], "epochs": [], "title": f"{config.method} "
                               f"({config.encoder}) on {data.root.name}"}
    start_epoch, step = 0, 0
    if resume:
        meta = _load_state(state_path, method, opt)
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        if is_main:
            log(f"resuming at epoch {start_epoch} (step {step})")
    model: nn.Module = method
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[local_rank] if device.type == "cuda" else None
        )

    def save(epoch: int) -> Path:
        embedder = Embedder(method.encoder, frontend, mean, std)
        info = {"method": config.method, "epochs": epoch, "steps": step,
                "data": str(data.root), "clips": len(data), "config": config.to_dict()}
        path = save_embedder(embedder, out / "encoder.safetensors", info)
        save_embedder(embedder, out / "checkpoints" / f"epoch_{epoch:04d}.safetensors", info)
        _save_state(state_path, method, opt, {"epoch": epoch, "step": step,
                                              "history": history, "config": config.to_dict()})
        (out / "history.json").write_text(json.dumps(history))
        _plot_history(history, out / "loss.png")
        return path

    t_start = time.perf_counter()
    clips_seen = 0
    encoder_path = out / "encoder.safetensors"
    bar = tqdm(total=total_steps, initial=step, desc=config.method, unit="step",
               disable=not (progress and is_main))
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        method.train()
        epoch_losses = []
        for crops in loader:
            factor = method.lr_factor(step, total_steps, warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr * factor
            t0 = time.perf_counter()
            loss, logs = model(crops.to(device, non_blocking=True))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(step, total_steps)
            step += 1
            clips_seen += crops.shape[0] * world
            value = float(loss.detach())
            epoch_losses.append(value)
            history["loss"].append(value)
            rate = crops.shape[0] * world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", clips_s=f"{rate:.0f}", **logs)
            bar.update()
        history["epochs"].append({"epoch": epoch + 1, "loss": float(np.mean(epoch_losses))})
        done = epoch + 1
        if is_main and (done % config.checkpoint_every == 0 or done == config.epochs):
            encoder_path = save(done)
        if distributed:
            dist.barrier()
    bar.close()
    seconds = time.perf_counter() - t_start
    if distributed:
        dist.destroy_process_group()
    return TrainResult(
        encoder_path=encoder_path,
        epochs_run=config.epochs - start_epoch,
        seconds=seconds,
        clips_per_second=clips_seen / max(seconds, 1e-9),
        final_loss=history["loss"][-1] if history["loss"] else float("nan"),
    )
