"""Clustering heads: faiss neighbours, TEMI, DeepCluster, `--clusters auto`, and the
`audioclust-train head` / `audioclust-eval head` commands end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from audioclust.models.embedder import Embedder, save_embedder
from audioclust.models.encoders import build_encoder
from audioclust.models.heads import (
    ClusterHead,
    HeadConfig,
    file_sha256,
    load_head,
    read_head_metadata,
    save_head,
)
from audioclust.training import evaluate, train
from audioclust.training.heads.base import batch_for, neighbour_count, plan_steps, select_head
from audioclust.training.heads.deepcluster import DeepCluster, balanced_indices
from audioclust.training.heads.neighbors import build_index, knn, l2_normalize
from audioclust.training.heads.spice import SPICE
from audioclust.training.heads.temi import TEMI, pair_weights, temi_loss, update_prior
from audioclust.training.metrics import nmi
from audioclust.training.train import choose_n_clusters, parse_clusters


@pytest.fixture(autouse=True)
def one_thread():
    """The heads are small: one thread is fast, and it keeps shared CI machines usable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def blobs(n_blobs: int, per_blob: int, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Well-separated Gaussian blobs (centres ~N(0, 4 I)) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim)) * 2.0
    y = np.repeat(np.arange(n_blobs), per_blob)
    x = centres[y] + spread * rng.standard_normal((y.size, dim))
    return x.astype(np.float32), y


def brute_force_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(top, order, axis=1)
    return idx, np.take_along_axis(sim, idx, axis=1)


# --- neighbours ---------------------------------------------------------------------------


def test_flat_knn_equals_brute_force():
    rng = np.random.default_rng(1)
    # rows of very different norms: cosine must not depend on them
    x = rng.standard_normal((400, 16)) * rng.uniform(0.1, 10.0, (400, 1))
    idx, sim = knn(x, 10, index="flat", batch_size=64)  # several query batches
    ref_idx, ref_sim = brute_force_knn(x, 10)
    assert idx.shape == sim.shape == (400, 10)
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "auto"])
def test_approximate_knn_recall(kind):
    x, _ = blobs(30, 100, dim=32, spread=0.5, seed=2)  # 3,000 points
    idx, sim = knn(x, 10, index=kind, exact_threshold=1000)  # auto -> IVF here
    ref_idx, _ = brute_force_knn(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref_idx, strict=True)])
    assert recall >= 0.95, recall
    assert not (idx == np.arange(len(x))[:, None]).any()
    assert (np.diff(sim, axis=1) <= 1e-6).all()  # most similar first


def test_auto_index_switches_at_threshold():
    x = l2_normalize(np.random.default_rng(0).standard_normal((2000, 8)))
    assert type(build_index(x, "auto", exact_threshold=5000)).__name__ == "IndexFlatIP"
    assert type(build_index(x, "auto", exact_threshold=1000)).__name__ == "IndexIVFFlat"


def test_knn_excludes_self_even_with_duplicates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 4))
    x[10] = x[11] = x[12]  # three identical points
    idx, sim = knn(x, 5, index="flat")
    assert not (idx == np.arange(50)[:, None]).any()
    for i in (10, 11, 12):
        assert set(idx[i, :2]) == {10, 11, 12} - {i}
        np.testing.assert_allclose(sim[i, :2], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        knn(x, 50)


# --- TEMI -----------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_temi_loss_equals_the_formula():
    rng = np.random.default_rng(4)
    H, B, K = 3, 5, 4
    s = rng.standard_normal((H, 2 * B, K))
    t = rng.standard_normal((H, 2 * B, K))
    prior = _softmax(rng.standard_normal((H, K)))
    beta, tau_s, tau_t = 0.6, 0.1, 0.04

    qs, qt = _softmax(s / tau_s), _softmax(t / tau_t)
    # w(x, x') = (1/H) sum_j sum_c q_t^j(c|x) q_t^j(c|x')
    w = np.array([np.mean([(qt[j, b] * qt[j, B + b]).sum() for j in range(H)])
                  for b in range(B)])
    expected = np.zeros(H)
    for i in range(H):
        for b in range(B):
            pmi_xn = np.log(((qs[i, b] * qt[i, B + b]) ** beta / prior[i]).sum())
            pmi_nx = np.log(((qs[i, B + b] * qt[i, b]) ** beta / prior[i]).sum())
            expected[i] += w[b] * -0.5 * (pmi_xn + pmi_nx) / B

    student = torch.tensor(s, requires_grad=True)
    teacher = torch.tensor(t, requires_grad=True)
    got = temi_loss(student, teacher, torch.tensor(prior), beta, tau_s, tau_t)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(pair_weights(torch.tensor(qt)).numpy(), w, rtol=1e-12)
    got.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a target, never trained by the loss


def test_prior_follows_its_ema_rule():
    rng = np.random.default_rng(5)
    prior = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    batches = [torch.tensor(_softmax(rng.standard_normal((2, 8, 3)))) for _ in range(2)]
    m = 0.9
    p = prior
    for q in batches:
        p = update_prior(p, q, m)
    # closed form of two EMA steps: m^2 p0 + m (1-m) mean(q1) + (1-m) mean(q2)
    expected = m**2 * prior + m * (1 - m) * batches[0].mean(1) + (1 - m) * batches[1].mean(1)
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, dtype=torch.float64))


def _small_temi(k: int, **kw) -> TEMI:
    # From random heads: these tests check TEMI's own mechanics (its loss falls), which a
    # k-means start would leave little to do on four blobs.
    params = dict(n_heads=3, hidden_dim=64, epochs=40, batch_size=64, k_neighbors=10,
                  warmup=2 / 40, teacher_temp_warmup=5 / 40, init="random", seed=0)
    return TEMI(k, **{**params, **kw})


@pytest.fixture(scope="module")
def fitted_temi():
    torch.set_num_threads(1)
    x, y = blobs(4, 100, seed=6)
    return _small_temi(4).fit(x), x, y


def test_temi_finds_blobs_without_collapse(fitted_temi):
    model, x, y = fitted_temi
    assert nmi(y, model.labels_) > 0.9
    assert (model.cluster_usage_ == 1.0).all()
    np.testing.assert_array_equal(model.predict(x), model.labels_)
    h = model.history_
    assert len(h["loss"]) == 40 and len(h["loss"][0]) == 3
    assert h["selected"] == int(np.argmin(h["head_losses"])) == int(model.head_.selected)
    assert h["loss_mean"][-1] < h["loss_mean"][0]
    assert h["teacher_temp"][0] == pytest.approx(0.04) and h["teacher_temp"][-1] == 0.05
    # the saved head carries the selected head's EMA prior and the teacher's temperature
    sel = h["selected"]
    np.testing.assert_allclose(model.head_.prior.numpy(), model.priors_[sel], rtol=1e-6)
    assert model.head_.prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert model.head_.temperature.item() == pytest.approx(0.05)
    np.testing.assert_allclose(model.head_.input_mean.numpy(), x.mean(0), atol=1e-5)


def test_head_save_load_roundtrip(fitted_temi, tmp_path):
    model, x, _ = fitted_temi
    path = save_head(model.head_, tmp_path / "head.safetensors", "temi",
                     encoder_sha256="ab" * 32, info={"note": "test"})
    loaded = load_head(path)
    assert loaded.config == model.head_.config
    a, b = model.head_.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with torch.no_grad():
        z = torch.from_numpy(x)
        torch.testing.assert_close(loaded(z), model.head_(z), rtol=0, atol=0)
    meta = read_head_metadata(path)
    assert meta["method"] == "temi" and meta["encoder_sha256"] == "ab" * 32


def test_input_std_is_floored_at_the_median_live_std():
    head = ClusterHead(HeadConfig(6, 3))
    std = torch.tensor([0.0, 1e-9, 0.5, 1.0, 2.0, 4.0])  # two dead units; live median 1.0
    head.set_input_stats(torch.zeros(6), std)
    np.testing.assert_allclose(head.input_std.numpy(), [1.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    before = head.input_std.clone()
    head.set_input_stats(torch.zeros(6), before)  # flooring twice changes nothing
    torch.testing.assert_close(head.input_std, before)


def test_temi_rejects_bad_settings():
    with pytest.raises(ValueError, match="beta"):
        TEMI(4, beta=0.5)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        TEMI(1)
    with pytest.raises(RuntimeError, match="not fitted"):
        TEMI(3).predict(np.zeros((2, 4)))


# --- DeepCluster ------------------------------------------------------------------------


def test_balanced_indices_are_uniform_over_pseudo_labels():
    # sizes 200, 30, 1 and label 3 empty: a uniform sampler still gives each present
    # label the same share, drawing the singleton with replacement
    labels = np.array([0] * 200 + [1] * 30 + [2] * 1 + [4] * 69)
    rng = np.random.default_rng(7)
    idx = balanced_indices(labels, 301, rng)
    assert idx.size == 301
    counts = np.bincount(labels[idx], minlength=5)
    assert counts[3] == 0
    present = counts[[0, 1, 2, 4]]
    assert present.max() - present.min() <= 1 and present.sum() == 301
    big = idx[labels[idx] == 0]
    assert np.unique(big).size == big.size  # enough members: no repeats
    # shuffled, not grouped by label
    assert (np.diff(labels[idx]) != 0).sum() > 100


def test_deepcluster_finds_blobs():
    x, y = blobs(4, 100, seed=8)
    model = DeepCluster(4, n_heads=2, hidden_dim=64, epochs=4, passes=3, batch_size=64,
                        seed=0).fit(x)
    assert nmi(y, model.labels_) > 0.9
    h = model.history_
    assert len(h["loss"]) == 4 and len(h["label_nmi"]) == 3
    # the shared rule: lowest loss among the heads using the most clusters (here the
    # lowest-loss head merged two blobs)
    assert h["selected"] == select_head(h["head_losses"], h["cluster_usage"])
    prior = model.head_.prior.numpy()
    assert prior.min() > 0 and prior.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(model.predict(x), model.labels_)


def test_deepcluster_recovers_unequal_clusters_with_either_view():
    """Clusters of 100, 100 and 20 points: with neighbour views or the points themselves
    the (logit-adjusted) head finds all three and its mean posterior follows their sizes."""
    x, y = blobs(3, 100, seed=9)
    x, y = x[: 100 + 100 + 20], y[: 100 + 100 + 20]  # cluster sizes 100, 100, 20
    for views in ("neighbours", "points"):
        model = DeepCluster(3, n_heads=2, hidden_dim=32, views=views, seed=0).fit(x)
        assert nmi(y, model.labels_) > 0.9, views
        assert ("k_neighbors" in model.history_) == (views == "neighbours")
        mean = np.sort(model.predict_proba(x).mean(0))
        np.testing.assert_allclose(mean, np.sort(np.bincount(y) / y.size), atol=0.05)


# --- what every head shares -------------------------------------------------------------


def test_length_rule_scales_with_the_data():
    # batch: power of two nearest n / 10 in [64, 512]; 30 epochs within 500..2000 steps
    assert [batch_for(n) for n in (40, 300, 3000, 30_000)] == [40, 64, 256, 512]
    small, mid, large = plan_steps(400), plan_steps(3000), plan_steps(100_000)
    assert (small.batch_size, small.steps_per_epoch) == (64, 7)
    assert small.total_steps >= 497 and small.epochs == 71  # not 30 epochs of 7 steps
    assert (mid.batch_size, mid.epochs, mid.total_steps) == (256, 42, 504)
    assert large.batch_size == 512 and large.total_steps <= 2000 and large.epochs == 10
    assert plan_steps(3000, batch_size=100, epochs=3).total_steps == 90  # given values win
    assert [neighbour_count(n, 10) for n in (400, 3000, 100_000)] == [5, 15, 50]


def test_selection_never_keeps_a_collapsed_head():
    # the lowest loss belongs to a head using 4 of 10 clusters: the next one is kept
    assert select_head([-2.5, -2.0, -1.0], [0.4, 1.0, 0.9]) == 1
    assert select_head([-1.0, -2.0], [0.9, 0.9]) == 1  # equal usage: the loss decides
    assert select_head([-3.0, -1.0, -2.0], [0.3, 0.5, 0.5]) == 2


@pytest.mark.parametrize("method", ["temi", "spice", "deepcluster"])
def test_fit_leaves_global_state_alone(method):
    x, _ = blobs(3, 30, dim=8, seed=11)
    cls = {"temi": TEMI, "spice": SPICE, "deepcluster": DeepCluster}[method]
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = cls(3, seed=5, n_heads=2, epochs=2).fit(x)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    b = cls(3, seed=5, n_heads=2, epochs=2).fit(x)  # the seed alone decides the result
    np.testing.assert_array_equal(a.labels_, b.labels_)
    for key, value in a.head_.state_dict().items():
        torch.testing.assert_close(value, b.head_.state_dict()[key], rtol=0, atol=0)


def _issue_gaussians():
    """Issue 12's case: 400 points from 10 well-separated Gaussians in 512-d."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 512)) * 2.0
    y = np.repeat(np.arange(10), 40)
    return (centres[y] + 0.5 * rng.standard_normal((400, 512))).astype(np.float32), y


@pytest.mark.parametrize("method", ["temi", "spice", "deepcluster"])
@pytest.mark.parametrize("case", ["blobs", "issue"])
def test_every_head_recovers_clear_clusters_with_its_defaults(method, case):
    """A few hundred points in clear clusters, and issue 12's 400 points in 512-d (where
    TEMI's fixed 30 epochs of 256 were 60 steps and used 4 of 10 clusters): the defaults
    must find them all."""
    x, y = blobs(6, 50, dim=32, spread=0.3, seed=12) if case == "blobs" else _issue_gaussians()
    k = int(y.max()) + 1
    cls = {"temi": TEMI, "spice": SPICE, "deepcluster": DeepCluster}[method]
    model = cls(k, seed=0).fit(x)
    assert nmi(y, model.labels_) > 0.95, (method, case, model.history_["cluster_usage"])
    assert np.unique(model.labels_).size == k
    assert model.history_["cluster_usage"][model.history_["selected"]] == 1.0


# --- number of clusters -----------------------------------------------------------------


@pytest.mark.parametrize("n_blobs", [3, 7])
def test_auto_clusters_finds_the_number_of_blobs(n_blobs):
    x, _ = blobs(n_blobs, 60, dim=8, spread=0.25, seed=n_blobs)
    k, scores = choose_n_clusters(x, k_max=12, seed=0)
    assert k == n_blobs, scores
    assert set(scores) <= set(range(2, 13))


def test_parse_clusters():
    assert parse_clusters("auto") is None and parse_clusters("AUTO") is None
    assert parse_clusters("10") == 10 and parse_clusters(3) == 3
    for bad in ("1", 0, "ten", None):
        with pytest.raises(train.UserError):
            parse_clusters(bad)


# --- command line -----------------------------------------------------------------------


def _encoder(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    encoder = build_encoder("audiontt", {"embed_dim": 64})
    return save_embedder(Embedder(encoder, mean=-10.35, std=7.52), path,
                         info={"note": "untrained test encoder"})


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return _encoder(root / "a.safetensors", 1), _encoder(root / "b.safetensors", 2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained_head(encoders, fsdd_subset, cache_dir, tmp_path_factory):
    """`audioclust-train head --method temi` on the 120-clip subset, run in-process."""
    out = tmp_path_factory.mktemp("temi-run")
    config = out / "head.toml"
    config.write_text("[head.temi]\nn_heads = 3\nhidden_dim = 64\nbatch_size = 32\n"
                      "k_neighbors = 5\n")
    argv = ["head", "--method", "temi", "--encoder", str(encoders[0]), "--data",
            str(fsdd_subset), "--clusters", "4", "--out", str(out), "--config", str(config),
            "--epochs", "20", "--seed", "1", "--json", "--quiet", "--cache-dir", str(cache_dir)]
    return argv, out


def test_train_and_eval_head_cli(trained_head, encoders, fsdd_subset, cache_dir, tmp_path,
                                 capsys):
    argv, out = trained_head
    assert train.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "temi" and summary["n_clusters"] == 4
    assert summary["n_heads"] == 3 and summary["clusters"] == "given"
    assert summary["encoder_sha256"] == file_sha256(encoders[0])
    for name in ("head.safetensors", "history.json", "loss.png"):
        assert (out / name).is_file(), name
    meta = read_head_metadata(out / "head.safetensors")
    assert meta["method"] == "temi" and meta["encoder_sha256"] == file_sha256(encoders[0])
    assert meta["config"]["n_heads"] == 3 and meta["config"]["hidden_dim"] == 64
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]["loss"]) == 20 and history["run"]["seed"] == 1

    report_dir = tmp_path / "eval"
    assert evaluate.main(["head", "--head", str(out / "head.safetensors"), "--encoder",
                          str(encoders[0]), "--data", str(fsdd_subset), "--labels", "digit",
                          "--out", str(report_dir), "--json", "--quiet",
                          "--cache-dir", str(cache_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_clusters"] == 4 and report["clips"] == 120
    assert len(report["heads"]) == 3
    assert report["selected"] == summary["selected"]
    assert [r["clusterer"] for r in report["kmeans"]] == ["k-means (k=4)"]  # 4 digits
    for row in (report["selected_scores"], *report["heads"], *report["kmeans"]):
        assert {"nmi", "ari", "acc", "purity", "clusters_used"} <= set(row)
        assert 0.0 <= row["nmi"] <= 1.0 and 0.25 <= row["acc"] <= 1.0
    sel = report["heads"][report["selected"]]
    assert report["selected_scores"]["nmi"] == sel["nmi"]
    for name in ("head-eval.json", "head-eval.md", "confusion.png", "map.png"):
        assert (report_dir / name).is_file(), name


def test_deepcluster_cli_with_auto_clusters(encoders, fsdd_subset, cache_dir, tmp_path,
                                            capsys):
    out = tmp_path / "dc"
    assert train.main(["head", "--method", "deepcluster", "--encoder", str(encoders[0]),
                       "--data", str(fsdd_subset), "--clusters", "auto", "--k-max", "6",
                       "--out", str(out), "--epochs", "2", "--json", "--quiet",
                       "--cache-dir", str(cache_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clusters"] == "auto" and 2 <= summary["n_clusters"] <= 6
    scores = {int(k): v for k, v in  # JSON keys: strings
              json.loads((out / "history.json").read_text())["auto_k_scores"].items()}
    rejected = [k for k in sorted(scores) if scores[k] >= 0.5]
    assert summary["n_clusters"] == (max(rejected[0] - 1, 2) if rejected else max(scores))
    assert (out / "n_clusters.png").stat().st_size > 1000  # the criterion curve, drawn
    assert read_head_metadata(out / "head.safetensors")["method"] == "deepcluster"


def _error(main, argv: list[str], capsys, *parts: str) -> None:
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, err


def test_cli_errors(trained_head, encoders, fsdd_subset, cache_dir, tmp_path, capsys,
                    monkeypatch):
    argv, out = trained_head
    head = out / "head.safetensors"
    if not head.is_file():
        assert train.main(argv) == 0
    capsys.readouterr()
    base = ["head", "--data", fsdd_subset, "--out", tmp_path / "x", "--quiet",
            "--cache-dir", cache_dir]
    missing = tmp_path / "missing.safetensors"
    _error(train.main, [*base, "--encoder", missing, "--clusters", "4"], capsys,
           "audioclust-train: error:", "no such checkpoint")
    _error(train.main, [*base, "--encoder", encoders[0], "--clusters", "1"], capsys,
           "at least 2")
    _error(train.main, [*base, "--encoder", encoders[0]], capsys, "--clusters")
    config = tmp_path / "bad.toml"
    config.write_text("[head.temi]\nwarp_speed = 9\n")
    _error(train.main, [*base, "--encoder", encoders[0], "--clusters", "4", "--config", config],
           capsys, "unknown setting", "warp_speed")
    # SPICE lives in a module of its own; without it the dispatch says so
    monkeypatch.setitem(sys.modules, "audioclust.training.heads.spice", None)
    _error(train.main, [*base, "--encoder", encoders[0], "--clusters", "4", "--method",
                        "spice"], capsys, "spice", "not available")

    eval_base = ["head", "--data", fsdd_subset, "--labels", "digit", "--out", tmp_path / "e",
                 "--quiet", "--cache-dir", cache_dir]
    _error(evaluate.main, [*eval_base, "--head", head, "--encoder", encoders[1]], capsys,
           "audioclust-eval: error:", "SHA-256", str(encoders[1]))
    _error(evaluate.main, [*eval_base, "--head", head, "--encoder", missing], capsys,
           "no such checkpoint")
    _error(evaluate.main, [*eval_base, "--head", tmp_path / "nohead.safetensors", "--encoder",
                           encoders[0]], capsys, "no such checkpoint")
