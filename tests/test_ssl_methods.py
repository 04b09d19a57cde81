"""SSL methods (BYOL-A, MSN, SLICER): one step lowers the loss, EMA rule, loss terms, wiring."""

from __future__ import annotations

import math

import pytest
import torch

from audioclust.models.encoders import build_encoder
from audioclust.training.datasets import AudioFolder
from audioclust.training.ema import cosine_momentum
from audioclust.training.ssl.byola import BYOLA
from audioclust.training.ssl.msn import MSN, linear_momentum, me_max, msn_loss
from audioclust.training.ssl.slicer import SLICER, cluster_entropy, nt_xent
from audioclust.training.ssl.trainer import SSLConfig, SSLMethod, train_ssl

# Small, fast networks: the tests check the methods' mechanics, not what they learn.
ENCODERS = {
    "audiontt": {"embed_dim": 64, "channels": 8, "dropout": 0.0},
    "vit": {"width": 64, "depth": 2, "heads": 2, "patch_time": 8},
}
HEADS = {
    "byola": {"projection_dim": 32, "hidden_dim": 64, "memory_size": 64},
    "msn": {"num_prototypes": 16, "projection_dim": 32, "hidden_dim": 64, "memory_size": 64},
    "slicer": {"num_clusters": 8, "projection_dim": 32, "hidden_dim": 64},
}
CLASSES = {"byola": BYOLA, "msn": MSN, "slicer": SLICER}
ENCODER_OF = {"byola": "audiontt", "msn": "vit", "slicer": "audiontt"}
# Each method's target momentum at a step: the rule its after_step must follow.
MOMENTUM = {
    "byola": lambda m, step, total: cosine_momentum(m.base_ema, step, total),
    "msn": lambda m, step, total: linear_momentum(m.base_ema, step, total),
    "slicer": lambda m, step, total: cosine_momentum(m.base_ema, step, total),
}
# (online, target) module pairs of each method.
PAIRS = {
    "byola": lambda m: [(m.encoder, m.target_encoder), (m.projector, m.target_projector)],
    "msn": lambda m: [(m.encoder, m.target_encoder), (m.projector, m.target_projector)],
    "slicer": lambda m: list(zip(m._student(), m._teacher(), strict=True)),
}
CROP = 32
METHODS = list(CLASSES)


def make(name: str, seed: int = 0, **overrides) -> SSLMethod:
    torch.manual_seed(seed)
    encoder = build_encoder(ENCODER_OF[name], ENCODERS[ENCODER_OF[name]])
    return CLASSES[name](
        encoder, torch.Generator().manual_seed(seed), CROP, **{**HEADS[name], **overrides}
    )


def crops(b: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 64, CROP, generator=g)


def replay_loss(method: SSLMethod, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """The loss of ``x`` with the augmentation draws that ``state`` starts from.

    Restores the generator, empties BYOL-A's mixup memory (it changes which draws a view
    takes) and seeds the global RNG, so two calls see the very same views.
    """
    method.generator.set_state(state)
    mixup = getattr(method, "mixup", None)
    if mixup is not None:
        mixup.reset()
    torch.manual_seed(123)
    loss, logs = method(x)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    return loss


@pytest.mark.parametrize("name", METHODS)
def test_one_step_lowers_the_loss_on_a_fixed_batch(name):
    method = make(name)
    method.train()
    x = crops()
    state = method.generator.get_state()
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)
    before = replay_loss(method, x, state)
    assert torch.isfinite(before)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = replay_loss(method, x, state)
    assert float(after) < float(before.detach())
    # Targets get no gradient: nothing outside trainable_parameters() changed.
    trainable = {id(p) for p in method.trainable_parameters()}
    for online, target in PAIRS[name](method):
        assert all(not p.requires_grad for p in target.parameters())
        assert all(id(p) in trainable for p in online.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_ema_moves_the_target_toward_the_online_weights(name):
    method = make(name)
    pairs = PAIRS[name](method)
    with torch.no_grad():  # make online and target differ
        for online, _ in pairs:
            for p in online.parameters():
                p.add_(0.01 * torch.randn_like(p))
    before = [[t.clone() for t in target.parameters()] for _, target in pairs]
    step, total = 30, 100
    method.after_step(step, total)
    m = MOMENTUM[name](method, step, total)
    assert 0.0 < m < 1.0
    for (online, target), old in zip(pairs, before, strict=True):
        for o, t, t0 in zip(online.parameters(), target.parameters(), old, strict=True):
            torch.testing.assert_close(t, m * t0 + (1 - m) * o)
            assert (t - o).norm() <= (t0 - o).norm()


def test_momentum_schedules_end_at_one():
    assert linear_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert linear_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert linear_momentum(0.996, 100, 100) == 1.0
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)


# --- MSN ---------------------------------------------------------------------------------


def test_me_max_is_minimal_for_a_uniform_mean_prediction():
    k = 16
    uniform = torch.full((k,), 1.0 / k)
    assert float(me_max(uniform)) == pytest.approx(-math.log(k))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(torch.randn(k, generator=g) * 2, dim=0)
        assert float(me_max(p)) > -math.log(k)
    one_hot = torch.zeros(k)
    one_hot[3] = 1.0
    assert float(me_max(one_hot)) == 0.0  # collapse: the largest value, and finite


def test_msn_loss_parts_sharpening_and_stop_gradient():
    method = make("msn")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 32, generator=g)
    soft = torch.softmax(method.prototype_logits(z, method.temperature), dim=1)
    sharp = torch.softmax(method.prototype_logits(z, method.target_temperature), dim=1)
    entropy = lambda p: -(p * p.log()).sum(dim=1)  # noqa: E731
    assert bool((entropy(sharp) < entropy(soft)).all())
    assert bool((sharp.argmax(dim=1) == soft.argmax(dim=1)).all())

    anchor = torch.randn(16, 16, generator=g, requires_grad=True)  # 2 views of 8 clips
    target = torch.randn(8, 16, generator=g, requires_grad=True)
    loss, parts = msn_loss(anchor, target, me_max_weight=0.5)
    torch.testing.assert_close(loss, parts["ce"] + 0.5 * parts["me_max"])
    p_t = torch.softmax(target, dim=1).repeat(2, 1)
    ce = -(p_t * torch.log_softmax(anchor, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["me_max"], me_max(torch.softmax(anchor, dim=1).mean(0)))
    loss.backward()
    assert target.grad is None and anchor.grad is not None
    with pytest.raises(ValueError, match="multiple"):
        msn_loss(torch.zeros(12, 16), torch.zeros(8, 16))


def test_msn_anchor_views_are_smaller_and_masked():
    method = make("msn", anchor_views=3)
    assert method.anchor_frames == CROP // 2
    x = crops()
    assert method.anchor_view(x).shape == (8, 1, 64, CROP // 2)
    assert method.target_view(x).shape == x.shape
    loss, logs = method(x)
    assert loss.ndim == 0 and set(logs) == {"ce", "me_max", "target_entropy"}
    assert -math.log(16) - 1e-5 <= logs["me_max"] <= 0.0


def test_msn_learning_rate_drops_at_the_milestones():
    method = make("msn")
    total, warmup = 100, 5
    factors = [method.lr_factor(s, total, warmup) for s in range(total)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert factors[19] == 1.0 and factors[20] == pytest.approx(0.1)
    assert factors[40] == pytest.approx(1e-2) and factors[99] == pytest.approx(1e-4)


def test_msn_needs_the_vit():
    encoder = build_encoder("audiontt", ENCODERS["audiontt"])
    with pytest.raises(ValueError, match="ViT"):
        MSN(encoder, torch.Generator(), CROP)


# --- SLICER ------------------------------------------------------------------------------


def test_nt_xent_is_symmetric_and_rewards_aligned_pairs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    torch.testing.assert_close(nt_xent(a, b, 0.5), nt_xent(b, a, 0.5))
    aligned = nt_xent(a, a + 0.01 * b, 0.5)
    assert float(aligned) < float(nt_xent(a, b, 0.5))
    # The bound for perfectly separated, aligned pairs: log of (1 + negatives' weight).
    assert float(aligned) >= 0.0
    with pytest.raises(ValueError):
        nt_xent(a, b[:4], 0.5)


def test_cluster_entropy_bounds():
    k = 8
    assert float(cluster_entropy(torch.full((4, k), 1.0 / k))) == pytest.approx(math.log(k))
    assert float(cluster_entropy(torch.eye(k)[[0, 0, 0]])) == 0.0


def test_slicer_losses_are_finite_and_symmetric_in_the_views():
    method = make("slicer")
    method.train()
    x = crops()
    v1, v2 = method.augment(x), method.augment(x)
    with torch.no_grad():
        loss_12, parts_12 = method.loss_from_views(v1, v2)
        loss_21, parts_21 = method.loss_from_views(v2, v1)
    assert torch.isfinite(loss_12)
    assert all(bool(torch.isfinite(v)) for v in parts_12.values())
    torch.testing.assert_close(loss_12, loss_21)
    for key in parts_12:
        torch.testing.assert_close(parts_12[key], parts_21[key])
    assert 0.0 <= float(parts_12["entropy"]) <= math.log(8) + 1e-6
    # The teacher starts as an exact copy: student and teacher agree on a view.
    with torch.no_grad():
        student = method._embed(method._student(), v1)
        teacher = method._embed(method._teacher(), v1)
    for s, t in zip(student, teacher, strict=True):
        torch.testing.assert_close(s, t)


# --- through the trainer -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mel_cache(tmp_path_factory) -> str:
    # One log-mel cache for the module: the clips are decoded once for all methods.
    return str(tmp_path_factory.mktemp("mel_cache"))


@pytest.mark.parametrize("name", ["msn", "slicer"])
def test_train_ssl_runs_each_method(name, fsdd_subset, mel_cache, tmp_path):
    config = SSLConfig(
        method=name, encoder=ENCODER_OF[name], encoder_config=ENCODERS[ENCODER_OF[name]],
        epochs=1, batch_size=32, crop_frames=CROP, cache_dir=mel_cache,
        **{name: HEADS[name]},
    )
    result = train_ssl(config, AudioFolder(fsdd_subset), tmp_path / "run", progress=False,
                       log=lambda s: None)
    assert result.encoder_path.is_file() and math.isfinite(result.final_loss)
    assert (tmp_path / "run" / "state.safetensors").is_file()
