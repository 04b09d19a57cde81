"""SPICE: proto-pseudo-labels, reliable labels, the FixMatch mask, and a tiny end-to-end fit."""

from __future__ import annotations

import inspect
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclust.models.embedder import Embedder, embed_clips, load_embedder, save_embedder
from audioclust.models.encoders import build_encoder
from audioclust.models.frontend import FrontendConfig
from audioclust.models.heads import ClusterHead
from audioclust.training.crops import CropDataset
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import logmel_bank
from audioclust.training.heads.neighbors import knn
from audioclust.training.heads.spice import (
    SPICE,
    double_softmax_cross_entropy,
    fixmatch_mask,
    proto_pseudo_labels,
    reliable_mask,
)
from audioclust.training.heads.spice_finetune import (
    SPICEFineTuner,
    SPICEFineTuneSettings,
    audio_views,
)
from audioclust.training.metrics import score_all

# --- proto-pseudo-labels -----------------------------------------------------------------


def test_proto_pseudo_labels_centre_from_top_probabilities_then_cosine_neighbours():
    # Three clusters along the axes of R^3, four clips each. For cluster k the two most
    # probable clips (P) lie at +-10° around axis k, so their mean -- the centre -- is the
    # axis itself. Two other clips (N) lie exactly on / 1° off the axis but have low
    # probability, and are therefore never among the top ones. The selection must give
    # the N clips: picked by cosine to the centre, not by probability.
    e = torch.eye(3)
    feats, probs = [], []
    expected = []
    for k in range(3):
        other = e[(k + 1) % 3]
        tilt = math.tan(math.radians(10))
        p_row = torch.full((3,), 0.05)
        p_row[k] = 0.9
        n_row = torch.full((3,), 1 / 3)
        base = len(feats)
        feats += [e[k] + tilt * other, e[k] - tilt * other,  # P: high probability
                  3.0 * e[k],  # N: on the axis (cosine 1), a different norm
                  e[k] + math.tan(math.radians(1)) * e[(k + 2) % 3]]  # N: 1° off
        probs += [p_row, p_row * 0.99 + 0.01 / 3, n_row, n_row]
        expected += [base + 2, base + 3]
    feats_t, probs_t = torch.stack(feats), torch.stack(probs)
    idx, labels = proto_pseudo_labels(probs_t, feats_t, per_cluster=2)
    assert idx.tolist() == expected  # grouped by cluster, most similar first
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_proto_pseudo_labels_centre_from_the_n_centre_most_probable():
    # Cluster 0 in the plane: A (0°) and B (60°) are its two most probable clips, C (5°),
    # D (57°) and E (30°) are not. One centre clip: the centre is A's direction and its
    # nearest are A, C. Two: the centre is 30° and its nearest are E, then C (25° away;
    # D is 27°).
    angles = torch.tensor([0.0, 60.0, 5.0, 57.0, 30.0])
    feats = torch.stack([torch.cos(torch.deg2rad(angles)), torch.sin(torch.deg2rad(angles))], 1)
    p0 = torch.tensor([0.9, 0.8, 0.1, 0.1, 0.1])
    probs = torch.stack([p0, 1 - p0], 1)
    idx, labels = proto_pseudo_labels(probs, feats, per_cluster=2, n_centre=1)
    assert idx[labels == 0].tolist() == [0, 2]
    idx, labels = proto_pseudo_labels(probs, feats, per_cluster=2, n_centre=2)
    assert idx[labels == 0].tolist() == [4, 2]
    with pytest.raises(ValueError, match="n_centre"):
        proto_pseudo_labels(probs, feats, per_cluster=2, n_centre=0)


def test_proto_pseudo_labels_shapes_and_errors():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(40, 4, generator=g), dim=1)
    feats = torch.randn(40, 8, generator=g)
    idx, labels = proto_pseudo_labels(probs, feats, per_cluster=10)
    assert idx.shape == labels.shape == (40,)
    assert torch.equal(torch.bincount(labels), torch.full((4,), 10))
    assert len(set(idx[labels == 2].tolist())) == 10  # within a cluster, distinct clips
    with pytest.raises(ValueError, match="per_cluster"):
        proto_pseudo_labels(probs, feats, per_cluster=41)
    with pytest.raises(ValueError, match="probs"):
        proto_pseudo_labels(probs, feats[:-1], per_cluster=2)


def test_double_softmax_cross_entropy_is_ce_of_the_probabilities():
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p = torch.softmax(logits, dim=1)
    manual = -torch.log_softmax(p, dim=1)[torch.arange(2), target].mean()
    assert torch.allclose(double_softmax_cross_entropy(logits, target), manual)
    # Bounded below by log(1 + (K - 1) / e) however confident the head is.
    sure = torch.tensor([[1e4, 0.0, 0.0]])
    floor = math.log(1 + 2 / math.e)
    assert double_softmax_cross_entropy(sure, torch.tensor([0])).item() == pytest.approx(floor)


# --- reliable labels ---------------------------------------------------------------------


def test_reliable_mask_needs_more_than_lambda_agreement():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    neighbours = torch.tensor([
        [1, 2, 3, 4],  # 3 of 4 share label 0: 0.75
        [0, 2, 3, 4],  # 0.75
        [0, 1, 4, 5],  # 0.5: exactly lambda, not more -> unreliable
        [4, 5, 0, 1],  # 0.5
        [5, 0, 1, 2],  # 0.25
        [4, 0, 1, 2],  # 0.25
    ])
    assert reliable_mask(labels, neighbours, 0.5).tolist() == [True, True, False, False,
                                                               False, False]
    assert reliable_mask(labels, neighbours, 0.0).tolist() == [True] * 4 + [True, True]
    assert not reliable_mask(labels, neighbours, 0.75).any()
    with pytest.raises(ValueError, match="neighbours"):
        reliable_mask(labels, neighbours[:3], 0.5)


# --- FixMatch mask -------------------------------------------------------------------------


def test_fixmatch_mask_keeps_exactly_tau_and_above():
    probs = torch.tensor([
        [0.75, 0.25, 0.0],  # exactly tau: kept
        [0.7499, 0.2501, 0.0],
        [0.1, 0.1, 0.8],
        [0.34, 0.33, 0.33],
        [0.0, 1.0, 0.0],
    ])
    assert fixmatch_mask(probs).tolist() == [True, False, True, False, True]
    assert fixmatch_mask(probs, tau=0.95).tolist() == [False, False, False, False, True]
    assert fixmatch_mask(probs, tau=0.3).all()
    assert inspect.signature(fixmatch_mask).parameters["tau"].default == 0.75
    assert SPICEFineTuneSettings().tau == 0.75


# --- estimator -----------------------------------------------------------------------------


def test_constructor_only_stores_and_fit_checks():
    sp = SPICE(5, n_heads=3, seed=7)
    params = sp.get_params()
    assert params["n_clusters"] == 5 and params["n_heads"] == 3 and params["seed"] == 7
    assert not any(k.endswith("_") for k in params)
    with pytest.raises(RuntimeError, match="fit"):
        sp.predict(np.zeros((2, 4), dtype=np.float32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fsdd_dir):
    """60 FSDD clips (three speakers, digits 0-1, 10 takes) and a small random AudioNTT.

    The encoder's BatchNorm statistics are estimated on the clips (as any trained
    encoder's are), so its eval-mode embeddings are normalised; with the default running
    statistics a random encoder's embeddings are mostly dead units.
    """
    root = tmp_path_factory.mktemp("spice")
    data = root / "clips"
    data.mkdir()
    for digit in range(2):
        for speaker in ("george", "jackson", "theo"):
            for take in range(10):
                name = f"{digit}_{speaker}_{take}.wav"
                shutil.copy(Path(fsdd_dir) / name, data / name)
    folder = AudioFolder(data, labels="speaker")
    bank = logmel_bank(folder, cache_dir=str(root / "cache"), progress=False)
    mean, std = bank.stats()
    torch.manual_seed(0)
    encoder = build_encoder("audiontt", {"embed_dim": 32, "channels": 8})
    crops = CropDataset(bank, 64, mean, std, seed=0)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the one calibration batch
    encoder.train()
    with torch.no_grad():
        encoder(torch.stack([crops[i] for i in range(len(crops))]))
    path = save_embedder(Embedder(encoder.eval(), FrontendConfig(), mean, std),
                         root / "encoder.safetensors")
    clips = [folder.load(i)[0] for i in range(len(folder))]
    embeddings = embed_clips(load_embedder(path), clips)
    return {"root": root, "folder": folder, "bank": bank, "encoder": path,
            "embeddings": embeddings}


HEAD = dict(n_heads=3, hidden_dim=64, epochs=25, batch_size=60)
# Stage 3 on 60 clips: mu = 1 and 10 epochs give it 80 steps. With mu = 7 it had 2 steps
# per epoch, and over seeds 0-3 it ended with an empty cluster in two (the earlier
# all-in-one SPICE as well: this is stage 3 on a random encoder, not the refactoring).
TUNE = dict(crop_frames=32, n_view_sets=1, n_neighbors=5, reliable_ratio=0.5, epochs=10,
            batch_size=8, mu=1, lr=1e-3)


@dataclass
class Fitted:
    """SPICE's stage 2 (``spice``) on audio views, then its joint stage (``tuner``)."""

    spice: SPICE
    tuner: SPICEFineTuner


def _fit(tiny, encoder, data, seed: int = 0, log=None, **tune) -> Fitted:
    settings = SPICEFineTuneSettings(**{**TUNE, **tune})
    cache = str(tiny["root"] / "cache")
    views = audio_views(encoder, data, settings, seed=seed, cache_dir=cache)
    sp = SPICE(3, seed=seed, log=log, **HEAD).fit(tiny["embeddings"], views=views)
    tuner = SPICEFineTuner(settings, seed=seed, cache_dir=cache, log=log)
    return Fitted(sp, tuner.fit(encoder, data, sp.head_))


@pytest.fixture(scope="module")
def fitted(tiny):
    rng_before = torch.get_rng_state()
    lines: list[str] = []
    f = _fit(tiny, tiny["encoder"], tiny["folder"], log=lines.append)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert [line.split(":")[0] for line in lines] == [
        "SPICE stage 2", "SPICE reliable labels", "SPICE stage 3"]
    return f


def test_reliable_labels_are_neighbour_agreement_in_the_head_input_space(fitted, tiny):
    sp, tuner = fitted.spice, fitted.tuner
    original = torch.from_numpy(tiny["embeddings"])
    with torch.no_grad():
        stage2 = sp.head_.all_logits(original)[int(sp.head_.selected)]
        feats = sp.head_.prepare(original).numpy()
    assert np.array_equal(stage2.argmax(1).numpy(), tuner.pseudo_labels_)
    neighbours = knn(feats, TUNE["n_neighbors"])[0]
    expected = reliable_mask(torch.from_numpy(tuner.pseudo_labels_),
                             torch.from_numpy(neighbours), TUNE["reliable_ratio"])
    assert np.array_equal(tuner.reliable_, expected.numpy())


def test_tiny_fit_produces_a_used_head_and_a_decreasing_stage3_loss(fitted, tiny):
    sp, tuner = fitted.spice, fitted.tuner
    n = len(tiny["folder"])
    assert tuner.labels_.shape == (n,) and tuner.reliable_.shape == (n,)
    assert tuner.reliable_.dtype == bool and 0 < tuner.reliable_.sum() <= n
    sizes = np.bincount(tuner.labels_, minlength=3)
    assert (sizes > 0).all(), sizes  # every cluster used
    assert sizes.max() <= 0.6 * n, sizes  # and none swallowing the data
    # The speakers are this encoder's clearest structure; the labels are not used to fit.
    assert score_all(tiny["folder"].targets, tuner.labels_).nmi > 0.5

    head = tuner.head_
    assert isinstance(head, ClusterHead) and head.config.n_clusters == 3
    assert int(head.selected) == 0
    assert torch.allclose(head.prior, torch.from_numpy((sizes + 1) / (n + 3)).float())
    assert not torch.equal(head.input_mean, torch.zeros_like(head.input_mean))
    assert np.array_equal(tuner.predict(tuner.embeddings_), tuner.labels_)
    assert np.allclose(tuner.predict_proba(tuner.embeddings_).sum(1), 1.0, atol=1e-5)

    h2, h3 = sp.history_, tuner.history_
    assert len(h2["loss"]) == HEAD["epochs"]
    last = h2["last_epoch_per_head"]
    assert len(last) == HEAD["n_heads"]
    assert last[h2["selected"]] == min(last)
    assert h2["head_losses"] == last and sp.head_losses_.tolist() == last
    assert h3["cluster_usage"] == [1.0] and tuner.cluster_usage_.tolist() == [1.0]
    assert np.mean(h2["loss"][-1]) < np.mean(h2["loss"][0])
    epochs = h3["stage3"]["epochs"]
    assert len(epochs) == TUNE["epochs"]
    assert epochs[-1]["loss"] < epochs[0]["loss"], epochs
    assert all(0.0 <= e["mask_rate"] <= 1.0 for e in epochs)


def test_fine_tuned_embedder_round_trips_and_matches_embeddings(fitted, tiny, tmp_path):
    tuner = fitted.tuner
    original = load_embedder(tiny["encoder"])
    tuned = dict(tuner.embedder_.encoder.named_parameters())
    changed = [not torch.equal(p, tuned[k]) for k, p in original.encoder.named_parameters()]
    assert any(changed)  # stage 3 trained the encoder
    path = save_embedder(tuner.embedder_, tmp_path / "tuned.safetensors", {"method": "spice"})
    reloaded = load_embedder(path)
    clips = [tiny["folder"].load(i)[0] for i in range(len(tiny["folder"]))]
    z = embed_clips(reloaded, clips)
    assert np.allclose(z, tuner.embeddings_, atol=1e-5)


def _untimed(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "seconds"}


def test_fit_is_deterministic_under_seed_and_takes_a_bank(fitted, tiny):
    # Same seed, the log-mel bank instead of the folder and an Embedder object instead
    # of its path: the same run, bit for bit.
    embedder = load_embedder(tiny["encoder"])
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    again = _fit(tiny, embedder, tiny["bank"])
    assert all(torch.equal(v, embedder.state_dict()[k]) for k, v in before.items())
    assert np.array_equal(again.tuner.labels_, fitted.tuner.labels_)
    assert np.array_equal(again.tuner.reliable_, fitted.tuner.reliable_)
    assert _untimed(again.spice.history_) == _untimed(fitted.spice.history_)
    assert again.tuner.history_["stage3"]["loss"] == fitted.tuner.history_["stage3"]["loss"]
    for k, v in fitted.tuner.head_.state_dict().items():
        assert torch.equal(v, again.tuner.head_.state_dict()[k]), k

    other = _fit(tiny, embedder, tiny["bank"], seed=1, epochs=0)
    assert other.spice.history_["loss"] != fitted.spice.history_["loss"]
    assert other.tuner.history_["stage3"]["loss"] == []  # epochs=0: stage 2 only
    assert np.array_equal(other.tuner.labels_, other.tuner.pseudo_labels_)


def test_fit_rejects_bad_settings(fitted, tiny):
    x = tiny["embeddings"]
    with pytest.raises(ValueError, match="n_clusters"):
        SPICE(1).fit(x)
    with pytest.raises(ValueError, match="n_neighbors"):
        SPICEFineTuner(n_neighbors=60).fit(tiny["encoder"], tiny["bank"], fitted.spice.head_)
    with pytest.raises(ValueError, match="too few"):
        SPICE(40).fit(x)
    with pytest.raises(ValueError, match="center_ratio"):
        SPICE(3, center_ratio=0.0).fit(x)
    with pytest.raises(ValueError, match="repeats"):
        SPICE(3, repeats=0).fit(x)
