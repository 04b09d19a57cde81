"""SPICE's stage 3: the encoder and a clustering head tuned together on reliable labels.

:class:`SPICEFineTuner` takes an embedder, the audio it was trained on and a fitted head
(SPICE's stage 2, :class:`~audioclust.training.heads.spice.SPICE`) and returns a tuned
embedder (``embedder_``) with the head trained alongside it (``head_``):

- reliable labels (:func:`~audioclust.training.heads.spice.reliable_mask`): a clip's
  label from the head is reliable if more than ``reliable_ratio`` of its ``n_neighbors``
  cosine nearest clips (in the head's input space) share it; they are then fixed, as
  ground truth;
- FixMatch: cross-entropy on reliable clips' weak views, plus ``lambda_u`` times the
  cross-entropy of every clip's strong view against its weak view's argmax, counted
  where the weak view is confident (max probability >= ``tau``); ``mu`` unlabelled
  clips per labelled one, labelled clips drawn uniformly over clusters; AdamW with
  FixMatch's cosine decay (to cos(7 pi / 16) of ``lr``);
- views: random ``crop_frames``-long log-mel crops (short clips tiled) under the weak
  and strong augmentations (a SpecAugment preset name, its keyword arguments, or None
  for the crop alone); BatchNorm keeps its running statistics (see :func:`_train_mode`).

:func:`audio_views` embeds such views with the frozen encoder, for stage 2.

The encoder's dropout draws from torch's global generator: :meth:`SPICEFineTuner.fit`
runs inside ``torch.random.fork_rng`` seeded by ``seed``, so the caller's RNG state is
the same afterwards and runs repeat.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.embedder import Embedder, load_embedder
from audioclust.models.errors import ConfigError
from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.training.augment import SpecAugment
from audioclust.training.crops import CropDataset
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import LogMelBank, logmel_bank
from audioclust.training.heads.base import HeadPredictor, HeadSettings, finish_heads
from audioclust.training.heads.neighbors import knn
from audioclust.training.heads.spice import SPICEViews, fixmatch_mask, reliable_mask

__all__ = ["SPICEFineTuneSettings", "SPICEFineTuner", "audio_views"]

AugmentSpec = str | Mapping[str, Any]


@dataclass(frozen=True)
class SPICEFineTuneSettings(HeadSettings):
    """Stage 3's hyperparameters, and the audio views' (``crop_frames``, the two
    augmentations, ``n_view_sets`` for :func:`audio_views`).

    ``n_neighbors`` (N_s) and ``reliable_ratio`` (lambda; 20 and 0.8 keep about 70 % of
    FSDD's clips); ``epochs`` (passes over the unlabelled clips; 0: no tuning);
    ``batch_size`` (labelled clips per step), ``mu`` (unlabelled per labelled), ``tau``,
    ``lambda_u``, ``lr``, ``weight_decay``.
    """

    crop_frames: int = 64
    weak_augment: str | dict[str, Any] | None = None
    strong_augment: str | dict[str, Any] | None = "weak"
    n_view_sets: int = 3
    n_neighbors: int = 20
    reliable_ratio: float = 0.8
    epochs: int = 2
    batch_size: int = 16
    mu: int = 7
    tau: float = 0.75
    lambda_u: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("n_view_sets", "n_neighbors", "batch_size", "mu"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not 0.0 <= self.reliable_ratio < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ConfigError("reliable_ratio must be in [0, 1) and tau in (0, 1]")
        if self.crop_frames < 8:
            raise ConfigError(f"crop_frames must be >= 8, got {self.crop_frames}")


# --- data helpers ------------------------------------------------------------------------


def _clip_batches(
    bank: LogMelBank, order: np.ndarray, mean: float, std: float, min_frames: int,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(indices, normalised whole clips zero-padded to (B, 1, F, T), lengths) in ``order``.

    A clip shorter than ``min_frames`` is tiled up to it.
    """
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        clips = []
        for i in idx:
            c = bank.clip(int(i))
            if c.shape[1] < min_frames:
                c = np.tile(c, (1, math.ceil(min_frames / c.shape[1])))
            clips.append(c)
        width = max(c.shape[1] for c in clips)
        batch = np.zeros((len(idx), 1, clips[0].shape[0], width), dtype=np.float32)
        for row, c in enumerate(clips):
            batch[row, 0, :, : c.shape[1]] = (c - mean) / std
        yield idx, torch.from_numpy(batch), torch.tensor([c.shape[1] for c in clips])


@torch.inference_mode()
def _embed_bank(
    encoder: nn.Module, bank: LogMelBank, mean: float, std: float, batch_size: int = 64
) -> torch.Tensor:
    """Whole-clip embeddings (n, d) of every clip of ``bank``, in eval mode.

    Equivalent to :func:`~audioclust.models.embedder.embed_clips` on the waveforms, but
    from the cached log-mels: clips are sorted by length and zero-padded with their
    lengths passed, so padding never changes an embedding.
    """
    encoder.eval()
    order = np.argsort(bank.lengths, kind="stable")
    out = torch.empty(len(bank), int(encoder.embed_dim))
    for idx, x, lengths in _clip_batches(bank, order, mean, std, int(encoder.min_frames),
                                         batch_size):
        out[torch.from_numpy(idx)] = encoder(x, lengths).float()
    return out


class _Views:
    """Random normalised crops of a bank under an augmentation, drawn reproducibly.

    Crops come from :class:`~audioclust.training.crops.CropDataset` (clips shorter
    than a crop are tiled, never padded); every call takes a fresh crop key, so two
    views of one clip get independent crops.
    """

    def __init__(self, bank: LogMelBank, crop_frames: int, mean: float, std: float, seed: int):
        self.crops = CropDataset(bank, crop_frames, mean, std, seed)
        self._key = 0

    def __call__(self, idx: np.ndarray | list[int], augment: nn.Module) -> torch.Tensor:
        self.crops.set_epoch(self._key)
        self._key += 1
        x = torch.stack([self.crops[int(i)] for i in idx])
        return augment(x)


def _train_mode(encoder: nn.Module) -> None:
    """Train mode, except BatchNorm, which keeps using (and never updates) its running
    statistics: the stage-2 head was fitted to eval-mode embeddings and the encoder is
    used in eval mode afterwards, and batch statistics of small, augmented batches would
    change the very function the head was fitted to (for a randomly initialised encoder,
    whose running statistics are the defaults, completely)."""
    encoder.train()
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _spec_augment(spec: AugmentSpec | None, generator: torch.Generator) -> nn.Module:
    if spec is None:  # the random crop alone
        return nn.Identity()
    if isinstance(spec, str):
        return SpecAugment.preset(spec, generator=generator)  # type: ignore[arg-type]
    return SpecAugment(**dict(spec), generator=generator)


def _resolve(
    embedder: Embedder | str | os.PathLike, data: AudioFolder | LogMelBank,
    cache_dir: str | os.PathLike | None, progress: bool,
) -> tuple[Embedder, LogMelBank]:
    if isinstance(embedder, str | os.PathLike):
        embedder = load_embedder(embedder)
    if isinstance(data, AudioFolder):
        data = logmel_bank(data, embedder.frontend.config, cache_dir=cache_dir,
                           progress=progress)
    return embedder, data


def _augmentations(
    settings: SPICEFineTuneSettings, bank: LogMelBank, mean: float, std: float, seed: int,
) -> tuple[_Views, nn.Module, nn.Module]:
    """The crops of ``bank`` and the weak and strong augmentations, seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    weak = _spec_augment(settings.weak_augment, gen)
    strong = _spec_augment(settings.strong_augment, gen)
    return _Views(bank, settings.crop_frames, mean, std, seed), weak, strong


@torch.inference_mode()
def audio_views(
    embedder: Embedder | str | os.PathLike,
    data: AudioFolder | LogMelBank,
    settings: SPICEFineTuneSettings | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> SPICEViews:
    """``n_view_sets`` weak and strong embedding sets of every clip, each (n, d), by the
    frozen encoder (eval mode), for :meth:`SPICE.fit`."""
    settings = settings or SPICEFineTuneSettings()
    with torch.random.fork_rng(devices=[]):  # building the encoder draws from the global RNG
        embedder, bank = _resolve(embedder, data, cache_dir, progress)
    encoder = copy.deepcopy(embedder.encoder).cpu().eval()
    mean, std = float(embedder.norm_mean), float(embedder.norm_std)
    views, weak, strong = _augmentations(settings, bank, mean, std, seed)
    n = len(bank)
    out: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    batch = 128
    bar = tqdm(total=2 * settings.n_view_sets * n, desc="spice views", unit="clip",
               disable=not progress)
    for _ in range(settings.n_view_sets):
        for sets, augment in zip(out, (weak, strong), strict=True):
            parts = []
            for s in range(0, n, batch):
                idx = np.arange(s, min(s + batch, n))
                parts.append(encoder(views(idx, augment)).float())
                bar.update(len(idx))
            sets.append(torch.cat(parts))
    bar.close()
    return SPICEViews(tuple(out[0]), tuple(out[1]))


class SPICEFineTuner(HeadPredictor):
    """SPICE's stage 3: ``SPICEFineTuner(settings=None, *, seed=0, cache_dir=None,
    progress=False, log=None, **overrides)``, then ``fit(embedder, data, head)``.

    ``embedder``: an :class:`Embedder` or its checkpoint's path (copied, never modified);
    ``data``: an :class:`AudioFolder` (log-mels computed with the embedder's frontend,
    cached in ``cache_dir``) or a :class:`LogMelBank` made with that frontend; ``head``:
    the fitted head whose selected head gives the labels and is tuned. Labels in
    ``data`` are never used.

    After :meth:`fit`: ``embedder_`` (the tuned embedder; the input one when
    ``epochs`` = 0), ``head_`` (one head for ``embedder_``'s embeddings, smoothed
    empirical prior), ``labels_``, ``embeddings_`` (``embedder_``'s whole-clip
    embeddings), ``pseudo_labels_`` (the input head's labels), ``reliable_`` (mask over
    clips), ``cluster_usage_`` (1,), ``history_`` (losses per step and epoch, reliable
    label counts, timings).
    """

    def __init__(
        self,
        settings: SPICEFineTuneSettings | None = None,
        *,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ):
        settings = settings or SPICEFineTuneSettings()
        self.settings = settings.__class__(**{**settings.to_dict(), **overrides})
        self.seed = seed
        self.cache_dir = cache_dir
        self.progress = progress
        self.log = log

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def fit(
        self, embedder: Embedder | str | os.PathLike, data: AudioFolder | LogMelBank,
        head: ClusterHead,
    ) -> SPICEFineTuner:
        with torch.random.fork_rng(devices=[]):
            embedder, bank = _resolve(embedder, data, self.cache_dir, self.progress)
            n = len(bank)
            if self.settings.n_neighbors >= n:
                raise ConfigError(f"n_neighbors={self.settings.n_neighbors} needs more than "
                                  "that many clips")
            torch.manual_seed(self.seed)
            self._fit(embedder, bank, head)
        return self

    def _fit(self, embedder: Embedder, bank: LogMelBank, heads: ClusterHead) -> None:
        c = self.settings
        t0, c0 = time.perf_counter(), time.process_time()
        mean, std = float(embedder.norm_mean), float(embedder.norm_std)
        encoder = copy.deepcopy(embedder.encoder).cpu()
        views, weak, strong = _augmentations(c, bank, mean, std, self.seed)
        rng = np.random.default_rng(self.seed)
        k = heads.config.n_clusters

        original = _embed_bank(encoder, bank, mean, std)
        best = int(heads.selected)
        with torch.no_grad():
            feats = heads.prepare(original)
            pseudo = heads.all_logits(original)[best].argmax(dim=1)
        neighbours = torch.from_numpy(knn(feats.numpy(), c.n_neighbors, seed=self.seed)[0])
        reliable = reliable_mask(pseudo, neighbours, c.reliable_ratio)
        self.pseudo_labels_ = pseudo.numpy()
        self.reliable_ = reliable.numpy()
        self._say(f"SPICE reliable labels: {int(reliable.sum())} of {len(reliable)} clips "
                  f"(more than {c.reliable_ratio} of {c.n_neighbors} neighbours agree)")

        # One head, the selected one, input statistics included (it is trained here with
        # exactly those, so they stay part of it).
        head = ClusterHead(HeadConfig(
            in_dim=heads.config.in_dim, n_clusters=k, n_heads=1,
            hidden_dim=heads.config.hidden_dim, n_layers=heads.config.n_layers,
            l2_normalize=heads.config.l2_normalize,
        ))
        head.heads[0].load_state_dict(heads.heads[best].state_dict())
        head.input_mean.copy_(heads.input_mean)
        head.input_std.copy_(heads.input_std)
        t2 = time.perf_counter()
        stage3 = self._train_joint(encoder, head, views, weak, strong, pseudo, reliable, rng)
        seconds = time.perf_counter() - t2
        if stage3["epochs"]:
            last = stage3["epochs"][-1]
            self._say(f"SPICE stage 3: {c.epochs} epochs, last loss {last['loss']:.4f} "
                      f"(labelled {last['loss_s']:.4f}, unlabelled {last['loss_u']:.4f}, "
                      f"mask rate {last['mask_rate']:.2f}); {seconds:.0f} s")

        # The encoder changed (if it was trained): embed again.
        embeddings = _embed_bank(encoder, bank, mean, std) if c.epochs else original
        self.embedder_ = Embedder(encoder.eval(), embedder.frontend.config, mean, std).eval()
        loss = stage3["epochs"][-1]["loss"] if stage3["epochs"] else 0.0
        done = finish_heads(head, embeddings, [loss])
        self.head_ = head
        self.embeddings_ = embeddings.numpy()
        self.labels_ = done.assignments[0]
        self.cluster_usage_ = done.usage
        per_cluster = torch.bincount(pseudo[reliable], minlength=k)
        self.history_ = {
            "method": "spice-finetune",
            "cluster_usage": done.usage.tolist(),
            "reliable": {"count": int(reliable.sum()), "fraction": float(reliable.double().mean()),
                         "per_cluster": per_cluster.tolist()},
            "stage3": stage3,
            "seconds": {"stage3": seconds, "total": time.perf_counter() - t0,
                        "cpu_total": time.process_time() - c0},
            "params": {"seed": self.seed, **c.to_dict()},
        }

    def _train_joint(
        self, encoder: nn.Module, head: ClusterHead, views: _Views, weak: nn.Module,
        strong: nn.Module, pseudo: torch.Tensor, reliable: torch.Tensor,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """FixMatch on encoder + head with the reliable labels as ground truth."""
        c = self.settings
        k = head.config.n_clusters
        n = pseudo.shape[0]
        labelled = np.flatnonzero(reliable.numpy())
        # Class-balanced labelled batches (DeepCluster's remedy): reliable clips are often
        # far from balanced, and FixMatch's self-training amplifies whichever cluster
        # dominates the supervised signal until the others die out.
        members = [labelled[pseudo[labelled].numpy() == k] for k in range(k)]
        members = [m for m in members if len(m)]
        b_l = c.batch_size
        b_u = min(c.mu * c.batch_size, n)
        steps_per_epoch = math.ceil(n / b_u)
        total = steps_per_epoch * c.epochs
        history: dict[str, Any] = {"loss": [], "loss_s": [], "loss_u": [], "mask_rate": [],
                                   "epochs": [], "steps_per_epoch": steps_per_epoch,
                                   "labelled_batch": b_l, "unlabelled_batch": b_u}
        if total == 0:
            return history
        params = [*encoder.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        step = 0
        bar = tqdm(total=total, desc="spice stage 3", unit="step", disable=not self.progress)
        for epoch in range(c.epochs):
            _train_mode(encoder)
            head.train()
            order = rng.permutation(n)
            for s in range(steps_per_epoch):
                # FixMatch's schedule: cosine from lr down to cos(7π/16) ≈ 0.2 lr.
                for group in opt.param_groups:
                    group["lr"] = c.lr * math.cos(7 * math.pi * step / (16 * total))
                u_idx = order[s * b_u : (s + 1) * b_u]
                if len(u_idx) < b_u:  # last step of an epoch: top up from the start
                    u_idx = np.concatenate([u_idx, order[: b_u - len(u_idx)]])
                if members:  # a uniform cluster, then a uniform reliable clip of it
                    picks = rng.integers(len(members), size=b_l)
                    l_idx = np.array([members[c][rng.integers(len(members[c]))] for c in picks])
                else:  # no reliable clip: unlabelled loss only (reported as loss_s = 0)
                    l_idx = np.empty(0, dtype=np.int64)
                with torch.no_grad():
                    # Pseudo-labels from the weak view; no gradient, so no backward cost.
                    p_weak = head(encoder(views(u_idx, weak)))  # forward gives the posterior
                mask = fixmatch_mask(p_weak, c.tau)
                target_u = p_weak.argmax(dim=1)
                x = torch.cat([views(l_idx, weak), views(u_idx, strong)]) if len(l_idx) \
                    else views(u_idx, strong)
                logits = head.all_logits(encoder(x))[0]
                loss_s = (F.cross_entropy(logits[: len(l_idx)], pseudo[l_idx]) if len(l_idx)
                          else logits.new_zeros(()))
                per_clip = F.cross_entropy(logits[len(l_idx):], target_u, reduction="none")
                loss_u = (per_clip * mask).mean()  # FixMatch averages over all μB clips
                loss = loss_s + c.lambda_u * loss_u
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"SPICE stage 3: loss {loss.item()} at step "
                                             f"{step}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                for key, value in (("loss", loss), ("loss_s", loss_s), ("loss_u", loss_u),
                                   ("mask_rate", mask.float().mean())):
                    history[key].append(float(value.detach()))
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}",
                                mask=f"{history['mask_rate'][-1]:.2f}")
                bar.update()
            recent = slice(-steps_per_epoch, None)
            history["epochs"].append({
                "epoch": epoch + 1,
                **{k: float(np.mean(history[k][recent]))
                   for k in ("loss", "loss_s", "loss_u", "mask_rate")},
            })
        bar.close()
        return history
