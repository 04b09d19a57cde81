"""Encoders: shapes and limits, exact padding masking, patch dropping, ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from audioclust.models.config import ConfigError
from audioclust.models.encoders import (
    AudioNTT,
    Encoder,
    ViT,
    build_encoder,
    encoder_name,
)
from audioclust.models.onnx_export import export_onnx

NAMES = ["audiontt", "vit"]


def make(name: str, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(name, config or None).eval()


def logmel(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    # Log-mel-like values: natural-log power around -8 with a few nepers of spread.
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 64, frames, generator=g) * 3.0 - 8.0


@pytest.fixture(scope="module", params=NAMES)
def encoder(request) -> torch.nn.Module:
    return make(request.param)


def test_registry_and_protocol(encoder):
    assert isinstance(encoder, Encoder)
    assert encoder_name(encoder) in NAMES
    expected = {"audiontt": (AudioNTT, 512, 8), "vit": (ViT, 192, 8)}[encoder_name(encoder)]
    assert (type(encoder), encoder.embed_dim, encoder.min_frames) == expected


def test_build_encoder_config_overrides_and_errors():
    m = build_encoder("audiontt", {"embed_dim": 64, "channels": 8})
    assert m.embed_dim == 64 and m(logmel(2, 8)).shape == (2, 64)
    v = build_encoder("vit", {"width": 48, "heads": 2, "depth": 1, "patch_time": 8})
    assert v.embed_dim == 48 and v.min_frames == 8
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("resnet")
    with pytest.raises(ConfigError, match="unknown key"):
        build_encoder("vit", {"widht": 48})
    with pytest.raises(ConfigError, match="divisible"):
        build_encoder("vit", {"width": 50, "heads": 3})


@pytest.mark.parametrize("extra", [0, 1, 7, 93])
def test_output_shape_from_minimum_length(encoder, extra):
    frames = encoder.min_frames + extra
    with torch.no_grad():
        out = encoder(logmel(3, frames))
    assert out.shape == (3, encoder.embed_dim)
    assert torch.isfinite(out).all()


def test_too_short_or_malformed_input_is_rejected(encoder):
    with pytest.raises(ValueError, match=f"at least {encoder.min_frames} frames"):
        encoder(logmel(2, encoder.min_frames - 1))
    with pytest.raises(ValueError, match="expected log-mel"):
        encoder(torch.zeros(2, 1, 40, 100))
    with pytest.raises(ValueError, match="expected log-mel"):
        encoder(torch.zeros(2, 64, 100))
    with pytest.raises(ValueError, match="every length"):
        encoder(logmel(2, 64), torch.tensor([64, encoder.min_frames - 1]))
    with pytest.raises(ValueError, match="every length"):
        encoder(logmel(2, 64), torch.tensor([65, 64]))


def test_vit_rejects_input_beyond_its_position_table():
    vit = make("vit", max_frames=64)
    p = vit.config.patch_time
    assert vit(logmel(1, 64 + p - 1)).shape == (1, 192)  # trailing partial patch is dropped
    with pytest.raises(ValueError, match="cover at most 64 frames"):
        vit(logmel(1, 64 + p))


@pytest.mark.parametrize("pad_value", [0.0, -23.0])
def test_padding_with_lengths_matches_the_unpadded_clips(encoder, pad_value):
    lengths = [encoder.min_frames, 37, 100, 161]
    total = 200
    clips = [logmel(1, n, seed=n) for n in lengths]
    padded = torch.full((len(clips), 1, 64, total), pad_value)
    for i, clip in enumerate(clips):
        padded[i, ..., : clip.shape[-1]] = clip
    with torch.no_grad():
        batch = encoder(padded, torch.tensor(lengths))
        alone = torch.cat([encoder(clip) for clip in clips])
        unmasked = encoder(padded)
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    # Without lengths the padding does change the embeddings: the mask is what helps.
    assert (unmasked[:3] - alone[:3]).abs().max() > 1e-3


def test_audiontt_training_statistics_skip_padding():
    # Dropout off so train-mode outputs are deterministic; BatchNorm uses batch stats.
    plain, masked = make("audiontt", dropout=0.0), make("audiontt", dropout=0.0)
    plain.train()
    masked.train()
    clips = logmel(4, 60)
    padded = torch.cat([clips, torch.zeros(4, 1, 64, 40)], dim=-1)
    out_plain = plain(clips)
    out_masked = masked(padded, torch.full((4,), 60))
    torch.testing.assert_close(out_masked, out_plain, rtol=0, atol=1e-5)
    for a, b in zip(plain.buffers(), masked.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # And the padding would have moved them.
    polluted = make("audiontt", dropout=0.0).train()
    polluted(padded)
    assert (polluted.blocks[0].bn.running_var - plain.blocks[0].bn.running_var).abs().max() > 1e-3


def test_vit_patch_dropping():
    vit = make("vit", patch_time=16)
    x = logmel(3, 160)  # 4 x 10 = 40 patch tokens a clip
    with torch.no_grad():
        full = vit(x)
        torch.testing.assert_close(vit(x, mask_ratio=0.0), full)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        a = vit(x, mask_ratio=0.5, generator=g1)
        b = vit(x, mask_ratio=0.5, generator=g2)
    torch.testing.assert_close(a, b)
    assert a.shape == full.shape and (a - full).abs().max() > 1e-3

    tokens, valid = vit.patch_tokens(x, torch.tensor([160, 64, 16]))
    assert tokens.shape == (3, 40, 192)
    assert valid.sum(dim=1).tolist() == [40, 16, 4]
    kept, kept_valid, order = ViT.keep_random_tokens(
        tokens, valid, 0.75, torch.Generator().manual_seed(0)
    )
    assert kept.shape == (3, 10, 192)
    assert kept_valid.sum(dim=1).tolist() == [10, 4, 1]
    # Every kept position is a real (unpadded) patch, and none is kept twice.
    for i in range(3):
        chosen = order[i][kept_valid[i]]
        assert valid[i, chosen].all() and len(set(chosen.tolist())) == len(chosen)
        torch.testing.assert_close(kept[i][kept_valid[i]], tokens[i, chosen])
    with pytest.raises(ValueError, match="mask_ratio"):
        vit(x, mask_ratio=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("with_lengths", [False, True], ids=["logmel", "logmel+lengths"])
def test_onnx_export_matches_torch(encoder, tmp_path, with_lengths):
    names = ["logmel", "lengths"] if with_lengths else ["logmel"]
    example = (logmel(2, 128), torch.tensor([128, 90]))[: len(names)]
    axes = {"logmel": {0: "batch", 3: "frames"}, "lengths": {0: "batch"}}
    path = export_onnx(
        encoder,
        example,
        tmp_path / "encoder.onnx",
        input_names=names,
        output_names=["embedding"],
        dynamic_axes={k: axes[k] for k in names},
        min_sizes={"frames": encoder.min_frames},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        for frames in (encoder.min_frames, 77, 250):
            x = logmel(batch, frames, seed=frames)
            feeds = {"logmel": x.numpy()}
            lengths = None
            if with_lengths:
                lengths = torch.clamp(
                    torch.tensor([frames, frames - 3, frames // 2, encoder.min_frames][:batch]),
                    min=encoder.min_frames,
                )
                feeds["lengths"] = lengths.numpy()
            (got,) = session.run(None, feeds)
            with torch.no_grad():
                want = encoder(x, lengths).numpy()
            assert got.shape == (batch, encoder.embed_dim)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
