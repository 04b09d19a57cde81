"""TEMI: clustering heads trained by self-distillation on nearest-neighbour pairs.

Adaloglou et al. 2023, "Exploring the limits of deep image clustering using pretrained
models". On frozen embeddings g(x):

- each point x is paired with x', drawn uniformly from its k cosine nearest neighbours
  (in the head's input space: embeddings standardised with the training statistics, then
  L2-normalised);
- H student heads h_s and H teacher heads h_t (the teacher an EMA of the student) give
  q_s(c|x) = softmax(h_s(x) / tau_s) and q_t(c|x) = softmax(h_t(x) / tau_t);
- each head keeps a cluster prior, an EMA of the teacher's batch-mean posterior:
  q~_t(c) <- m q~_t(c) + (1 - m) mean_i q_t(c|x_i), updated with the batch (both x and
  x') *before* the batch's loss, as the authors' code does;
- pmi~(x, x') = log sum_c (q_s(c|x) q_t(c|x'))^beta / q~_t(c), with beta in (0.5, 1]
  damping the pull towards large clusters;
- L(x, x') = -(pmi~(x, x') + pmi~(x', x)) / 2 per head, weighted by
  w(x, x') = (1/H) sum_j sum_c q_t^j(c|x) q_t^j(c|x'), the teachers' (all heads') belief
  that the pair shares a cluster, so that pairs straddling two clusters count less;
- each head's loss is the batch mean of w L; the heads are trained together (sum).

Each head starts from its own spherical k-means partition (best of ``init_restarts``;
:func:`~audioclust.training.heads.base.kmeans_warm_start`; ``init="random"`` skips it),
which the student and, through the EMA, the teacher inherit. The saved head is the
teacher (its EMA weights are smoother than the student's), selected by the shared rule
(lowest last-epoch loss among the heads using the most clusters), with that head's EMA
prior and the teacher's final temperature, so its posterior is exactly the q_t the prior
averages.

Defaults: the paper's temperatures, beta, prior momentum and optimiser; 4 heads of width
256 (half the cost of 8; from k-means starts the heads agree, so more heads bought
little), teacher EMA 0.95 rising to 1, learning rate 1e-3 (docs/heads.md says why each
differs from the paper). Batch size, epochs and k come from the data's size (the shared
rules in :mod:`audioclust.training.heads.base`); the learning-rate warm-up is the first
``warmup`` of the run and the teacher-temperature warm-up the first
``teacher_temp_warmup``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.errors import ConfigError, DataError
from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.training.ema import ema_update
from audioclust.training.heads.base import (
    HeadEstimator,
    HeadSettings,
    Plan,
    batch_for,
    kmeans_warm_start,
    neighbour_count,
    plan_steps,
)
from audioclust.training.heads.neighbors import knn

__all__ = ["TEMI", "TEMISettings", "pair_weights", "temi_loss", "update_prior"]


@torch.no_grad()
def update_prior(prior: torch.Tensor, teacher_probs: torch.Tensor, momentum: float) -> torch.Tensor:
    """The EMA prior after one batch: ``m * prior + (1 - m) * batch mean of q_t``.

    ``prior`` is (H, K), ``teacher_probs`` (H, N, K); returns a new (H, K) tensor.
    """
    return momentum * prior + (1.0 - momentum) * teacher_probs.mean(dim=1)


def pair_weights(teacher_probs: torch.Tensor) -> torch.Tensor:
    """w(x, x') averaged over heads: (B,) from teacher posteriors (H, 2B, K) whose first B
    rows are the points x and last B rows their neighbours x'."""
    b = teacher_probs.shape[1] // 2
    return (teacher_probs[:, :b] * teacher_probs[:, b:]).sum(-1).mean(0)


def temi_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    prior: torch.Tensor,
    beta: float,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """Each head's TEMI loss, (H,).

    ``student_logits`` and ``teacher_logits`` are (H, 2B, K): rows [:B] are the points x,
    rows [B:] their neighbours x'. ``prior`` (H, K) is the (already updated) EMA prior.
    Gradients flow into the student only.
    """
    b = student_logits.shape[1] // 2
    log_qs = F.log_softmax(student_logits / student_temp, dim=-1)
    with torch.no_grad():
        t = teacher_logits.detach() / teacher_temp
        log_qt = F.log_softmax(t, dim=-1)
        weight = pair_weights(log_qt.exp())  # (B,)
        log_prior = torch.log(prior).unsqueeze(1)  # (H, 1, K)
    # log sum_c (q_s q_t)^beta / prior, in log space: q_t at tau_t = 0.04 underflows.
    pmi_xn = torch.logsumexp(beta * (log_qs[:, :b] + log_qt[:, b:]) - log_prior, dim=-1)
    pmi_nx = torch.logsumexp(beta * (log_qs[:, b:] + log_qt[:, :b]) - log_prior, dim=-1)
    pair_loss = -0.5 * (pmi_xn + pmi_nx)  # (H, B)
    return (weight * pair_loss).mean(dim=1)


def _cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total``)."""
    t = min(step / max(total, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class TEMISettings(HeadSettings):
    """TEMI's hyperparameters (the module docstring says where each default comes from).

    None means "from the data": ``k_neighbors`` by :func:`neighbour_count`,
    ``batch_size`` and ``epochs`` by :func:`plan_steps`. ``init``: "kmeans" (every head
    first learns a k-means partition, best of ``init_restarts``, ``init_steps`` steps) or
    "random".
    """

    n_heads: int = 4
    hidden_dim: int = 256
    n_layers: int = 2
    k_neighbors: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup: float = 1 / 6
    student_temp: float = 0.1
    teacher_temp: float = 0.05
    teacher_temp_start: float = 0.04
    teacher_temp_warmup: float = 1 / 3
    beta: float = 0.6
    prior_momentum: float = 0.9
    teacher_momentum: float = 0.95
    init: Literal["kmeans", "random"] = "kmeans"
    init_steps: int = 100
    init_restarts: int = 10

    def __post_init__(self) -> None:
        if not 0.5 < self.beta <= 1.0:
            raise ConfigError(f"beta must be in (0.5, 1], got {self.beta}")
        for name in ("prior_momentum", "teacher_momentum"):
            m = getattr(self, name)
            if not 0.0 <= m < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {m}")
        if min(self.student_temp, self.teacher_temp, self.teacher_temp_start) <= 0:
            raise ConfigError("temperatures must be positive")
        given = [v for v in (self.epochs, self.k_neighbors) if v is not None]
        if min([self.n_heads, *given]) < 1 or (self.batch_size is not None
                                              and self.batch_size < 2):
            raise ConfigError("n_heads, k_neighbors, epochs >= 1 and batch_size >= 2 needed")
        if not (0.0 <= self.warmup < 1.0 and 0.0 <= self.teacher_temp_warmup < 1.0):
            raise ConfigError("warmup and teacher_temp_warmup are fractions of the run, in [0, 1)")


class TEMI(HeadEstimator):
    """TEMI clustering heads on frozen embeddings, as a scikit-learn style estimator.

    ``TEMI(n_clusters, settings=None, *, seed=0, progress=False, log=None, **overrides)``
    (see :class:`~audioclust.training.heads.base.HeadEstimator`; settings:
    :class:`TEMISettings`).

    After :meth:`fit`: ``head_`` (:class:`ClusterHead` holding every teacher head, the
    best one selected, its prior and the input standardisation), ``history_`` (per-epoch
    loss of every head, schedules, cluster usage, timings), ``head_losses_`` (H,) the last
    epoch's loss per head, ``priors_`` (H, K) every head's EMA prior, ``labels_`` the
    selected head's clusters of the training points, ``cluster_usage_`` (H,).
    """

    Settings = TEMISettings
    method = "temi"
    label = "TEMI"
    settings: TEMISettings

    def neighbors_for(self, n: int) -> int:
        """k for ``n`` points: ``k_neighbors``, or the shared default rule."""
        return neighbour_count(n, self.n_clusters, self.settings.k_neighbors)

    def plan(self, n: int) -> Plan:
        """Batch size and epochs for ``n`` points (see :func:`plan_steps`)."""
        return plan_steps(n, self.settings.batch_size, self.settings.epochs)

    # -- schedules -------------------------------------------------------------------
    def _teacher_temp_at(self, epoch: int, epochs: int) -> float:
        c = self.settings
        w = min(round(c.teacher_temp_warmup * epochs), epochs - 1)
        if epoch >= w:
            return c.teacher_temp
        return c.teacher_temp_start + (c.teacher_temp - c.teacher_temp_start) * epoch / w

    def _lr_at(self, step: int, plan: Plan) -> float:
        c = self.settings
        warm = round(c.warmup * plan.epochs) * plan.steps_per_epoch
        if step < warm:
            return c.lr * (step + 1) / warm
        return _cosine(step - warm, plan.total_steps - warm, c.lr, c.min_lr)

    # -- fitting ---------------------------------------------------------------------
    def fit(self, embeddings: np.ndarray, neighbors: np.ndarray | None = None) -> TEMI:
        """Train on (n, d) embeddings; ``neighbors`` (n, k) skips the neighbour search."""
        t_start = time.perf_counter()
        c = self.settings
        x_np = np.asarray(embeddings, dtype=np.float32)
        if x_np.ndim != 2 or x_np.shape[0] < 3:
            raise DataError(f"need (n >= 3, d) embeddings, got shape {x_np.shape}")
        n = x_np.shape[0]
        gen = self._generator()
        x = torch.from_numpy(x_np)
        config = HeadConfig(in_dim=x.shape[1], n_clusters=self.n_clusters,
                            n_heads=c.n_heads, hidden_dim=c.hidden_dim, n_layers=c.n_layers)
        student = ClusterHead(config, generator=gen)
        student.set_input_stats(x.mean(0), x.std(0))
        if neighbors is None:
            # Neighbours in the space the head sees (standardised, L2-normalised): raw
            # ReLU-pooled audio embeddings share a large common mean that would dominate
            # their cosine similarities.
            k = self.neighbors_for(n)
            t0 = time.perf_counter()
            with torch.no_grad():
                neighbors, _ = knn(student.prepare(x).numpy(), k, seed=self.seed)
            knn_seconds = time.perf_counter() - t0
            self._say(f"TEMI: {k} nearest neighbours of {n} points in {knn_seconds:.1f} s")
        else:
            knn_seconds = 0.0
        nbrs = torch.as_tensor(np.asarray(neighbors), dtype=torch.long)
        if nbrs.ndim != 2 or nbrs.shape[0] != n:
            raise DataError(f"neighbors must be (n, k) with n = {n}, got {tuple(nbrs.shape)}")
        if c.init == "kmeans":
            history0 = kmeans_warm_start(student, x, self.seed, c.init_steps,
                                         batch_for(n), c.lr, np.random.default_rng(self.seed),
                                         c.init_restarts)
            self._say(f"TEMI: warm start from k-means {history0}")
        teacher = copy.deepcopy(student)
        teacher.requires_grad_(False)
        student.train()
        teacher.train()
        opt = torch.optim.AdamW(student.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                fused=True)
        prior = torch.full((c.n_heads, self.n_clusters), 1.0 / self.n_clusters)

        plan = self.plan(n)
        batch, total = plan.batch_size, plan.total_steps
        history: dict[str, Any] = {"loss": [], "loss_mean": [], "teacher_temp": [], "lr": [],
                                   "teacher_momentum": [], "plan": {
                                       "batch_size": batch, "epochs": plan.epochs,
                                       "steps": total}}
        step = 0
        bar = tqdm(range(plan.epochs), desc="TEMI", unit="epoch", disable=not self.progress)
        for epoch in bar:
            tau_t = self._teacher_temp_at(epoch, plan.epochs)
            perm = torch.randperm(n, generator=gen)
            epoch_loss = torch.zeros(c.n_heads, dtype=torch.float64)
            lr = momentum = 0.0
            for s in range(plan.steps_per_epoch):
                idx = perm[s * batch : (s + 1) * batch]
                pick = torch.randint(nbrs.shape[1], (idx.numel(),), generator=gen)
                pairs = torch.cat([idx, nbrs[idx, pick]])
                z = x[pairs]
                with torch.no_grad():
                    t_logits = teacher.all_logits(z)
                    prior = update_prior(prior, torch.softmax(t_logits / tau_t, dim=-1),
                                         c.prior_momentum)
                losses = temi_loss(student.all_logits(z), t_logits, prior, c.beta,
                                   c.student_temp, tau_t)
                lr = self._lr_at(step, plan)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                momentum = _cosine(step, total, c.teacher_momentum, 1.0)
                # Parameters only: the teacher keeps its own prior and temperature buffers.
                ema_update(teacher, student, momentum, buffers=False)
                epoch_loss += losses.detach().double() * idx.numel()
                step += 1
            per_head = (epoch_loss / n).tolist()
            history["loss"].append([round(v, 6) for v in per_head])
            history["loss_mean"].append(round(float(np.mean(per_head)), 6))
            history["teacher_temp"].append(tau_t)
            history["lr"].append(lr)
            history["teacher_momentum"].append(momentum)
            bar.set_postfix(loss=f"{np.mean(per_head):.4f}", best=f"{min(per_head):.4f}")

        teacher.temperature.fill_(self._teacher_temp_at(plan.epochs, plan.epochs))
        self.priors_ = prior.numpy().copy()
        history.update({"k_neighbors": int(nbrs.shape[1]), "knn_seconds": round(knn_seconds, 3)})
        # The saved head is the teacher, with the selected head's EMA prior: its posterior
        # at the final teacher temperature is exactly the q_t that prior averages.
        self._finish(teacher, x, history["loss"][-1], history, t_start, prior=prior)
        return self
