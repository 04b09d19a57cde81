"""SPICE for audio: a clustering head on a frozen encoder, then joint semi-supervised tuning.

SPICE (Niu, Shan and Wang, 2022) has three stages; stage 1, self-supervised encoder
training, is ``audioclust-train ssl``. :class:`SPICE` does the other two.

Stage 2, heads on the frozen encoder (EM over batches of M clips, M = 5000 capped at
the data, as in the reference implementation; on FSDD the whole set):

- views: *original* = the embedding of the whole clip (what the head sees later);
  *weak* and *strong* = embeddings of random ``crop_frames``-long log-mel crops (short
  clips tiled, as in SSL training), each under its own augmentation. The encoder is
  frozen, so ``n_view_sets`` weak and as many strong embedding sets are computed up
  front and each E-step draws one of each;
- E-step, per head (:func:`proto_pseudo_labels`): the weak view's probabilities rank
  the clips for each cluster; the mean original feature of the top ``center_ratio``
  of M/K is the cluster centre; the M/K clips most cosine-similar to a centre get that
  cluster as proto-pseudo-label;
- M-step: ``head_repeats`` shuffled passes over those clips in steps of
  ``head_sub_batch``, cross-entropy of the labels on the *double softmax* of the strong
  view's logits (:func:`double_softmax_cross_entropy`: its floor is log(1 + (K-1)/e),
  so noisy pseudo-labels are never fitted hard). The head fits one set of labels before
  the next E-step, as in the reference code (8 passes of 128);
- ``n_heads`` heads, each with its own labels; the lowest last-epoch loss is kept.

Stage 3, encoder and head together (the stage-2 winner, its input statistics kept):

- reliable labels (:func:`reliable_mask`): a clip's stage-2 label is reliable if more
  than ``reliable_ratio`` of its ``n_neighbors`` cosine nearest clips share it (faiss,
  :mod:`audioclust.training.heads.neighbors`); they are then fixed, as ground truth;
- FixMatch: cross-entropy on reliable clips' weak views, plus ``lambda_u`` times the
  cross-entropy of every unlabelled clip's strong view against its weak view's argmax,
  counted where the weak view is confident (:func:`fixmatch_mask`: max probability >=
  ``tau`` = 0.75, the better threshold with a pretrained model in the project's
  FixMatch notes); ``mu`` = 7 unlabelled clips per labelled one; AdamW with FixMatch's
  cosine decay (to cos(7π/16) of ``lr``). The tuned encoder is ``embedder_``.

Choices the papers leave open or that audio forced, each measured on FSDD (3,000 clips,
10 digits) with the project's BYOL-A AudioNTT after 3 training epochs:

- augmentations: weak = the random crop alone, strong = crop + SpecAugment's "weak"
  preset (one mask of <= 8 mel bands and one of <= 32 frames). The presets come from
  5-s clips; on 64-frame crops of ~0.45-s digits the "strong" one (two masks of up to
  35 bands and 64 frames) leaves the frozen encoder nothing: the 10 nearest originals
  of a strong view share its digit 13 % of the time (chance 10 %; crop alone 74 %,
  "weak" preset 38 %), and stage 2 with weak/strong presets reached NMI 0.07 against
  0.18 for crop/"weak" (k-means: 0.14, 3-epoch encoder). Both are settable
  (``weak_augment`` / ``strong_augment``: a preset name, SpecAugment keyword
  arguments, or None for the crop alone);
- the space of prototypes and neighbours is the head's input space (standardised, then
  L2-normalised), with the std floored at the median of the live dimensions (see
  :meth:`ClusterHead.set_input_stats`): dead ReLU units otherwise blow up on augmented views;
- stage 3 keeps BatchNorm statistics frozen (see :func:`_train_mode`) and samples the
  labelled batch uniformly over clusters (DeepCluster's remedy against a dominant
  cluster, in the project's notes): without it FixMatch's self-training collapsed small
  runs onto one cluster.

CPU cost (defaults, full FSDD, 64-frame crops, 256-d SLICER AudioNTT): 18,000 augmented
crops embedded for the views, 30 epochs of 10 heads (one E-step and 8 x 23 steps of 128
clips per epoch), 2 stage-3 epochs of 27 steps (16 labelled + 112 unlabelled clips).
Measured end to end: 246 s on the idle machine (views 53 s, stage 2 133 s, stage 3 52 s).
Stage 2's heads run on one thread: they are small, and two contending threads were ~8x
slower on the shared machine.

Results on FSDD digits (K = 10), NMI / accuracy, with the SLICER encoder (k-means on its
standardised embeddings 0.252 / 0.261): stage 2 0.303 / 0.290, stages 2 + 3 0.305 /
0.284 (seed 1: 0.315 / 0.291); over 6 seeds the kept stage-2 head beat k-means on
both in 5. ``center_ratio`` = 0.2 is what made stage 2 beat k-means: with the reference
value 0.5 the heads averaged 0.274 / 0.259 (``bench/spice_stage2.py``,
docs/benchmarks.md). Stage 3 moved the encoder towards the digits (k-means on the tuned
encoder 0.272 / 0.261) more than it moved the head. With a random AudioNTT (earlier
stage 2, default BatchNorm statistics) stage 3 hurt (7 clusters used): fine-tune only a
trained encoder; ``joint_epochs=0`` skips stage 3.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.embedder import Embedder, load_embedder
from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.training.augment import SpecAugment
from audioclust.training.crops import CropDataset
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import LogMelBank, logmel_bank
from audioclust.training.heads import HeadEstimator
from audioclust.training.heads.neighbors import knn

__all__ = [
    "SPICE",
    "double_softmax_cross_entropy",
    "fixmatch_mask",
    "proto_pseudo_labels",
    "reliable_mask",
]

AugmentSpec = str | Mapping[str, Any]


# --- the pure pieces ---------------------------------------------------------------------


def proto_pseudo_labels(
    probs: torch.Tensor, feats: torch.Tensor, per_cluster: int, n_centre: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPICE's E-step on one batch: (indices, labels) of the proto-pseudo-labelled clips.

    ``probs`` (M, K) are cluster probabilities, ``feats`` (M, d) the clips' features. For
    each cluster k: the ``n_centre`` clips (default ``per_cluster``) with the highest
    ``probs[:, k]`` give the centre (the mean of their features); the ``per_cluster``
    clips with the highest cosine similarity to that centre are labelled k. Results are
    grouped by cluster (cluster 0's clips first), most similar first within a cluster. A
    clip close to two centres is returned once per cluster, as in SPICE's union of
    per-cluster sets.
    """
    if probs.dim() != 2 or feats.dim() != 2 or probs.shape[0] != feats.shape[0]:
        raise ValueError(f"need probs (M, K) and feats (M, d), got {tuple(probs.shape)} "
                         f"and {tuple(feats.shape)}")
    m, k = probs.shape
    n_centre = per_cluster if n_centre is None else n_centre
    for name, value in (("per_cluster", per_cluster), ("n_centre", n_centre)):
        if not 1 <= value <= m:
            raise ValueError(f"{name} must be in [1, {m}], got {value}")
    top = probs.topk(n_centre, dim=0).indices  # (n_centre, K)
    centres = feats[top].mean(dim=0)  # (K, d)
    sims = F.normalize(feats, dim=1) @ F.normalize(centres, dim=1).T  # (M, K)
    nearest = sims.topk(per_cluster, dim=0).indices  # (per_cluster, K)
    indices = nearest.T.reshape(-1)
    labels = torch.arange(k, device=probs.device).repeat_interleave(per_cluster)
    return indices, labels


def reliable_mask(labels: torch.Tensor, neighbours: torch.Tensor, lam: float) -> torch.Tensor:
    """(n,) bool: True where *more than* a fraction ``lam`` of a clip's neighbours share
    its label. ``neighbours`` (n, N_s) holds each clip's neighbour indices, itself
    excluded (as :func:`audioclust.training.heads.neighbors.knn` gives them)."""
    labels = torch.as_tensor(labels)
    neighbours = torch.as_tensor(neighbours, dtype=torch.long)
    if neighbours.dim() != 2 or neighbours.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbours must be (n, N_s) with n = {labels.shape[0]}, "
                         f"got {tuple(neighbours.shape)}")
    agree = (labels[neighbours] == labels[:, None]).double().mean(dim=1)
    return agree > lam


def fixmatch_mask(probs: torch.Tensor, tau: float = 0.75) -> torch.Tensor:
    """(B,) bool: FixMatch's confidence mask, max probability >= ``tau``."""
    return probs.max(dim=-1).values >= tau


def double_softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SPICE's stage-2 loss: cross-entropy of softmax(softmax(logits)) against ``target``.

    Its minimum is log(1 + (K - 1) / e) > 0, not 0: it never asks for more than a mild
    preference, which keeps noisy proto-pseudo-labels from being fitted hard.
    """
    return F.cross_entropy(torch.softmax(logits, dim=-1), target)


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


# --- the estimator -----------------------------------------------------------------------


class SPICE(HeadEstimator):
    """SPICE stages 2 and 3, in the scikit-learn estimator style.

    Hyperparameters (constructor only):

    - head: ``n_heads`` parallel heads, ``hidden_dim`` / ``n_layers`` (1 hidden layer =
      SPICE's two-layer MLP);
    - views: ``crop_frames`` (crop length, 10 ms frames), ``weak_augment`` /
      ``strong_augment``: a SpecAugment preset name ("weak", "strong"), its keyword
      arguments, or None for the random crop alone (defaults: None / "weak", see the
      module docstring);
    - stage 2: ``head_epochs``, ``head_batch_size`` (M, clips per E-step, capped at the
      data; M / K pseudo-labelled clips per cluster), ``center_ratio`` (the fraction of
      those M / K, by probability, whose mean is the centre), ``head_sub_batch`` and
      ``head_repeats`` (the M-step: that many passes of that many clips per step),
      ``head_lr`` (Adam), ``n_view_sets`` (augmented embedding sets per view);
    - stage 3: ``n_neighbors`` (N_s), ``reliable_ratio`` (λ; 20 and 0.8 keep about
      70 % of FSDD's clips), ``joint_epochs`` (passes over the unlabelled clips; the
      CPU budget), ``batch_size`` (labelled clips per step), ``mu``
      (unlabelled per labelled), ``tau``, ``lambda_u``, ``lr``, ``weight_decay``;
      ``joint_epochs=0`` stops after stage 2 (then ``embedder_`` is the input encoder);
    - ``seed``; ``threads`` (torch threads during fit; 0 leaves the setting alone);
      ``cache_dir`` for the log-mel cache (None: default, "": off); ``log`` receives a
      one-line summary after each stage.

    After :meth:`fit`: ``head_`` (single-head :class:`ClusterHead` for ``embedder_``'s
    embeddings, prior = add-one smoothed cluster frequencies), ``embedder_``, ``labels_``,
    ``reliable_`` (mask over clips), ``pseudo_labels_`` (stage-2 labels the mask refers to),
    ``embeddings_`` (``embedder_``'s whole-clip embeddings), ``stage2_head_`` (all
    stage-2 heads, for the input encoder), ``head_losses_`` (stage 2's last-epoch loss
    per head), ``cluster_usage_`` (fraction of clusters the kept head uses),
    ``history_`` (losses per stage, timings).
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_heads: int = 10,
        hidden_dim: int = 512,
        n_layers: int = 1,
        crop_frames: int = 64,
        weak_augment: AugmentSpec | None = None,
        strong_augment: AugmentSpec | None = "weak",
        head_epochs: int = 30,
        head_batch_size: int = 5000,
        center_ratio: float = 0.2,
        head_sub_batch: int = 128,
        head_repeats: int = 8,
        head_lr: float = 5e-3,
        n_view_sets: int = 3,
        n_neighbors: int = 20,
        reliable_ratio: float = 0.8,
        joint_epochs: int = 2,
        batch_size: int = 16,
        mu: int = 7,
        tau: float = 0.75,
        lambda_u: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        seed: int = 0,
        threads: int = 0,
        cache_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.hidden_dim = hidden_dim
        self.n_layers = n_layers
        self.crop_frames = crop_frames
        self.weak_augment = weak_augment
        self.strong_augment = strong_augment
        self.head_epochs = head_epochs
        self.head_batch_size = head_batch_size
        self.center_ratio = center_ratio
        self.head_sub_batch = head_sub_batch
        self.head_repeats = head_repeats
        self.head_lr = head_lr
        self.n_view_sets = n_view_sets
        self.n_neighbors = n_neighbors
        self.reliable_ratio = reliable_ratio
        self.joint_epochs = joint_epochs
        self.batch_size = batch_size
        self.mu = mu
        self.tau = tau
        self.lambda_u = lambda_u
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.threads = threads
        self.cache_dir = cache_dir
        self.log = log

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def _check(self, n_clips: int) -> None:
        self._check_n_clusters(self.n_clusters)
        if n_clips < 2 * self.n_clusters:
            raise ValueError(f"{n_clips} clips are too few for {self.n_clusters} clusters")
        positive = ("n_heads", "head_epochs", "head_batch_size", "head_sub_batch",
                    "head_repeats", "n_view_sets", "n_neighbors", "batch_size", "mu")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.joint_epochs < 0:
            raise ValueError(f"joint_epochs must be >= 0, got {self.joint_epochs}")
        if self.n_neighbors >= n_clips:
            raise ValueError(f"n_neighbors={self.n_neighbors} needs more than that many clips")
        if not 0.0 <= self.reliable_ratio < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError("reliable_ratio must be in [0, 1) and tau in (0, 1]")
        if not 0.0 < self.center_ratio <= 1.0:
            raise ValueError(f"center_ratio must be in (0, 1], got {self.center_ratio}")
        if self.crop_frames < 8:
            raise ValueError(f"crop_frames must be >= 8, got {self.crop_frames}")

    # --- fit ---------------------------------------------------------------------------

    def fit(
        self,
        embedder: Embedder | str | os.PathLike,
        data: AudioFolder | LogMelBank,
        progress: bool = True,
    ) -> SPICE:
        """Run stages 2 and 3 on every clip of ``data`` with ``embedder``'s encoder.

        ``embedder``: an :class:`Embedder` or the path of its checkpoint (it is copied,
        never modified). ``data``: an :class:`AudioFolder` (log-mels computed with the
        embedder's frontend, cached) or a :class:`LogMelBank` made with that frontend.
        Labels in ``data`` are never used. The caller's global torch RNG is left as it was.
        """
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        # Building modules (load_embedder included) draws from the global RNG.
        try:
            with torch.random.fork_rng(devices=[]):
                if isinstance(embedder, str | os.PathLike):
                    embedder = load_embedder(embedder)
                if isinstance(data, AudioFolder):
                    bank = logmel_bank(data, embedder.frontend.config, cache_dir=self.cache_dir,
                                       progress=progress)
                else:
                    bank = data
                self._check(len(bank))
                torch.manual_seed(self.seed)
                self._fit(embedder, bank, progress)
        finally:
            torch.set_num_threads(threads)
        return self

    def _fit(self, embedder: Embedder, bank: LogMelBank, progress: bool) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        mean, std = float(embedder.norm_mean), float(embedder.norm_std)
        encoder = copy.deepcopy(embedder.encoder).cpu()
        views, weak, strong = self._augmentations(bank, mean, std)
        rng = np.random.default_rng(self.seed)
        timings: dict[str, float] = {}

        original = _embed_bank(encoder, bank, mean, std)
        heads = self._stage2_heads(original)
        feats = heads.prepare(original)  # the space cosine similarities are taken in

        weak_sets, strong_sets = self._view_sets(encoder, views, weak, strong, len(bank),
                                                 progress)
        timings["views"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: a second thread only adds contention
        try:
            stage2 = self._train_heads(heads, feats, weak_sets, strong_sets, rng, progress)
        finally:
            torch.set_num_threads(threads)
        self.stage2_head_ = heads.eval()
        timings["stage2"] = time.perf_counter() - t1
        self._log(f"SPICE stage 2: {self.n_heads} heads, head {stage2['selected_head']} kept "
                  f"(loss {min(stage2['last_epoch_per_head']):.4f}); views "
                  f"{timings['views']:.0f} s, heads {timings['stage2']:.0f} s")

        best = int(heads.selected)
        with torch.no_grad():
            pseudo = heads.all_logits(original)[best].argmax(dim=1)
        neighbours = torch.from_numpy(knn(feats.numpy(), self.n_neighbors, seed=self.seed)[0])
        reliable = reliable_mask(pseudo, neighbours, self.reliable_ratio)
        self.pseudo_labels_ = pseudo.numpy()
        self.reliable_ = reliable.numpy()
        self._log(f"SPICE reliable labels: {int(reliable.sum())} of {len(reliable)} clips "
                  f"(more than {self.reliable_ratio} of {self.n_neighbors} neighbours agree)")

        # Stage 3 works on one head: the stage-2 winner, input statistics included (the
        # head is trained in stage 3 with exactly those, so they stay part of it).
        head = ClusterHead(HeadConfig(
            in_dim=heads.config.in_dim, n_clusters=self.n_clusters, n_heads=1,
            hidden_dim=self.hidden_dim, n_layers=self.n_layers,
        ))
        head.heads[0].load_state_dict(heads.heads[best].state_dict())
        head.set_input_stats(heads.input_mean, heads.input_std)
        t2 = time.perf_counter()
        stage3 = self._train_joint(encoder, head, views, weak, strong, pseudo, reliable, rng,
                                   progress)
        timings["stage3"] = time.perf_counter() - t2
        if stage3["epochs"]:
            last = stage3["epochs"][-1]
            self._log(f"SPICE stage 3: {self.joint_epochs} epochs, last loss {last['loss']:.4f} "
                      f"(labelled {last['loss_s']:.4f}, unlabelled {last['loss_u']:.4f}, "
                      f"mask rate {last['mask_rate']:.2f}); {timings['stage3']:.0f} s")

        # The encoder changed in stage 3 (if it ran): embed again.
        embeddings = _embed_bank(encoder, bank, mean, std) if self.joint_epochs else original
        self.embedder_ = Embedder(encoder.eval(), embedder.frontend.config, mean, std).eval()
        head.eval()
        with torch.no_grad():
            labels = head(embeddings).argmax(dim=1)
        counts = torch.bincount(labels, minlength=self.n_clusters).double()
        # Add-one smoothed, as DeepCluster's: an empty cluster must not get prior zero
        # (the streaming assigner divides by it).
        head.prior.copy_(((counts + 1) / (counts.sum() + self.n_clusters)).float())
        self.head_ = head
        self.embeddings_ = embeddings.numpy()
        self.labels_ = labels.numpy()
        timings["total"] = time.perf_counter() - t0
        timings["cpu_total"] = time.process_time() - c0  # all threads; load-independent
        per_cluster = torch.bincount(pseudo[reliable], minlength=self.n_clusters)
        self.head_losses_ = np.asarray(stage2["last_epoch_per_head"])
        self.cluster_usage_ = np.asarray([float((counts > 0).double().mean())])
        self.history_ = {
            "method": "spice",
            "head_losses": self.head_losses_.tolist(),  # stage 2, every head
            "cluster_usage": self.cluster_usage_.tolist(),  # the kept head, after stage 3
            "stage2": stage2,
            "reliable": {"count": int(reliable.sum()), "fraction": float(reliable.double().mean()),
                         "per_cluster": per_cluster.tolist()},
            "stage3": stage3,
            "seconds": timings,
        }

    def _augmentations(
        self, bank: LogMelBank, mean: float, std: float,
    ) -> tuple[_Views, nn.Module, nn.Module]:
        """The crops of ``bank`` and the weak and strong augmentations, seeded by ``seed``."""
        gen = torch.Generator().manual_seed(self.seed)
        weak = _spec_augment(self.weak_augment, gen)
        strong = _spec_augment(self.strong_augment, gen)
        return _Views(bank, self.crop_frames, mean, std, self.seed), weak, strong

    def _stage2_heads(self, original: torch.Tensor) -> ClusterHead:
        """``n_heads`` fresh heads (global RNG) standardising like ``original`` (n, d)."""
        heads = ClusterHead(HeadConfig(
            in_dim=original.shape[1], n_clusters=self.n_clusters, n_heads=self.n_heads,
            hidden_dim=self.hidden_dim, n_layers=self.n_layers,
        ))
        heads.set_input_stats(original.mean(dim=0), original.std(dim=0))
        return heads

    @torch.inference_mode()
    def _view_sets(
        self, encoder: nn.Module, views: _Views, weak: nn.Module, strong: nn.Module, n: int,
        progress: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``n_view_sets`` weak and strong embedding sets, each (n, d), frozen encoder."""
        encoder.eval()
        out: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        batch = 128
        bar = tqdm(total=2 * self.n_view_sets * n, desc="spice views", unit="clip",
                   disable=not progress)
        for _ in range(self.n_view_sets):
            for sets, augment in zip(out, (weak, strong), strict=True):
                parts = []
                for s in range(0, n, batch):
                    idx = np.arange(s, min(s + batch, n))
                    parts.append(encoder(views(idx, augment)).float())
                    bar.update(len(idx))
                sets.append(torch.cat(parts))
        bar.close()
        return out

    def _train_heads(
        self, heads: ClusterHead, feats: torch.Tensor, weak_sets: list[torch.Tensor],
        strong_sets: list[torch.Tensor], rng: np.random.Generator, progress: bool,
    ) -> dict[str, Any]:
        """Stage 2: EM over batches of M clips; every head gets its own pseudo-labels.

        Per batch, one E-step per head, then ``head_repeats`` shuffled passes of
        ``head_sub_batch``-clip steps over the labelled clips' strong views (SPICE's
        M-step: the head fits one set of pseudo-labels before the next E-step). Keeps
        the head with the lowest last-epoch loss.
        """
        n = feats.shape[0]
        m = min(self.head_batch_size, n)
        per_cluster = max(1, m // self.n_clusters)
        n_centre = max(1, round(self.center_ratio * per_cluster))
        n_labelled = per_cluster * self.n_clusters
        sub = min(self.head_sub_batch, n_labelled)
        opt = torch.optim.Adam(heads.heads.parameters(), lr=self.head_lr)
        heads.train()
        epoch_losses: list[list[float]] = []
        for _ in tqdm(range(self.head_epochs), desc="spice stage 2", unit="epoch",
                      disable=not progress):
            order = torch.from_numpy(rng.permutation(n))
            sums = torch.zeros(self.n_heads, dtype=torch.float64)
            steps = 0
            # Only full batches: a short tail would change M / K.
            for b in range(max(1, n // m)):
                idx = order[b * m : (b + 1) * m]
                weak = weak_sets[int(rng.integers(len(weak_sets)))][idx]
                strong = strong_sets[int(rng.integers(len(strong_sets)))][idx]
                with torch.no_grad():
                    probs = torch.softmax(heads.all_logits(weak), dim=-1)  # (H, M, K)
                    inputs = heads.prepare(strong)
                picks = [proto_pseudo_labels(probs[h], feats[idx], per_cluster, n_centre)
                         for h in range(self.n_heads)]
                rows = torch.stack([p[0] for p in picks])  # (H, n_labelled), into the batch
                targets = torch.stack([p[1] for p in picks])
                for _ in range(self.head_repeats):
                    perm = torch.stack([torch.from_numpy(rng.permutation(n_labelled))
                                        for _ in range(self.n_heads)])
                    for s in range(0, n_labelled - sub + 1, sub):
                        j = perm[:, s : s + sub]
                        x_rows, y = rows.gather(1, j), targets.gather(1, j)
                        loss = torch.stack([
                            double_softmax_cross_entropy(head(inputs[x_rows[h]]), y[h])
                            for h, head in enumerate(heads.heads)
                        ])
                        opt.zero_grad(set_to_none=True)
                        loss.sum().backward()  # heads share no parameters: one step trains each
                        opt.step()
                        sums += loss.detach().double()
                        steps += 1
            epoch_losses.append((sums / steps).tolist())
        final = epoch_losses[-1]
        best = int(np.argmin(final))
        heads.select(best)
        return {"loss": epoch_losses, "selected_head": best, "last_epoch_per_head": final,
                "per_cluster": per_cluster, "centre_clips": n_centre, "batch_size": m}

    def _train_joint(
        self, encoder: nn.Module, head: ClusterHead, views: _Views, weak: nn.Module,
        strong: nn.Module, pseudo: torch.Tensor, reliable: torch.Tensor,
        rng: np.random.Generator, progress: bool,
    ) -> dict[str, Any]:
        """Stage 3: FixMatch on encoder + head with the reliable labels as ground truth."""
        n = pseudo.shape[0]
        labelled = np.flatnonzero(reliable.numpy())
        # Class-balanced labelled batches (DeepCluster's remedy): reliable clips are often
        # far from balanced, and FixMatch's self-training amplifies whichever cluster
        # dominates the supervised signal until the others die out.
        members = [labelled[pseudo[labelled].numpy() == k] for k in range(self.n_clusters)]
        members = [m for m in members if len(m)]
        b_l = self.batch_size
        b_u = min(self.mu * self.batch_size, n)
        steps_per_epoch = math.ceil(n / b_u)
        total = steps_per_epoch * self.joint_epochs
        history: dict[str, Any] = {"loss": [], "loss_s": [], "loss_u": [], "mask_rate": [],
                                   "epochs": [], "steps_per_epoch": steps_per_epoch,
                                   "labelled_batch": b_l, "unlabelled_batch": b_u}
        if total == 0:
            return history
        params = [*encoder.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        step = 0
        bar = tqdm(total=total, desc="spice stage 3", unit="step", disable=not progress)
        for epoch in range(self.joint_epochs):
            _train_mode(encoder)
            head.train()
            order = rng.permutation(n)
            for s in range(steps_per_epoch):
                # FixMatch's schedule: cosine from lr down to cos(7π/16) ≈ 0.2 lr.
                for group in opt.param_groups:
                    group["lr"] = self.lr * math.cos(7 * math.pi * step / (16 * total))
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
                mask = fixmatch_mask(p_weak, self.tau)
                target_u = p_weak.argmax(dim=1)
                x = torch.cat([views(l_idx, weak), views(u_idx, strong)]) if len(l_idx) \
                    else views(u_idx, strong)
                logits = head.all_logits(encoder(x))[0]
                loss_s = (F.cross_entropy(logits[: len(l_idx)], pseudo[l_idx]) if len(l_idx)
                          else logits.new_zeros(()))
                per_clip = F.cross_entropy(logits[len(l_idx):], target_u, reduction="none")
                loss_u = (per_clip * mask).mean()  # FixMatch averages over all μB clips
                loss = loss_s + self.lambda_u * loss_u
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

    def fit_predict(  # type: ignore[override]
        self, embedder: Embedder | str | os.PathLike, data: AudioFolder | LogMelBank,
        progress: bool = True,
    ) -> np.ndarray:
        """:meth:`fit`, then the clusters of the clips (``labels_``)."""
        return self.fit(embedder, data, progress).labels_
