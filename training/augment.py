"""Batched log-mel augmentations for self-supervised training, on the training device.

Every transform takes a batch (B, C, F, T) (C = 1 for the log-mel frontend) and works on
whatever device the batch is on. Hyperparameters are fixed at construction. Random draws
come from the transform's own CPU :class:`torch.Generator` (``seed=`` or ``generator=``):
only per-sample parameters (B or B x k numbers) are drawn, then moved to the batch's
device, so a seed gives the same augmentations on CPU and GPU and is independent of the
global RNG.

- :class:`MixupBYOLA`: BYOL-A's log-mixup-exp with a memory bank of past inputs.
- :class:`RandomResizedCrop`: BYOL-A's crop from a virtual canvas, resized back.
- :class:`RandomLinearFader`: BYOL-A v2's random linear gain ramp over time.
- :class:`SpecAugment`: frequency and time masks, with the FixMatch-audio presets.
- :class:`KMix`: label-free mixup of k clips of the batch, returning its weights.

BYOL-A's pipeline is ``MixupBYOLA`` -> ``RandomResizedCrop`` -> ``RandomLinearFader`` on
log-mels normalised with the dataset's statistics (the embedder's ``mean``/``std``).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from audioclust.models.errors import ConfigError

__all__ = [
    "SPEC_AUGMENT_PRESETS",
    "CropParams",
    "KMix",
    "KMixOutput",
    "MaskSpans",
    "MixupBYOLA",
    "RandomLinearFader",
    "RandomResizedCrop",
    "SpecAugment",
]


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a batch (B, C, F, T), got shape {tuple(x.shape)}")


class _RandomTransform(nn.Module):
    """Holds the CPU generator every random draw of a transform comes from."""

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if seed is not None and generator is not None:
            raise ConfigError("give seed or generator, not both")
        if generator is not None and generator.device.type != "cpu":
            raise ConfigError("the generator must be a CPU generator")
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        self.generator = generator

    def _uniform(self, *shape: int) -> torch.Tensor:
        """U[0, 1) draws in float64 on the CPU."""
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def _integers(self, high: torch.Tensor, *shape: int) -> torch.Tensor:
        """Uniform integers in [0, high) (``high`` broadcast against ``shape``), int64."""
        return torch.floor(self._uniform(*shape) * high).long()


class MixupBYOLA(_RandomTransform):
    """BYOL-A's mixup: blend each clip with a random past clip, in the power domain.

    ``x' = log((1 - λ) exp(x) + λ exp(z))`` per sample, with ``λ ~ U(0, ratio)`` and ``z``
    drawn uniformly from a FIFO memory of the last ``memory_size`` input clips (the
    inputs before mixing, as BYOL-A keeps them). Mixing log-mel in the power domain adds
    a background sound; mixing the logs would multiply spectra. With an empty memory (the
    first batch, or ``memory_size=0``) the partner comes from a shuffle of the batch.

    The memory holds clips of one shape on one device; a batch of another shape starts
    it afresh. ``log_mixup_exp=False`` mixes linearly instead.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        memory_size: int = 2048,
        log_mixup_exp: bool = True,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(seed, generator)
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"ratio must be in [0, 1], got {ratio}")
        if memory_size < 0:
            raise ConfigError(f"memory_size must be >= 0, got {memory_size}")
        self.ratio = ratio
        self.memory_size = memory_size
        self.log_mixup_exp = log_mixup_exp
        # Not a buffer: tens of MB of past inputs belong to the run, not the checkpoint.
        self._memory: torch.Tensor | None = None
        self._filled = 0
        self._next = 0

    def reset(self) -> None:
        """Forget the memory of past inputs."""
        self._memory, self._filled, self._next = None, 0, 0

    @property
    def memory_filled(self) -> int:
        return self._filled

    def _remember(self, x: torch.Tensor) -> None:
        if self.memory_size == 0:
            return
        x = x.detach()[-self.memory_size :]
        if self._memory is None:
            self._memory = x.new_empty((self.memory_size, *x.shape[1:]))
        slots = (self._next + torch.arange(x.shape[0])) % self.memory_size
        self._memory[slots.to(self._memory.device)] = x
        self._next = (self._next + x.shape[0]) % self.memory_size
        self._filled = min(self._filled + x.shape[0], self.memory_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        b = x.shape[0]
        if self._memory is not None and (
            self._memory.shape[1:] != x.shape[1:] or self._memory.dtype != x.dtype
        ):
            self.reset()
        if self._memory is not None and self._memory.device != x.device:
            self._memory = self._memory.to(x.device)
        if self._filled > 0:
            idx = self._integers(torch.tensor(self._filled), b)
            partners = self._memory[idx.to(x.device)]
        else:
            partners = x[torch.randperm(b, generator=self.generator).to(x.device)]
        lam = (self._uniform(b) * self.ratio).to(device=x.device, dtype=x.dtype)
        lam = lam.view(b, *([1] * (x.dim() - 1)))
        if self.log_mixup_exp:
            # logaddexp is the stable form of log((1-λ)e^x + λe^z); log(0) = -inf at λ = 0
            # leaves x exactly as it was.
            mixed = torch.logaddexp(x + torch.log1p(-lam), partners + torch.log(lam))
        else:
            mixed = (1 - lam) * x + lam * partners
        self._remember(x)
        return mixed

    def extra_repr(self) -> str:
        return (
            f"ratio={self.ratio}, memory_size={self.memory_size}, "
            f"log_mixup_exp={self.log_mixup_exp}"
        )


class CropParams(NamedTuple):
    """Per-sample crops (B,) in virtual-canvas pixels, and the canvas size."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    canvas: tuple[int, int]


class RandomResizedCrop(_RandomTransform):
    """BYOL-A's random resize crop, per sample, resized by bilinear interpolation.

    The (F, T) input sits centred on a virtual canvas ``virtual_crop_scale`` times its
    size, the rest filled with ``fill``. A crop of ``freq_scale`` x ``time_scale`` times
    the input size (each factor uniform in its range, truncated to whole bins/frames and
    clipped to the canvas) is taken at a uniform position on the canvas and resized to
    ``out_size`` (the input size if None). With BYOL-A's defaults the crop stretches or
    squeezes time and frequency by up to 1/0.6 and 1.5 and can shift the clip in time.

    ``area_scale=(0.3, 1.0)`` gives instead torchvision's parametrisation (the issue's
    "scale 0.3–1.0"): the crop's area is a uniform fraction of the input's, its aspect
    (frequency factor / time factor) log-uniform in ``aspect_ratio``; ``freq_scale`` and
    ``time_scale`` are then unused. The SSL methods keep BYOL-A's per-axis defaults, with
    which the FSDD benchmarks were measured.

    Canvas padding is ``fill``, so this belongs after normalisation (where 0 is the
    average level), as in BYOL-A. Bilinear interpolation keeps every output value
    between the input's extremes (and ``fill``).
    """

    def __init__(
        self,
        virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        out_size: tuple[int, int] | None = None,
        mode: Literal["bilinear", "bicubic", "nearest"] = "bilinear",
        fill: float = 0.0,
        *,
        area_scale: tuple[float, float] | None = None,
        aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(seed, generator)
        if area_scale is not None and not 0.0 < area_scale[0] <= area_scale[1]:
            raise ConfigError(f"area_scale must satisfy 0 < min <= max, got {area_scale}")
        if not 0.0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ConfigError(f"aspect_ratio must satisfy 0 < min <= max, got {aspect_ratio}")
        if min(virtual_crop_scale) < 1.0:
            raise ConfigError(f"virtual_crop_scale must be >= 1, got {virtual_crop_scale}")
        for name, (lo, hi) in (("freq_scale", freq_scale), ("time_scale", time_scale)):
            if not 0.0 < lo <= hi:
                raise ConfigError(f"{name} must satisfy 0 < min <= max, got {(lo, hi)}")
        if out_size is not None and min(out_size) < 1:
            raise ConfigError(f"out_size must be positive, got {out_size}")
        self.virtual_crop_scale = tuple(virtual_crop_scale)
        self.freq_scale = tuple(freq_scale)
        self.time_scale = tuple(time_scale)
        self.out_size = None if out_size is None else tuple(out_size)
        self.mode = mode
        self.fill = fill
        self.area_scale = None if area_scale is None else tuple(area_scale)
        self.aspect_ratio = tuple(aspect_ratio)

    def sample(self, batch: int, in_size: tuple[int, int]) -> CropParams:
        """Draw ``batch`` crops for inputs of ``in_size`` (F, T)."""
        (f, t), (vf, vt) = in_size, self.virtual_crop_scale
        canvas = (int(f * vf), int(t * vt))

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * self._uniform(batch)

        if self.area_scale is None:
            freq_factor, time_factor = uniform(*self.freq_scale), uniform(*self.time_scale)
        else:
            area = uniform(*self.area_scale)
            aspect = torch.exp(uniform(*(math.log(r) for r in self.aspect_ratio)))
            freq_factor, time_factor = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        height = torch.floor(freq_factor * f).clamp(1, canvas[0]).long()
        width = torch.floor(time_factor * t).clamp(1, canvas[1]).long()
        top = self._integers(canvas[0] - height + 1, batch)
        left = self._integers(canvas[1] - width + 1, batch)
        return CropParams(top, left, height, width, canvas)

    def apply(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Crop and resize ``x`` with given crops (one grid_sample for the whole batch)."""
        _check_batch(x, type(self).__name__)
        b, _, f, t = x.shape
        if f < 2 or t < 2:
            raise ValueError(f"input must be at least 2 x 2, got {f} x {t}")
        out_f, out_t = self.out_size or (f, t)

        def source_coords(
            start: torch.Tensor, length: torch.Tensor, offset: int, n_out: int, n_in: int
        ) -> torch.Tensor:
            # Output pixel r samples crop pixel r * (length - 1) / (n_out - 1), corner
            # aligned like F.interpolate(align_corners=True) on the cropped canvas;
            # then canvas -> input pixels -> grid_sample's [-1, 1].
            step = torch.arange(n_out, dtype=torch.float64) / max(n_out - 1, 1)
            pixels = (start - offset)[:, None] + step[None, :] * (length - 1)[:, None]
            return 2.0 * pixels / (n_in - 1) - 1.0

        gy = source_coords(params.top, params.height, (params.canvas[0] - f) // 2, out_f, f)
        gx = source_coords(params.left, params.width, (params.canvas[1] - t) // 2, out_t, t)
        grid = torch.stack(
            [gx[:, None, :].expand(b, out_f, out_t), gy[:, :, None].expand(b, out_f, out_t)],
            dim=-1,
        ).to(device=x.device, dtype=x.dtype)
        # grid_sample pads with zeros; shifting by fill makes the canvas read as fill.
        out = F.grid_sample(
            x - self.fill, grid, mode=self.mode, padding_mode="zeros", align_corners=True
        )
        return out + self.fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        return self.apply(x, self.sample(x.shape[0], (x.shape[2], x.shape[3])))

    def extra_repr(self) -> str:
        return (
            f"virtual_crop_scale={self.virtual_crop_scale}, freq_scale={self.freq_scale}, "
            f"time_scale={self.time_scale}, out_size={self.out_size}, mode={self.mode!r}"
        )


class RandomLinearFader(_RandomTransform):
    """BYOL-A v2's fader: add a random linear ramp over time to the log-mel.

    Per sample, the gains at the first and last frame are drawn from U(-gain, gain) and
    interpolated linearly between; in the log domain this is a fade in or out of up to
    ``gain`` nepers. Every added value lies in [-gain, gain].
    """

    def __init__(
        self,
        gain: float = 1.0,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(seed, generator)
        if gain < 0:
            raise ConfigError(f"gain must be >= 0, got {gain}")
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        b, t = x.shape[0], x.shape[-1]
        head, tail = (2.0 * self._uniform(2, b) - 1.0) * self.gain
        pos = torch.arange(t, dtype=torch.float64) / max(t - 1, 1)
        ramp = head[:, None] + (tail - head)[:, None] * pos[None, :]
        return x + ramp.to(device=x.device, dtype=x.dtype)[:, None, None, :]

    def extra_repr(self) -> str:
        return f"gain={self.gain}"


class MaskSpans(NamedTuple):
    """Per-sample mask starts and widths, each (B, number of masks)."""

    freq_start: torch.Tensor
    freq_width: torch.Tensor
    time_start: torch.Tensor
    time_width: torch.Tensor


# name -> (frequency masks, max bins, time masks, max frames), from the FixMatch-on-audio
# paper's weak and strong augmentations.
SPEC_AUGMENT_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "weak": (1, 8, 1, 32),
    "strong": (2, 35, 2, 64),
}


class SpecAugment(_RandomTransform):
    """SpecAugment's frequency and time masking (no time warping), per sample.

    Each sample gets ``freq_masks`` frequency masks and ``time_masks`` time masks. A
    mask's width is uniform in {0, ..., max width} with the maximum clipped to the input
    size, its start uniform over the positions where it fits; masks may overlap. Masked
    cells are set to ``fill``: a number (0 = the mean after normalisation) or "mean" for
    each sample's own mean. Presets: :meth:`preset` ("weak", "strong").
    """

    def __init__(
        self,
        freq_masks: int = 1,
        max_freq_width: int = 8,
        time_masks: int = 1,
        max_time_width: int = 32,
        fill: float | Literal["mean"] = 0.0,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(seed, generator)
        if min(freq_masks, max_freq_width, time_masks, max_time_width) < 0:
            raise ConfigError("mask counts and widths must be >= 0")
        if isinstance(fill, str) and fill != "mean":
            raise ConfigError(f"fill must be a number or 'mean', got {fill!r}")
        self.freq_masks = freq_masks
        self.max_freq_width = max_freq_width
        self.time_masks = time_masks
        self.max_time_width = max_time_width
        self.fill = fill

    @classmethod
    def preset(
        cls,
        name: Literal["weak", "strong"],
        *,
        fill: float | Literal["mean"] = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SpecAugment:
        """weak: one mask of <= 8 bins and one of <= 32 frames; strong: two of each, <= 35
        bins and <= 64 frames."""
        try:
            counts = SPEC_AUGMENT_PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"unknown preset {name!r}; known: {sorted(SPEC_AUGMENT_PRESETS)}"
            ) from None
        return cls(*counts, fill=fill, seed=seed, generator=generator)

    def _spans(
        self, batch: int, count: int, max_width: int, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = self._integers(torch.tensor(min(max_width, size) + 1), batch, count)
        start = self._integers(size - width + 1, batch, count)
        return start, width

    def sample(self, batch: int, n_freq: int, n_time: int) -> MaskSpans:
        """Draw the masks of ``batch`` samples of ``n_freq`` bins by ``n_time`` frames."""
        fs, fw = self._spans(batch, self.freq_masks, self.max_freq_width, n_freq)
        ts, tw = self._spans(batch, self.time_masks, self.max_time_width, n_time)
        return MaskSpans(fs, fw, ts, tw)

    @staticmethod
    def span_mask(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
        """(B, n) spans -> (B, size) bool, True inside any span."""
        pos = torch.arange(size, device=start.device)[None, None, :]
        inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
        return inside.any(dim=1)

    def apply(self, x: torch.Tensor, spans: MaskSpans) -> torch.Tensor:
        """Mask ``x`` (B, C, F, T) with given spans."""
        _check_batch(x, type(self).__name__)
        f, t = x.shape[2], x.shape[3]
        freq = self.span_mask(spans.freq_start, spans.freq_width, f).to(x.device)
        time = self.span_mask(spans.time_start, spans.time_width, t).to(x.device)
        masked = (freq[:, :, None] | time[:, None, :])[:, None]  # (B, 1, F, T)
        if self.fill == "mean":
            fill = x.mean(dim=(1, 2, 3), keepdim=True)
        else:
            fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        return torch.where(masked, fill, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        return self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3]))

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, max_freq_width={self.max_freq_width}, "
            f"time_masks={self.time_masks}, max_time_width={self.max_time_width}, "
            f"fill={self.fill!r}"
        )


class KMixOutput(NamedTuple):
    """KMix's result: ``mixed[i]`` mixes clips ``indices[i]`` with ``weights[i]``.

    Column 0 of ``indices`` is the sample itself (``indices[:, 0] == arange(B)``) and
    column 0 of ``weights`` its own weight; each row of ``weights`` sums to 1.
    """

    mixed: torch.Tensor  # (B, C, F, T)
    weights: torch.Tensor  # (B, k)
    indices: torch.Tensor  # (B, k), int64

    def matrix(self) -> torch.Tensor:
        """Dense (B, B) mixing matrix: row i holds the weight of every clip in output i."""
        b = self.indices.shape[0]
        out = self.weights.new_zeros(b, b)
        return out.scatter_add_(1, self.indices, self.weights)


class KMix(_RandomTransform):
    """Label-free mixup of k clips of the batch (after SLICER's k-mix).

    Rule, per sample i of a batch of B >= k clips:

    - partners: k - 1 distinct other clips of the batch, uniformly without replacement;
    - weights: the sample keeps ``1 - ρ`` with ``ρ ~ U(0, ratio)``; the partners share
      ``ρ`` by a flat Dirichlet draw (uniform on the simplex). With ``ratio <= 0.5`` the
      sample's own weight is at least 0.5 and at least every partner's: it dominates;
    - mixing: log-mixup-exp, ``log(Σ_j w_j exp(x_j))``, as :class:`MixupBYOLA` (or linear
      with ``log_mixup_exp=False``).

    Returns :class:`KMixOutput` so a loss can weight targets by the mixing weights.
    SLICER's reference code instead mixes one partner chosen from a nearby k-means
    cluster of a memory bank; this batch version needs no clustering pass.
    """

    def __init__(
        self,
        k: int = 3,
        ratio: float = 0.4,
        log_mixup_exp: bool = True,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(seed, generator)
        if k < 2:
            raise ConfigError(f"k must be >= 2, got {k}")
        if not 0.0 <= ratio <= 0.5:
            raise ConfigError(f"ratio must be in [0, 0.5] for the own clip to dominate, "
                              f"got {ratio}")
        self.k = k
        self.ratio = ratio
        self.log_mixup_exp = log_mixup_exp

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixing weights (B, k) float64 and clip indices (B, k) for a batch of ``batch``."""
        if batch < self.k:
            raise ConfigError(f"KMix with k={self.k} needs a batch of at least {self.k} clips")
        scores = self._uniform(batch, batch)
        scores.fill_diagonal_(2.0)  # never one's own partner
        partners = torch.argsort(scores, dim=1)[:, : self.k - 1]
        indices = torch.cat([torch.arange(batch)[:, None], partners], dim=1)
        rho = self._uniform(batch) * self.ratio
        # Normalised exponentials are a flat Dirichlet; 1 - U is in (0, 1] so log is finite.
        spread = (-torch.log1p(-self._uniform(batch, self.k - 1))).clamp_min(1e-300)
        spread = spread / spread.sum(dim=1, keepdim=True)
        weights = torch.cat([(1.0 - rho)[:, None], rho[:, None] * spread], dim=1)
        return weights, indices

    def forward(self, x: torch.Tensor) -> KMixOutput:
        _check_batch(x, type(self).__name__)
        weights, indices = self.sample(x.shape[0])
        indices = indices.to(x.device)
        weights = weights.to(device=x.device, dtype=x.dtype)
        clips = x[indices]  # (B, k, C, F, T)
        w = weights.view(*weights.shape, 1, 1, 1)
        if self.log_mixup_exp:
            # A partner weight can underflow to 0: log gives -inf, which logsumexp ignores.
            mixed = torch.logsumexp(clips + torch.log(w), dim=1)
        else:
            mixed = (clips * w).sum(dim=1)
        return KMixOutput(mixed, weights, indices)

    def extra_repr(self) -> str:
        return f"k={self.k}, ratio={self.ratio}, log_mixup_exp={self.log_mixup_exp}"
