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

The head with the lowest loss over the last epoch is selected. The saved head is the
teacher (its EMA weights are smoother than the student's), with the selected head's EMA
prior and the teacher's final temperature, so its posterior is exactly the q_t the prior
averages.

Defaults follow the paper where CPU time allows and say so where they do not:

- as in the paper: student temperature 0.1, teacher temperature warmed up linearly from
  0.04 to 0.05, beta 0.6, prior momentum 0.9, two hidden layers (TEMI's 3-layer MLP;
  the paper's head also L2-normalises a bottleneck before a weight-normalised last layer,
  :class:`ClusterHead` is a plain MLP), AdamW with weight decay 1e-4, best head by loss;
- 8 heads instead of 50 and hidden width 256 instead of 512: a 3,000-point fit takes
  about 40 s of CPU time (40 s to 2 min wall on two cores shared with other jobs); more
  heads mostly buy a better chance of a good best head;
- teacher EMA 0.95 (rising to 1 on a cosine) instead of 0.996, and learning rate 1e-3
  (5 warm-up epochs, cosine decay): the student can only move as fast as its teacher,
  and 0.996 assumes the paper's tens of thousands of steps; 30 epochs of 3,000 points
  are ~360 steps, in which a 0.996 teacher barely leaves its initialisation (the loss
  stalls near -0.2 on FSDD instead of reaching -1.8);
- k neighbours: the paper's 50 on its large sets; by default here
  ``clip(round(n / (20 K)), 5, 50)``, about 5 % of an average cluster: 50 for CIFAR-10
  and ImageNet, 15 for FSDD (3,000 clips, 10 digits), where 50 neighbours reach well
  beyond one speaker's takes of one digit (k = 10-15 beat 50 there).

The heads are small, so one torch thread is about as fast as two; on a machine shared
with other jobs, two contending threads made each step ~9x slower (the CLI defaults to
one thread).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from audioclust.models.heads import ClusterHead, HeadConfig
from audioclust.training.ema import ema_update
from audioclust.training.heads import HeadEstimator
from audioclust.training.heads.neighbors import knn

__all__ = ["TEMI", "pair_weights", "temi_loss", "update_prior"]


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


class TEMI(HeadEstimator):
    """TEMI clustering heads on frozen embeddings, as a scikit-learn style estimator.

    After :meth:`fit`: ``head_`` (:class:`ClusterHead` holding every teacher head, the
    best one selected, its prior and the input standardisation), ``history_`` (per-epoch
    loss of every head, schedules, cluster usage, timings), ``head_losses_`` (H,) the last
    epoch's loss per head, ``priors_`` (H, K) every head's EMA prior, ``labels_`` the
    selected head's clusters of the training points.
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_heads: int = 8,
        hidden_dim: int = 256,
        n_layers: int = 2,
        k_neighbors: int | None = None,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        min_lr: float = 1e-5,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 5,
        student_temp: float = 0.1,
        teacher_temp: float = 0.05,
        teacher_temp_start: float = 0.04,
        teacher_temp_warmup_epochs: int = 10,
        beta: float = 0.6,
        prior_momentum: float = 0.9,
        teacher_momentum: float = 0.95,
        seed: int = 0,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        self._check_n_clusters(n_clusters)
        if not 0.5 < beta <= 1.0:
            raise ValueError(f"beta must be in (0.5, 1], got {beta}")
        for name, m in (("prior_momentum", prior_momentum),
                        ("teacher_momentum", teacher_momentum)):
            if not 0.0 <= m < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {m}")
        if min(student_temp, teacher_temp, teacher_temp_start) <= 0:
            raise ValueError("temperatures must be positive")
        if min(n_heads, epochs) < 1 or batch_size < 2 or (k_neighbors or 1) < 1:
            raise ValueError("n_heads, k_neighbors, epochs >= 1 and batch_size >= 2 needed")
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.hidden_dim = hidden_dim
        self.n_layers = n_layers
        self.k_neighbors = k_neighbors
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.teacher_temp_start = teacher_temp_start
        self.teacher_temp_warmup_epochs = teacher_temp_warmup_epochs
        self.beta = beta
        self.prior_momentum = prior_momentum
        self.teacher_momentum = teacher_momentum
        self.seed = seed
        self.progress = progress
        self.log = log

    def neighbors_for(self, n: int) -> int:
        """k for ``n`` points: ``k_neighbors``, or the module's default rule."""
        k = self.k_neighbors or int(np.clip(round(n / (20 * self.n_clusters)), 5, 50))
        return min(k, n - 1)

    # -- schedules -------------------------------------------------------------------
    def _teacher_temp_at(self, epoch: int) -> float:
        w = min(self.teacher_temp_warmup_epochs, self.epochs - 1)
        if epoch >= w:
            return self.teacher_temp
        return self.teacher_temp_start + (self.teacher_temp - self.teacher_temp_start) * epoch / w

    def _lr_at(self, step: int, steps_per_epoch: int, total: int) -> float:
        warm = self.warmup_epochs * steps_per_epoch
        if step < warm:
            return self.lr * (step + 1) / warm
        return _cosine(step - warm, total - warm, self.lr, self.min_lr)

    # -- fitting ---------------------------------------------------------------------
    def fit(self, embeddings: np.ndarray, neighbors: np.ndarray | None = None) -> TEMI:
        """Train on (n, d) embeddings; ``neighbors`` (n, k) skips the neighbour search."""
        t_start = time.perf_counter()
        x_np = np.asarray(embeddings, dtype=np.float32)
        if x_np.ndim != 2 or x_np.shape[0] < 3:
            raise ValueError(f"need (n >= 3, d) embeddings, got shape {x_np.shape}")
        n = x_np.shape[0]
        say = self.log or (lambda s: None)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        x = torch.from_numpy(x_np)
        config = HeadConfig(in_dim=x.shape[1], n_clusters=self.n_clusters,
                            n_heads=self.n_heads, hidden_dim=self.hidden_dim,
                            n_layers=self.n_layers)
        student = ClusterHead(config)
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
            say(f"TEMI: {k} nearest neighbours of {n} points in {knn_seconds:.1f} s")
        else:
            knn_seconds = 0.0
        nbrs = torch.as_tensor(np.asarray(neighbors), dtype=torch.long)
        if nbrs.ndim != 2 or nbrs.shape[0] != n:
            raise ValueError(f"neighbors must be (n, k) with n = {n}, got {tuple(nbrs.shape)}")
        teacher = copy.deepcopy(student)
        teacher.requires_grad_(False)
        student.train()
        teacher.train()
        opt = torch.optim.AdamW(student.parameters(), lr=self.lr,
                                weight_decay=self.weight_decay)
        prior = torch.full((self.n_heads, self.n_clusters), 1.0 / self.n_clusters)

        steps_per_epoch = math.ceil(n / self.batch_size)
        total = steps_per_epoch * self.epochs
        history: dict[str, Any] = {"loss": [], "loss_mean": [], "teacher_temp": [], "lr": [],
                                   "teacher_momentum": []}
        step = 0
        bar = tqdm(range(self.epochs), desc="TEMI", unit="epoch", disable=not self.progress)
        for epoch in bar:
            tau_t = self._teacher_temp_at(epoch)
            perm = torch.randperm(n, generator=gen)
            epoch_loss = torch.zeros(self.n_heads, dtype=torch.float64)
            lr = momentum = 0.0
            for s in range(steps_per_epoch):
                idx = perm[s * self.batch_size : (s + 1) * self.batch_size]
                pick = torch.randint(nbrs.shape[1], (idx.numel(),), generator=gen)
                pairs = torch.cat([idx, nbrs[idx, pick]])
                z = x[pairs]
                with torch.no_grad():
                    t_logits = teacher.all_logits(z)
                    prior = update_prior(prior, torch.softmax(t_logits / tau_t, dim=-1),
                                         self.prior_momentum)
                losses = temi_loss(student.all_logits(z), t_logits, prior, self.beta,
                                   self.student_temp, tau_t)
                lr = self._lr_at(step, steps_per_epoch, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                momentum = _cosine(step, total, self.teacher_momentum, 1.0)
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

        head_losses = np.asarray(history["loss"][-1])
        best = int(np.argmin(head_losses))
        teacher.eval()
        teacher.select(best)
        teacher.prior.copy_(prior[best])
        teacher.temperature.fill_(self._teacher_temp_at(self.epochs))
        with torch.no_grad():
            assign = teacher.all_logits(x).argmax(-1)  # (H, n)
        usage = [int(torch.unique(a).numel()) / self.n_clusters for a in assign]

        self.head_ = teacher
        self.priors_ = prior.numpy().copy()
        self.head_losses_ = head_losses
        self.labels_ = assign[best].numpy()
        self.cluster_usage_ = np.asarray(usage)
        seconds = time.perf_counter() - t_start
        history.update({
            "method": "temi",
            "selected": best,
            "head_losses": head_losses.tolist(),
            "cluster_usage": usage,
            "n_points": n,
            "k_neighbors": int(nbrs.shape[1]),
            "knn_seconds": round(knn_seconds, 3),
            "seconds": round(seconds, 3),
            "params": self.get_params(),
        })
        self.history_ = history
        say(f"TEMI: {self.epochs} epochs in {seconds:.1f} s; head {best} selected (loss "
            f"{head_losses[best]:.4f}, uses {usage[best]:.0%} of {self.n_clusters} clusters)")
        return self
