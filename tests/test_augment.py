"""Log-mel augmentations: shapes, value ranges, mixing ratios, mask limits, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from audioclust.training.augment import (
    SPEC_AUGMENT_PRESETS,
    KMix,
    MixupBYOLA,
    RandomLinearFader,
    RandomResizedCrop,
    SpecAugment,
)


def batch(b: int = 8, f: int = 64, t: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, f, t, generator=g)


def constant_clips(values: list[float], f: int = 16, t: int = 24) -> torch.Tensor:
    return torch.tensor(values)[:, None, None, None].expand(-1, 1, f, t).clone()


# Every random transform, by name, built from a seed.
RANDOM = {
    "mixup": lambda s: MixupBYOLA(seed=s),
    "crop": lambda s: RandomResizedCrop(seed=s),
    "fader": lambda s: RandomLinearFader(seed=s),
    "specaugment": lambda s: SpecAugment.preset("strong", seed=s),
    "kmix": lambda s: KMix(seed=s),
}


def _run(transform, x):
    out = transform(x)
    return out.mixed if isinstance(transform, KMix) else out


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_seeded_transforms_are_deterministic(name):
    x1, x2 = batch(seed=1), batch(seed=2)
    a, b, c = RANDOM[name](7), RANDOM[name](7), RANDOM[name](8)
    # Two calls, so state carried between batches (the mixup memory) is covered too.
    out_a = [_run(a, x1), _run(a, x2)]
    out_b = [_run(b, x1), _run(b, x2)]
    out_c = [_run(c, x1), _run(c, x2)]
    for p, q in zip(out_a, out_b, strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(out_a[1], out_c[1])
    assert out_a[0].shape == x1.shape
    # A shared generator works as well as a seed; both at once is refused.
    gen = torch.Generator().manual_seed(7)
    shared = {
        "mixup": MixupBYOLA,
        "crop": RandomResizedCrop,
        "fader": RandomLinearFader,
        "specaugment": SpecAugment,
        "kmix": KMix,
    }[name]
    assert shared(generator=gen).generator is gen
    with pytest.raises(ValueError, match="not both"):
        shared(seed=1, generator=gen)


def test_mixup_blends_in_the_power_domain_within_ratio():
    mix = MixupBYOLA(ratio=0.2, memory_size=64, seed=0)
    first = constant_clips([2.0] * 16)
    out = mix(first)  # empty memory: partners come from the batch, all 2.0
    torch.testing.assert_close(out, first)
    assert mix.memory_filled == 16

    x = constant_clips([0.0] * 16)
    out = mix(x)
    # Each clip stays constant, mixed with a remembered clip of value 2:
    # out = log((1 - λ) e^0 + λ e^2), so λ = (e^out - 1) / (e^2 - 1).
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))
    lam = (out[:, 0, 0, 0].exp() - 1) / (math.exp(2.0) - 1)
    assert (lam >= 0).all() and (lam <= 0.2 + 1e-6).all()
    assert lam.std() > 0.01  # one λ per clip, not one per batch
    assert mix.memory_filled == 32


def test_mixup_memory_is_a_bounded_fifo_and_resets_on_new_shapes():
    mix = MixupBYOLA(memory_size=10, seed=0)
    for _ in range(3):
        mix(batch(b=4, f=16, t=20))
    assert mix.memory_filled == 10
    mix(batch(b=25, f=16, t=20))  # larger than the memory: keeps the last 10
    assert mix.memory_filled == 10
    mix(batch(b=4, f=16, t=30))
    assert mix.memory_filled == 4

    # Only past batches are partners: a memory of 5.0s pulls zeros up, never down.
    linear = MixupBYOLA(ratio=0.5, memory_size=8, log_mixup_exp=False, seed=1)
    linear(constant_clips([5.0] * 8))
    out = linear(constant_clips([0.0] * 8))
    lam = out[:, 0, 0, 0] / 5.0
    assert (lam >= 0).all() and (lam <= 0.5 + 1e-6).all()

    with pytest.raises(ValueError):
        MixupBYOLA(ratio=1.5)


def test_mixup_without_memory_mixes_within_the_batch():
    mix = MixupBYOLA(ratio=0.4, memory_size=0, seed=3)
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    out = mix(constant_clips(values))[:, 0, 0, 0]
    # log-mixup-exp of values in [0, 5] stays in [0, 5] and moves each by < its range.
    assert (out >= -1e-6).all() and (out <= 5.0 + 1e-6).all()
    assert mix.memory_filled == 0


def _reference_crop(x: torch.Tensor, crop, scale) -> torch.Tensor:
    """BYOL-A's procedure, one sample at a time: canvas, slice, interpolate."""
    b, c, f, t = x.shape
    canvas_f, canvas_t = crop.canvas
    out = []
    for i in range(b):
        canvas = torch.zeros(c, canvas_f, canvas_t, dtype=torch.float64)
        top, left = (canvas_f - f) // 2, (canvas_t - t) // 2
        canvas[:, top : top + f, left : left + t] = x[i].double()
        y0, x0 = int(crop.top[i]), int(crop.left[i])
        h, w = int(crop.height[i]), int(crop.width[i])
        patch = canvas[None, :, y0 : y0 + h, x0 : x0 + w]
        out.append(F.interpolate(patch, size=scale, mode="bilinear", align_corners=True)[0])
    return torch.stack(out).float()


@pytest.mark.parametrize("out_size", [None, (48, 80)])
def test_random_resized_crop_matches_canvas_crop_and_keeps_range(out_size):
    x = batch(b=6, f=32, t=40)
    rrc = RandomResizedCrop(out_size=out_size, seed=0)
    params = rrc.sample(6, (32, 40))
    assert params.canvas == (32, 60)
    assert ((params.height >= int(0.6 * 32)) & (params.height <= 32)).all()
    assert ((params.width >= int(0.6 * 40)) & (params.width <= 60)).all()
    assert (params.top + params.height <= 32).all() and (params.left + params.width <= 60).all()
    out = rrc.apply(x, params)
    size = out_size or (32, 40)
    assert out.shape == (6, 1, *size)
    torch.testing.assert_close(out, _reference_crop(x, params, size), rtol=0, atol=1e-4)
    # Bilinear: every value lies between the input's extremes and the canvas fill (0).
    assert out.min() >= min(x.min(), 0) - 1e-5 and out.max() <= max(x.max(), 0) + 1e-5


def test_random_resized_crop_identity_and_fill():
    x = batch(b=3, f=16, t=24)
    identity = RandomResizedCrop((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), seed=0)
    torch.testing.assert_close(identity(x), x, rtol=0, atol=1e-4)
    # A crop far larger than the clip shows canvas; it must read as the fill value.
    wide = RandomResizedCrop((1.0, 3.0), (1.0, 1.0), (3.0, 3.0), fill=-5.0, seed=0)
    out = wide(torch.zeros(2, 1, 16, 24))
    assert out.min() == -5.0 and out[..., 0].eq(-5.0).all() and out.max() <= 1e-6
    with pytest.raises(ValueError):
        RandomResizedCrop(virtual_crop_scale=(0.5, 1.0))


def test_random_resized_crop_area_scale_keeps_area_and_aspect_in_range():
    f, t = 64, 96
    rrc = RandomResizedCrop(virtual_crop_scale=(1.0, 1.0), area_scale=(0.3, 1.0), seed=0)
    p = rrc.sample(2000, (f, t))
    area = (p.height * p.width).double() / (f * t)
    # floor() to whole bins/frames takes at most one row and one column off
    assert area.max() <= 1.0 and area.min() >= 0.3 - 1 / f - 1 / t
    assert area.min() < 0.35 and area.max() > 0.8  # the whole range is drawn
    aspect = (p.height.double() / f) / (p.width.double() / t)
    unclipped = (p.height < f) & (p.width < t)
    # one bin/frame less on a side of at least 0.47 of the input moves the aspect < 0.05
    assert (aspect[unclipped] >= 0.75 - 0.05).all() and (aspect[unclipped] <= 4 / 3 + 0.05).all()
    assert aspect[unclipped].min() < 0.8 and aspect[unclipped].max() > 1.25
    out = rrc(batch(b=4, f=f, t=t))
    assert out.shape == (4, 1, f, t)
    with pytest.raises(ValueError):
        RandomResizedCrop(area_scale=(0.0, 1.0))


def test_random_linear_fader_adds_a_bounded_ramp():
    x = batch(b=16, f=8, t=50)
    out = RandomLinearFader(gain=0.7, seed=0)(x)
    ramp = out - x
    # Constant over frequency, linear in time, within ±gain.
    torch.testing.assert_close(ramp, ramp[:, :, :1, :].expand_as(ramp))
    r = ramp[:, 0, 0, :]
    steps = r[:, 1:] - r[:, :-1]
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=0, atol=1e-5)
    assert r.abs().max() <= 0.7 + 1e-6
    assert r.abs().max() > 0.3  # and it does something
    assert (r[:, 0] > 0).any() and (r[:, 0] < 0).any()


def _runs(mask: torch.Tensor) -> int:
    """Number of contiguous True runs in a 1-D bool tensor."""
    m = mask.int()
    return int(m[0]) + int(((m[1:] - m[:-1]) == 1).sum())


@pytest.mark.parametrize("preset", ["weak", "strong"])
@pytest.mark.parametrize("size", [(64, 96), (16, 20)])
def test_spec_augment_masks_within_limits(preset, size):
    n_freq, max_f, n_time, max_t = SPEC_AUGMENT_PRESETS[preset]
    f, t = size
    aug = SpecAugment.preset(preset, seed=0)
    x = batch(b=64, f=f, t=t) + 10.0  # never 0, so masked cells are recognisable
    spans = aug.sample(64, f, t)
    assert spans.freq_start.shape == spans.freq_width.shape == (64, n_freq)
    assert spans.time_start.shape == spans.time_width.shape == (64, n_time)
    # Widths within the preset's limit, clipped to the input; masks inside the input.
    assert spans.freq_width.max() <= min(max_f, f) and spans.time_width.max() <= min(max_t, t)
    assert (spans.freq_start >= 0).all() and (spans.freq_start + spans.freq_width <= f).all()
    assert (spans.time_start >= 0).all() and (spans.time_start + spans.time_width <= t).all()
    # Widths are spread over their whole range.
    assert spans.time_width.max() >= min(max_t, t) - 4 and spans.time_width.min() <= 4

    out = aug.apply(x, spans)
    freq = SpecAugment.span_mask(spans.freq_start, spans.freq_width, f)
    time = SpecAugment.span_mask(spans.time_start, spans.time_width, t)
    expected = freq[:, :, None] | time[:, None, :]
    assert torch.equal(out[:, 0] == 0, expected)
    assert torch.equal(out[:, 0][~expected], x[:, 0][~expected])
    for i in range(64):
        assert _runs(freq[i]) <= n_freq and _runs(time[i]) <= n_time
        assert int(freq[i].sum()) <= int(spans.freq_width[i].sum())


def test_spec_augment_mean_fill_and_bad_arguments():
    x = batch(b=4, f=32, t=40) + 3.0
    out = SpecAugment(2, 10, 2, 10, fill="mean", seed=1)(x)
    masked = out != x
    means = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    assert masked.any() and torch.equal(out[masked], means[masked])
    with pytest.raises(ValueError, match="unknown preset"):
        SpecAugment.preset("medium")
    with pytest.raises(ValueError):
        SpecAugment(fill="zero")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kmix_weights_and_partners(k):
    x = batch(b=12, f=8, t=10)
    out = KMix(k=k, ratio=0.4, seed=0)(x)
    w, idx = out.weights, out.indices
    assert w.shape == idx.shape == (12, k)
    assert torch.equal(idx[:, 0], torch.arange(12))
    for row in idx.tolist():
        assert len(set(row)) == k  # distinct partners, never oneself
    torch.testing.assert_close(w.sum(dim=1), torch.ones(12))
    assert (w >= 0).all()
    assert (w[:, 0] >= 0.6 - 1e-6).all() and (w[:, 0] <= 1).all()
    assert (w[:, :1] >= w[:, 1:]).all()  # own weight dominates
    m = out.matrix()
    torch.testing.assert_close(m.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(torch.diagonal(m), w[:, 0])
    # The mixture is exactly log Σ w_j exp(x_j).
    want = torch.log(torch.einsum("bj,bj...->b...", w.double(), x[idx].double().exp()))
    torch.testing.assert_close(out.mixed, want.float(), rtol=0, atol=1e-5)


def test_kmix_linear_mode_and_limits():
    x = batch(b=5, f=8, t=10)
    out = KMix(k=3, ratio=0.5, log_mixup_exp=False, seed=2)(x)
    want = torch.einsum("bk,bk...->b...", out.weights, x[out.indices])
    torch.testing.assert_close(out.mixed, want)
    assert (out.weights[:, 0] >= 0.5 - 1e-6).all()
    with pytest.raises(ValueError, match="at least 3"):
        KMix(k=3, seed=0)(batch(b=2))
    with pytest.raises(ValueError, match="dominate"):
        KMix(ratio=0.6)
    with pytest.raises(ValueError):
        KMix(k=1)
