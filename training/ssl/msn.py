"""MSN: masked siamese networks (Assran et al., 2022), adapted to log-mel audio.

Views of each crop (all BYOL-A-style: mixup with past clips, a random resized crop, a
random linear fader, then re-normalisation of the view batch):

- one *target* view: BYOL-A's large random resized crop, back to the crop's full size,
  never masked;
- ``anchor_views`` *anchor* views: a smaller crop (``anchor_time_scale`` of the input's
  frames, resized to ``anchor_frames``), from which the ViT drops a random
  ``mask_ratio`` share of the patch tokens before the transformer blocks.

Networks: the online ViT and projector embed the anchors; the target ViT and projector
(an EMA of the online ones, no gradient) embed the target. Both outputs are L2-normalised
and compared with ``num_prototypes`` learnable prototypes (L2-normalised at use):

    p_a = softmax(<z_a, q_k> / temperature)           anchor prediction, per anchor view
    p_t = softmax(<z_t, q_k> / target_temperature)    target, sharpened, no gradient
    loss = mean_a H(p_t, p_a) - me_max_weight * H(mean_a p_a)

H(p, q) = -Σ_k p_k log q_k is the cross entropy and H(p) the entropy. Since the target
temperature is lower than the anchor's, the target is a sharper version of what the
anchor would predict for it (MSN's sharpening p^(1/T) / Σ p^(1/T) with T =
target_temperature / temperature). The second term is MSN's mean-entropy maximisation
(me-max): -H of the anchors' average prediction is smallest, -log K, when the batch
spreads evenly over the K prototypes, which keeps all the prototypes in use and the
representation from collapsing onto one. Under torchrun the average is taken over every
process's batch, as in MSN.

Target momentum rises linearly from ``ema`` to 1 over the run (MSN's schedule). Learning
rate: the research notes' MultiStepLR shape, a x``lr_gamma`` (0.1) drop at each of
``lr_milestones`` (fractions of the run: 20, 40, 60 and 80 %, the notes' epochs
100/200/300/400 of 500), after a linear warm-up over the trainer's warm-up steps (a
transformer trained from scratch with AdamW is unstable without one). The peak is 5e-4,
not the notes' 1e-4: the notes fine-tuned an ImageNet-pretrained ViT-B/32, while here the
ViT starts from scratch. On FSDD (batch 64, 5 of 30 epochs) 1e-4 left the digit k-means
NMI below a random encoder's, 5e-4 raised it and 1e-3 was unstable.

CPU-sized defaults: 256 prototypes, a 512-512-128 projector, two anchor views of half the
crop, 30 % of anchor tokens dropped. Give the ViT 16 x 8 patches (``encoder_config =
{patch_time = 8}``): a 64-frame crop is then 4 x 8 = 32 tokens and an anchor 16; with the
ViT's default 16 x 16 patches (16 and 8 tokens) MSN did not beat a random encoder on FSDD
digits in the same check.

Every view draws its own mixup partners, so the mixup memory receives each batch once per
view (``1 + anchor_views`` times): it holds that many fewer distinct past clips.

Not done here: MSN's Sinkhorn balancing of the targets, its weight-decay schedule, and its
extra small "focal" views beside the masked random view (``anchor_views`` gives several
masked small views instead).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from audioclust.models.encoders import ViT
from audioclust.models.errors import ConfigError
from audioclust.training.augment import MixupBYOLA, RandomLinearFader, RandomResizedCrop
from audioclust.training.ema import ema_update
from audioclust.training.ssl.trainer import SSLMethod

__all__ = ["MSN", "linear_momentum", "me_max", "msn_loss", "projection_head", "renorm"]


def projection_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """MSN's projector: two Linear -> BatchNorm -> GELU layers, then a linear output."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
        nn.Linear(hidden, dim_out),
    )


def renorm(x: torch.Tensor) -> torch.Tensor:
    """BYOL-A's post-augmentation normalisation: zero mean, unit std over the view batch."""
    return (x - x.mean()) / (x.std() + 1e-6)


def linear_momentum(base: float, step: int, total_steps: int) -> float:
    """MSN's target momentum: linear from ``base`` at step 0 to 1 at the last step."""
    return min(1.0, base + (1.0 - base) * step / max(1, total_steps))


def _global_mean(p: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of ``p`` across all processes (differentiable), or locally."""
    mean = p.mean(dim=0)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        mean = all_reduce(mean) / dist.get_world_size()
    return mean


def me_max(mean_prediction: torch.Tensor) -> torch.Tensor:
    """MSN's regulariser -H(p̄) = Σ_k p̄_k log p̄_k; minimal (-log K) for uniform p̄."""
    return torch.special.xlogy(mean_prediction, mean_prediction).sum()


def msn_loss(
    anchor_logits: torch.Tensor,
    target_logits: torch.Tensor,
    me_max_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSN's loss from prototype logits already divided by their temperatures.

    ``anchor_logits`` (V * B, K) holds V anchor views of B clips (view-major: row
    ``v * B + i`` is view v of clip i); ``target_logits`` (B, K) the targets, which
    get no gradient. Returns the loss and its parts: "ce" (the cross entropy), "me_max"
    (-H of the mean anchor prediction) and "target_entropy" (mean H(p_t), small when
    the targets are sharp).
    """
    b = target_logits.shape[0]
    if anchor_logits.shape[0] % b:
        raise ValueError(f"{anchor_logits.shape[0]} anchors are not a multiple of {b} targets")
    views = anchor_logits.shape[0] // b
    log_p_anchor = F.log_softmax(anchor_logits, dim=1)
    p_target = F.softmax(target_logits.detach(), dim=1)
    ce = -(p_target.repeat(views, 1) * log_p_anchor).sum(dim=1).mean()
    reg = me_max(_global_mean(log_p_anchor.exp()))
    target_entropy = -torch.special.xlogy(p_target, p_target).sum(dim=1).mean()
    parts = {"ce": ce, "me_max": reg, "target_entropy": target_entropy}
    return ce + me_max_weight * reg, parts


class MSN(SSLMethod):
    """Masked siamese networks on a :class:`~audioclust.models.encoders.ViT`."""

    default_lr = 5e-4  # see the module docstring
    default_weight_decay = 0.04  # MSN's starting weight decay (it raises it to 0.4)

    def __init__(
        self,
        encoder: nn.Module,
        generator: torch.Generator,
        crop_frames: int,
        num_prototypes: int = 256,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        anchor_views: int = 2,
        anchor_frames: int | None = None,
        anchor_time_scale: tuple[float, float] = (0.35, 0.65),
        mask_ratio: float = 0.3,
        temperature: float = 0.1,
        target_temperature: float = 0.025,
        me_max_weight: float = 1.0,
        ema: float = 0.996,
        mixup_ratio: float = 0.2,
        memory_size: int = 2048,
        lr_milestones: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
        lr_gamma: float = 0.1,
    ):
        if not isinstance(encoder, ViT):
            raise ConfigError(
                f"MSN masks patch tokens and needs the ViT encoder, got "
                f"{type(encoder).__name__}; use --encoder vit (encoder = \"vit\")"
            )
        super().__init__(encoder, generator)
        patch_time = encoder.config.patch_time
        if anchor_frames is None:
            # Half the crop, whole patches only: a smaller view, as MSN's focal crops.
            anchor_frames = max(patch_time, (crop_frames // 2) // patch_time * patch_time)
        if anchor_frames < patch_time:
            raise ConfigError(f"anchor_frames ({anchor_frames}) < the ViT's patch_time "
                              f"({patch_time})")
        if anchor_views < 1 or num_prototypes < 2:
            raise ConfigError("anchor_views >= 1 and num_prototypes >= 2 needed")
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0.0 < target_temperature <= temperature:
            raise ConfigError("need 0 < target_temperature <= temperature (targets sharpen)")
        if sorted(lr_milestones) != list(lr_milestones) or not 0.0 < lr_gamma <= 1.0:
            raise ConfigError("lr_milestones must be sorted and lr_gamma in (0, 1]")
        d = int(encoder.embed_dim)
        self.projector = projection_head(d, hidden_dim, projection_dim)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, projection_dim) * 0.02)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.anchor_views = anchor_views
        self.anchor_frames = anchor_frames
        self.mask_ratio = mask_ratio
        self.temperature = temperature
        self.target_temperature = target_temperature
        self.me_max_weight = me_max_weight
        self.base_ema = ema
        self.lr_milestones = tuple(float(m) for m in lr_milestones)
        self.lr_gamma = lr_gamma
        self.mixup = MixupBYOLA(mixup_ratio, memory_size, generator=generator)
        self.fader = RandomLinearFader(generator=generator)
        # Target: BYOL-A's crop (up to 1.5x zoom either way), full size.
        self.target_crop = RandomResizedCrop(generator=generator)
        # Anchors: a shorter stretch of the clip, kept on the real clip (no canvas
        # padding in time), resized to fewer frames and so fewer patch tokens.
        self.anchor_crop = RandomResizedCrop(
            virtual_crop_scale=(1.0, 1.0),
            time_scale=tuple(anchor_time_scale),
            out_size=(encoder.config.n_mels, anchor_frames),
            generator=generator,
        )

    def target_view(self, x: torch.Tensor) -> torch.Tensor:
        return renorm(self.fader(self.target_crop(self.mixup(x))))

    def anchor_view(self, x: torch.Tensor) -> torch.Tensor:
        return renorm(self.fader(self.anchor_crop(self.mixup(x))))

    def prototype_logits(self, z: torch.Tensor, temperature: float) -> torch.Tensor:
        """Cosine similarities of embeddings ``z`` to the prototypes, over ``temperature``."""
        q = F.normalize(self.prototypes, dim=1)
        return F.normalize(z, dim=1) @ q.T / temperature

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.target_view(crops)
        anchors = torch.cat([self.anchor_view(crops) for _ in range(self.anchor_views)])
        with torch.no_grad():
            z_target = self.target_projector(self.target_encoder(target))
            target_logits = self.prototype_logits(z_target, self.target_temperature)
        h = self.encoder(anchors, mask_ratio=self.mask_ratio, generator=self.generator)
        anchor_logits = self.prototype_logits(self.projector(h), self.temperature)
        loss, parts = msn_loss(anchor_logits, target_logits, self.me_max_weight)
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def lr_factor(self, step: int, total_steps: int, warmup_steps: int) -> float:
        """Linear warm-up, then ``lr_gamma`` per milestone passed (MultiStepLR)."""
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        passed = sum(step >= round(m * total_steps) for m in self.lr_milestones)
        return self.lr_gamma**passed

    def after_step(self, step: int, total_steps: int) -> None:
        m = linear_momentum(self.base_ema, step, total_steps)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
