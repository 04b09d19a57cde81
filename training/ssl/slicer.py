"""SLICER: symmetric instance- and cluster-level contrastive learning (Seth et al., 2023).

Views: each crop is augmented twice, independently: k-mix (:class:`KMix`: each clip mixed
in the power domain with k - 1 other clips of the batch, its own weight dominating), then
BYOL-A's random resized crop and random linear fader, then re-normalisation of the view
batch. k-mix replaces BYOL-A's mixup with a memory; the mixing weights are not used by
the loss (each mixed clip stays its own instance, as in SLICER).

Networks: a student (encoder f, instance head g, cluster head h) trained by gradient, and a
teacher with the same layout whose weights are an EMA of the student's (momentum from
``ema`` up to 1 along a cosine, as BYOL); the teacher gets no gradient. For a view batch
x (B clips):

    z = normalise(g(f(x)))  in R^{B x projection_dim}    instance embeddings
    c = softmax(h(f(x)))    in R^{B x K}                 soft cluster assignments

Loss, with v1, v2 the two views, s = student, t = teacher (no gradient):

    L = 1/2 [ l(s(v1), t(v2)) + l(s(v2), t(v1)) ]
    l(s, t) = NTXent(z_s, z_t; instance_temperature)                  instance level
            + NTXent(c_s^T, c_t^T; cluster_temperature) - H(mean_i c_s[i])   cluster level

NTXent(a, b; τ) for row sets a, b of n rows each is SimCLR's loss over the 2n rows: with
cosine similarities sim(u, w) / τ, every row's positive is its counterpart in the other
set and its negatives the other 2n - 2 rows; the loss is the cross entropy averaged over
all 2n rows (so NTXent(a, b) = NTXent(b, a)). At the instance level the rows are the B
clips' embeddings; at the cluster level (Contrastive Clustering, Li et al., 2021) they are
the K columns of the assignment matrices, each a cluster's B-dimensional "representation"
over the batch, so a cluster of the student must match the same cluster of the teacher
and differ from the others. H(p) = -Σ_k p_k log p_k of the batch's mean assignment is
Contrastive Clustering's entropy term: maximising it keeps every cluster in use (the
teacher's entropy has no gradient, so it is left out). Both directions (student on each
view against the teacher on the other) make the loss symmetric in the two views.

Defaults are CPU-sized: K = 32 clusters (cluster contrast needs several clips per
cluster in a batch of 64), 128-d instance embeddings, τ_instance = 0.5 and τ_cluster =
1.0 (Contrastive Clustering's values).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError
from audioclust.training.augment import KMix, RandomLinearFader, RandomResizedCrop
from audioclust.training.ema import cosine_momentum, ema_update
from audioclust.training.ssl.byola import mlp
from audioclust.training.ssl.msn import renorm
from audioclust.training.ssl.trainer import SSLMethod

__all__ = ["SLICER", "cluster_entropy", "nt_xent"]


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2n rows of ``a`` (n, d) and ``b`` (n, d).

    Row i of ``a`` and row i of ``b`` are positives; every other row is a negative.
    Symmetric in ``a`` and ``b``.
    """
    n = a.shape[0]
    if b.shape[0] != n or n < 2:
        raise ValueError(f"need two sets of n >= 2 rows, got {a.shape[0]} and {b.shape[0]}")
    rows = F.normalize(torch.cat([a, b]), dim=1)
    logits = rows @ rows.T / temperature
    # A row is not its own negative.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=a.device), -torch.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, positives)


def cluster_entropy(assignments: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean soft assignment (B, K) over the batch; at most log K."""
    p = assignments.mean(dim=0)
    return -torch.special.xlogy(p, p).sum()


class SLICER(SSLMethod):
    """SLICER around any encoder (the CNN by default)."""

    default_lr = 3e-4
    default_weight_decay = 1e-5

    def __init__(
        self,
        encoder: nn.Module,
        generator: torch.Generator,
        crop_frames: int,
        num_clusters: int = 32,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        instance_temperature: float = 0.5,
        cluster_temperature: float = 1.0,
        entropy_weight: float = 1.0,
        ema: float = 0.99,
        kmix_k: int = 3,
        kmix_ratio: float = 0.4,
    ):
        super().__init__(encoder, generator)
        if num_clusters < 2:
            raise ConfigError(f"num_clusters must be >= 2, got {num_clusters}")
        if min(instance_temperature, cluster_temperature) <= 0:
            raise ConfigError("temperatures must be positive")
        d = int(encoder.embed_dim)
        self.instance_head = mlp(d, hidden_dim, projection_dim)
        self.cluster_head = mlp(d, hidden_dim, num_clusters)
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_instance_head = copy.deepcopy(self.instance_head)
        self.teacher_cluster_head = copy.deepcopy(self.cluster_head)
        for net in self._teacher():
            for p in net.parameters():
                p.requires_grad_(False)
        self.instance_temperature = instance_temperature
        self.cluster_temperature = cluster_temperature
        self.entropy_weight = entropy_weight
        self.base_ema = ema
        self.kmix = KMix(kmix_k, kmix_ratio, generator=generator)
        self.crop = RandomResizedCrop(generator=generator)
        self.fader = RandomLinearFader(generator=generator)

    def _student(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.encoder, self.instance_head, self.cluster_head

    def _teacher(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.teacher_encoder, self.teacher_instance_head, self.teacher_cluster_head

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return renorm(self.fader(self.crop(self.kmix(x).mixed)))

    @staticmethod
    def _embed(
        nets: tuple[nn.Module, nn.Module, nn.Module], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoder, instance_head, cluster_head = nets
        h = encoder(x)
        return F.normalize(instance_head(h), dim=1), F.softmax(cluster_head(h), dim=1)

    def pair_loss(
        self,
        student: tuple[torch.Tensor, torch.Tensor],
        teacher: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """l(s, t) of the module docstring, by part: "instance", "cluster", "entropy"."""
        (z_s, c_s), (z_t, c_t) = student, teacher
        return {
            "instance": nt_xent(z_s, z_t.detach(), self.instance_temperature),
            "cluster": nt_xent(c_s.T, c_t.detach().T, self.cluster_temperature),
            "entropy": cluster_entropy(c_s),
        }

    def loss_from_views(
        self, v1: torch.Tensor, v2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The symmetric loss of two view batches; its parts averaged over directions."""
        b = v1.shape[0]
        # One pass per network over both views: half the calls, same result as two
        # passes except that BatchNorm pools its batch statistics over both views.
        z_s, c_s = self._embed(self._student(), torch.cat([v1, v2]))
        with torch.no_grad():
            z_t, c_t = self._embed(self._teacher(), torch.cat([v1, v2]))
        s1, s2 = (z_s[:b], c_s[:b]), (z_s[b:], c_s[b:])
        t1, t2 = (z_t[:b], c_t[:b]), (z_t[b:], c_t[b:])
        forward, backward = self.pair_loss(s1, t2), self.pair_loss(s2, t1)
        parts = {k: (forward[k] + backward[k]) / 2 for k in forward}
        loss = parts["instance"] + parts["cluster"] - self.entropy_weight * parts["entropy"]
        return loss, parts

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = self.loss_from_views(self.augment(crops), self.augment(crops))
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(self.base_ema, step, total_steps)
        for teacher, student in zip(self._teacher(), self._student(), strict=True):
            ema_update(teacher, student, m)
