"""Online assignment: the prior-correction formula, its EMA, guards, novelty, drift, state."""

from __future__ import annotations

import numpy as np
import pytest

from audioclust.stream.assign import AssignConfig, Assigner, StreamAssigner

PRIOR = np.array([0.5, 0.3, 0.2])


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_correction_formula_and_prior_ema():
    cfg = AssignConfig(prior_momentum=0.9, max_prior_ratio=100.0, min_confidence=0.0)
    s = StreamAssigner(PRIOR, dim=2, config=cfg)
    p = np.array([0.2, 0.5, 0.3])
    # at the start π_t = π_train: no correction
    np.testing.assert_allclose(s.corrected(p), p)
    a = s.process(np.array([1.0, 0.0]), p)
    assert a.cluster == 1 and a.confidence == pytest.approx(0.5)
    expected_prior = 0.9 * PRIOR + 0.1 * p
    np.testing.assert_allclose(s.prior, expected_prior / expected_prior.sum())
    # next window: q ∝ p · π_t / π_train
    p2 = np.array([0.4, 0.4, 0.2])
    q = p2 * (s.prior / PRIOR)
    np.testing.assert_allclose(s.corrected(p2), q / q.sum())


def test_ratio_guard_bounds_the_weights():
    cfg = AssignConfig(prior_momentum=0.5, max_prior_ratio=4.0, min_confidence=0.0)
    s = StreamAssigner(np.array([0.1, 0.45, 0.45]), dim=2, config=cfg)
    for _ in range(200):  # a stream that only ever says cluster 0, rare in training
        s.process(np.array([1.0, 0.0]), np.array([0.98, 0.01, 0.01]))
    assert s.prior[0] > 0.95
    w = s.corrected(np.ones(3) / 3) / (np.ones(3) / 3)
    # unclipped, cluster 0 would be favoured (0.98/0.1) / (0.01/0.45) ≈ 440 times
    assert w.max() / w.min() == pytest.approx(16.0, rel=1e-6)  # r² at the most
    # a window that clearly belongs elsewhere still gets there
    assert s.predict_one(np.array([0.0, 1.0]), np.array([0.01, 0.98, 0.01])).top == 1


def test_novel_by_confidence():
    s = StreamAssigner(PRIOR, dim=2, config=AssignConfig(min_confidence=0.6))
    a = s.process(np.array([1.0, 0.0]), np.array([0.4, 0.35, 0.25]))
    assert a.novel and a.cluster is None and a.top == 0
    np.testing.assert_allclose(s.prior, PRIOR)  # novel windows do not move the prior
    assert s.counts.sum() == 0


def test_novel_by_centroid_similarity():
    cfg = AssignConfig(min_confidence=0.0, min_similarity=0.5, centroid_warmup=5,
                       centroid_momentum=0.5)
    s = StreamAssigner(PRIOR, dim=2, config=cfg)
    p = np.array([0.1, 0.8, 0.1])
    for _ in range(5):
        assert not s.process(_unit([1.0, 0.1]), p).novel
    assert s.counts[1] == 5
    np.testing.assert_allclose(_unit(s.centroids[1]), _unit([1.0, 0.1]), atol=1e-9)
    near = s.predict_one(_unit([1.0, 0.2]), p)
    assert not near.novel and near.similarity > 0.99 and near.nearest == 1
    far = s.predict_one(_unit([-1.0, 0.3]), p)  # same posterior, opposite sound
    assert far.novel and far.cluster is None and far.similarity < 0.0


def test_centroid_is_an_ema():
    cfg = AssignConfig(min_confidence=0.0, min_similarity=-1.0, centroid_momentum=0.75)
    s = StreamAssigner(PRIOR, dim=2, config=cfg)
    p = np.array([0.8, 0.1, 0.1])
    s.process(np.array([2.0, 0.0]), p)
    s.process(np.array([0.0, 3.0]), p)
    np.testing.assert_allclose(s.centroids[0], [0.75, 0.25])


def test_drift_on_a_change_of_confidence():
    s = StreamAssigner(PRIOR, dim=2, config=AssignConfig(min_confidence=0.0))
    rng = np.random.default_rng(0)
    events = []
    for i in range(600):
        top = 0.95 if i < 300 else 0.4
        rest = (1 - top) / 2
        p = np.array([top, rest, rest]) + rng.normal(0, 0.005, 3).clip(-rest / 2, rest / 2)
        a = s.process(np.array([1.0, 0.0]), p / p.sum())
        if "confidence" in a.drift:
            events.append(i)
    assert events, "ADWIN saw no change"
    assert all(e >= 300 for e in events) and events[0] < 400


def test_state_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(1)
    zs = rng.standard_normal((120, 4))
    ps = rng.dirichlet(np.ones(3) * 0.5, size=120)
    cfg = AssignConfig(min_confidence=0.4, centroid_warmup=3, min_similarity=0.0)
    one = Assigner(PRIOR, 4, cfg, model_id="abc")
    for i in range(60):
        one.process(f"s{i % 2}", zs[i], ps[i])
    path = one.save(tmp_path / "state.npz")
    two = Assigner(PRIOR, 4, cfg, model_id="abc")
    assert two.load(path) == 2
    for i in range(60, 120):
        a = one.process(f"s{i % 2}", zs[i], ps[i])
        b = two.process(f"s{i % 2}", zs[i], ps[i])
        assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(one.stream("s0").prior, two.stream("s0").prior)


def test_state_errors(tmp_path):
    a = Assigner(PRIOR, 4, model_id="abc")
    a.process("s", np.ones(4), np.array([0.6, 0.2, 0.2]))
    path = a.save(tmp_path / "state.npz")
    with pytest.raises(ValueError, match="belongs to another model"):
        Assigner(PRIOR, 4, model_id="xyz").load(path)
    with pytest.raises(ValueError, match="centroids"):
        Assigner(PRIOR, 8, model_id="abc").load(path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a state file")
    with pytest.raises(ValueError, match="not a readable audioclust state file"):
        Assigner(PRIOR, 4).load(bad)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_faiss_nearest_matches_numpy():
    k = 300
    rng = np.random.default_rng(2)
    cfg = AssignConfig(min_confidence=0.0, min_similarity=-1.0, faiss_min_clusters=256)
    s = StreamAssigner(np.ones(k) / k, dim=8, config=cfg)
    s.centroids = rng.standard_normal((k, 8))
    s.counts[:] = 1
    for _ in range(20):
        z = _unit(rng.standard_normal(8))
        a = s.predict_one(z, np.ones(k) / k)
        assert a.nearest == int(np.argmax(s.centroids @ z))


def test_bad_prior():
    with pytest.raises(ValueError, match="positive vector"):
        StreamAssigner(np.array([1.0, 0.0]), dim=2)


def test_assignment_states_beyond_max_streams_are_dropped_least_recent_first(tmp_path):
    a = Assigner(PRIOR, 2, AssignConfig(max_streams=3))
    p = np.array([0.6, 0.2, 0.2])
    for name in ["s0", "s1", "s2", "s0", "s3", "s4"]:  # s0 used again: s1 is the oldest
        a.process(name, np.array([1.0, 0.0]), p)
    assert list(a.streams) == ["s0", "s3", "s4"] and a.evicted == 2
    assert a.streams["s0"].windows == 2
    b = Assigner(PRIOR, 2, AssignConfig(max_streams=2))
    assert b.load(a.save(tmp_path / "state.npz")) == 2  # the most recent ones
    assert list(b.streams) == ["s3", "s4"]
