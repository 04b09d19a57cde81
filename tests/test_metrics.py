"""Clustering metrics: hand-computed cases, permutation invariance, sklearn agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from audioclust.training.metrics import (
    accuracy,
    adjusted_rand_index,
    contingency,
    hungarian_mapping,
    nmi,
    purity,
    score_all,
)


def test_hand_computed_two_by_two():
    y, c = [0, 0, 1, 1], [0, 0, 0, 1]
    assert contingency(y, c).tolist() == [[2, 0], [1, 1]]
    assert accuracy(y, c) == 0.75
    assert purity(y, c) == 0.75
    # I = .5 ln(4/3) + .25 ln(2/3) + .25 ln 2; H(Y) = ln 2; H(C) = -(.75 ln .75 + .25 ln .25)
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_c = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi(y, c) == pytest.approx(mi / math.sqrt(math.log(2) * h_c), abs=1e-12)
    assert nmi(y, c) == pytest.approx(0.34559, abs=1e-5)
    # sum_ij C(n_ij,2) = 1 = expected (2 * 3 / 6): no better than chance
    assert adjusted_rand_index(y, c) == pytest.approx(0.0, abs=1e-12)


def test_more_clusters_than_classes():
    y = [0, 0, 0, 1, 1, 1]
    c = [0, 0, 1, 1, 2, 2]
    assert accuracy(y, c) == pytest.approx(4 / 6)  # cluster 1 stays unmatched
    assert purity(y, c) == pytest.approx(5 / 6)
    mapping = hungarian_mapping(y, c)
    assert mapping == {0: 0, 2: 1}


def test_fewer_clusters_than_classes():
    y = [0, 1, 2, 0, 1, 2]
    c = [0, 0, 0, 1, 1, 1]
    assert accuracy(y, c) == pytest.approx(2 / 6)
    assert purity(y, c) == pytest.approx(2 / 6)
    assert nmi(y, c) == pytest.approx(0.0, abs=1e-12)  # clusters say nothing of classes


def test_labels_of_any_type():
    y = ["dog", "dog", "cat", "cat"]
    c = [7, 7, -1, -1]  # noise label -1 is just another cluster
    s = score_all(y, c)
    assert (s.nmi, s.ari, s.acc, s.purity, s.n_clusters) == (1.0, 1.0, 1.0, 1.0, 2)


def test_degenerate_partitions():
    assert nmi([0, 0, 0], [1, 1, 1]) == 1.0
    assert nmi([0, 1, 2], [5, 5, 5]) == 0.0
    assert adjusted_rand_index([0, 0], [3, 3]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no labels"):
        nmi([], [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=60), st.randoms(use_true_random=False))
def test_permuted_labels_score_one(labels, rnd):
    perm = list(range(6))
    rnd.shuffle(perm)
    renamed = [perm[v] + 100 for v in labels]
    s = score_all(labels, renamed)
    assert s.acc == pytest.approx(1.0)
    assert s.nmi == pytest.approx(1.0)
    assert s.ari == pytest.approx(1.0)
    assert s.purity == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 80).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 4), min_size=n, max_size=n),
            st.lists(st.integers(0, 7), min_size=n, max_size=n),
        )
    )
)
def test_agrees_with_sklearn(pair):
    y, c = pair
    assert nmi(y, c) == pytest.approx(
        normalized_mutual_info_score(y, c, average_method="geometric"), abs=1e-9
    )
    assert adjusted_rand_index(y, c) == pytest.approx(adjusted_rand_score(y, c), abs=1e-9)
    assert 0.0 <= accuracy(y, c) <= purity(y, c) <= 1.0


def test_accuracy_brute_force_small():
    rng = np.random.default_rng(0)
    from itertools import permutations

    for _ in range(20):
        y = rng.integers(0, 3, 12)
        c = rng.integers(0, 3, 12)
        best = max(
            sum(int(p[ci] == yi) for yi, ci in zip(y, c, strict=True))
            for p in permutations(range(3))
        )
        # with fewer distinct values present, unmatched ones simply score nothing
        assert accuracy(y, c) == pytest.approx(best / 12)


def test_readiness_follows_the_source():
    from audioclust.stream.metrics import Health

    class Source:
        connected = True

    h = Health(stall_seconds=60)
    h.model_loaded = True
    assert not h.ready()  # no source attached yet
    src = Source()
    h.attach(src)
    assert h.ready()
    src.connected = False  # e.g. the broker went away
    assert not h.ready()
    src.connected = True
    assert h.ready()
    h.attach(None)
    assert not h.ready()
