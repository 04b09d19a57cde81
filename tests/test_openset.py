"""The open-set online clusterer: the notion of distinct clusters, creation far from every
cluster, merging of clusters that converge, forgetting under a cap, stable ids, state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audioclust.stream.openset import (
    MAJORITY,
    OpenSetClusterer,
    OpenSetConfig,
    StreamSpace,
    belongs_fraction,
    cluster_summary,
    loo_similarities,
    prior_from_data,
)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def mixture(k: int, per: int, dim: int = 64, noise: float = 0.25, seed: int = 0):
    """Unit vectors around k random directions, and their labels."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((k, dim)))
    y = np.repeat(np.arange(k), per)
    x = _unit(centres[y] + noise * rng.standard_normal((y.size, dim)) / np.sqrt(dim) * 4)
    return x, y


def test_leave_one_out_similarities():
    x = _unit(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    s = loo_similarities(x)
    want = [x[0] @ _unit(x[1] + x[2]), x[1] @ _unit(x[0] + x[2]), x[2] @ _unit(x[0] + x[1])]
    np.testing.assert_allclose(s, want)
    assert loo_similarities(x[:1]).size == 0


def test_true_clusters_are_distinct_and_halves_of_one_are_not():
    x, y = mixture(3, 80)
    centroids, radii, means, pooled = cluster_summary(x, y, 3)
    assert pooled.size == 240 and np.all(radii < means)
    assert belongs_fraction(x, y, centroids, radii).max() < 0.05
    halves = np.where(y == 0, np.arange(y.size) % 2 * 3, y)  # cluster 0 cut into 0 and 3
    c4, r4, _, _ = cluster_summary(x, halves, 4)
    f = belongs_fraction(x, halves, c4, r4)
    assert max(f[0, 3], f[3, 0]) >= MAJORITY
    radius, similarity = prior_from_data(x, y, 3)
    assert radius == pytest.approx(np.quantile(pooled, 0.05)) and similarity > radius


def _clusterer(x, y, k, **kw) -> OpenSetClusterer:
    radius, similarity = prior_from_data(x, y, k)
    return OpenSetClusterer(x.shape[1], radius, similarity, OpenSetConfig(**kw))


def test_a_new_sound_founds_a_cluster_ids_stay():
    x, y = mixture(4, 60, seed=1)
    c = _clusterer(x, y, 4)
    assigned = np.array([c.learn_one(v) for v in x])  # grouped: one sound after another
    main = []
    for k in range(4):  # a sound's windows gather in one cluster, founded by its first
        ids, counts = np.unique(assigned[y == k], return_counts=True)
        main.append(int(ids[np.argmax(counts)]))
        assert counts.max() >= 0.85 * counts.sum()
        assert assigned[y == k][0] == main[-1] or k == 0
    assert main == sorted(main) and len(set(main)) == 4  # new sounds, new (growing) ids
    assert set(main) <= set(c.live_ids)
    # the 5 % of a sound's windows outside its radius found clusters of their own
    assert 4 <= c.created <= 4 + 0.15 * y.size and c.merged > 0
    assert c.predict_one(x[-1]) == main[3] and c.predict_one(-x[-1]) == c.next_id  # far: new
    p = c.proba_one(x[-1])
    assert max(p, key=p.get) == main[3] and sum(p.values()) == pytest.approx(1.0)
    assert c.similarity(x[-1], main[3]) > 0.5 and c.similarity(x[-1], -7) is None


def test_shuffled_order_finds_the_same_clusters():
    x, y = mixture(5, 60, seed=2)
    c = _clusterer(x, y, 5)
    order = np.random.default_rng(0).permutation(y.size)
    assigned = np.empty(y.size, dtype=int)
    for i in order:
        assigned[i] = c.learn_one(x[i])
    main = set()
    for k in range(5):
        values, counts = np.unique(assigned[y == k], return_counts=True)
        assert counts.max() >= 0.85 * counts.sum()
        main.add(int(values[np.argmax(counts)]))
    assert len(main) == 5


def test_clusters_that_converge_merge_into_the_older_id():
    rng = np.random.default_rng(3)
    d = 32
    a, b = _unit(rng.standard_normal(d)), _unit(rng.standard_normal(d))
    c = OpenSetClusterer(d, radius=0.5, similarity=0.8, config=OpenSetConfig(momentum=0.9))
    assert c.learn_one(a) == 0 and c.learn_one(b) == 1  # far apart: two clusters
    mid = _unit(a + b)
    # the sound changes slowly from a towards b; both clusters follow it, then merge
    ids = [c.learn_one(_unit(mid + 0.05 * rng.standard_normal(d))) for _ in range(60)]
    assert c.merged >= 1 and 0 in c.live_ids and 1 not in c.live_ids
    assert ids[-1] == 0 and c.counts[: c.size].sum() == 62


def test_forgetting_under_the_cap_evicts_the_stalest():
    rng = np.random.default_rng(4)
    dirs = _unit(rng.standard_normal((6, 128)))
    c = OpenSetClusterer(128, radius=0.6, similarity=0.8,
                         config=OpenSetConfig(max_clusters=3))
    for i in (0, 1, 2):
        c.learn_one(dirs[i])
    c.learn_one(dirs[0])  # cluster 0 seen again: 1 is now the stalest
    assert c.learn_one(dirs[3]) == 3
    assert c.live_ids == [0, 3, 2] or sorted(c.live_ids) == [0, 2, 3]
    assert c.evicted == 1 and c.next_id == 4
    assert c.learn_one(dirs[1]) == 4  # a forgotten sound comes back under a new id


def test_state_round_trip_continues_identically():
    x, y = mixture(3, 50, seed=5)
    a = _clusterer(x, y, 3, max_clusters=8)
    order = np.random.default_rng(1).permutation(y.size)
    for i in order[:70]:
        a.learn_one(x[i])
    arrays, scalars = a.state()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    scalars = json.loads(json.dumps(scalars))  # JSON-able
    b = OpenSetClusterer(x.shape[1], 0.0, 0.0, OpenSetConfig(max_clusters=8))
    b.prior_radius, b.prior_similarity = scalars["radius"], scalars["similarity"]
    b.load_state(arrays, scalars)
    for i in order[70:]:
        assert a.learn_one(x[i]) == b.learn_one(x[i])
    np.testing.assert_allclose(a.centroids[: a.size], b.centroids[: b.size])
    with pytest.raises(ValueError, match="not an open-set clusterer state"):
        b.load_state({"centroids": arrays["centroids"]}, scalars)
    with pytest.raises(ValueError, match="-d ones"):
        OpenSetClusterer(7, 0.5, 0.8).load_state(arrays, scalars)
    for name, bad in [("centroids", np.nan), ("sim_var", np.inf), ("counts", None)]:
        broken = dict(arrays)
        if bad is None:  # one row short
            broken[name] = arrays[name][:-1]
        else:
            broken[name] = arrays[name].astype(np.float64).copy()
            broken[name].flat[0] = bad
        with pytest.raises(ValueError, match="do not fit together or are not finite"):
            OpenSetClusterer(x.shape[1], 0.5, 0.8, OpenSetConfig(max_clusters=8)).load_state(
                broken, scalars)


def test_a_damaged_stream_space_state_is_refused():
    space = StreamSpace(np.zeros(4), np.ones(4))
    for v in np.random.default_rng(0).normal(size=(5, 4)):
        space.learn_transform(v)
    good = space.state()
    for name, value in [("mean", np.full(4, np.nan)), ("m2", np.ones(3)),
                        ("m2", -np.ones(4)), ("count", np.array(-1))]:
        with pytest.raises(ValueError, match="do not fit together or are not finite"):
            StreamSpace(np.zeros(4), np.ones(4)).load_state({**good, name: value})
    fresh = StreamSpace(np.zeros(4), np.ones(4))
    fresh.load_state(good)
    assert fresh.count == space.count


def test_bad_settings():
    with pytest.raises(ValueError):
        OpenSetConfig(max_clusters=1)
    with pytest.raises(ValueError):
        OpenSetConfig(momentum=1.0)
    with pytest.raises(ValueError, match="cosines"):
        OpenSetClusterer(4, radius=1.5, similarity=0.5)


def test_stream_space_moves_from_the_prior_to_the_stream():
    rng = np.random.default_rng(6)
    prior_mean, prior_std = np.zeros(16), np.ones(16)
    space = StreamSpace(prior_mean, prior_std)
    z = 5.0 + 0.1 * rng.standard_normal((4000, 16))  # far from the prior's mean
    first = space.learn_transform(z[0])
    # at first the offset from the training mean dominates: such windows look alike
    assert first @ space.learn_transform(z[1]) > 0.9
    for v in z[2:]:
        last = space.learn_transform(v)
    assert space.count == 4000 and abs(np.linalg.norm(last) - 1) < 1e-9
    np.testing.assert_allclose(space.mean, z.mean(0))
    np.testing.assert_allclose(space.m2 / 4000, z.var(0), rtol=1e-9)
    # re-centred on the stream (the prior now weighs 20 of 4020 windows): no longer alike
    late = [space.learn_transform(v) for v in 5.0 + 0.1 * rng.standard_normal((20, 16))]
    assert np.mean([late[i] @ late[i + 1] for i in range(19)]) < 0.3
    other = StreamSpace(prior_mean, prior_std)
    other.load_state(space.state())
    np.testing.assert_allclose(other.learn_transform(z[0]), space.learn_transform(z[0]))
    with pytest.raises(ValueError, match="stream statistics"):
        StreamSpace(np.zeros(3), np.ones(3)).load_state(space.state())
