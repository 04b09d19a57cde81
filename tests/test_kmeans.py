"""k-means: finds well-separated blobs, re-seeds empty clusters, estimator contract."""

from __future__ import annotations

import numpy as np
import pytest

from audioclust.training.kmeans import KMeans
from audioclust.training.metrics import accuracy


def _blobs(rng, centres, n=50, scale=0.1):
    x = np.concatenate([c + rng.standard_normal((n, len(c))) * scale for c in centres])
    y = np.repeat(np.arange(len(centres)), n)
    return x, y


def test_recovers_blobs():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 8)) * 5
    x, y = _blobs(rng, centres)
    km = KMeans(5, n_init=3, random_state=0).fit(x)
    assert accuracy(y, km.labels_) == 1.0
    assert km.cluster_centers_.shape == (5, 8)
    np.testing.assert_array_equal(km.predict(x), km.labels_)
    inertia = ((x - km.cluster_centers_[km.labels_]) ** 2).sum()
    assert km.inertia_ == pytest.approx(inertia)


def test_deterministic_under_seed():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4))
    a = KMeans(6, random_state=3).fit_predict(x)
    b = KMeans(6, random_state=3).fit_predict(x)
    np.testing.assert_array_equal(a, b)


def test_empty_cluster_is_reseeded_by_splitting():
    # 3 distinct points repeated, k = 4: Lloyd with a duplicate seed leaves a cluster empty;
    # the fix splits a populated cluster so all 4 centres end up used.
    x = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), [60, 30, 10], axis=0)
    x += np.random.default_rng(2).standard_normal(x.shape) * 0.01
    km = KMeans(4, n_init=1, random_state=0)
    km._plus_plus = lambda x, x_sq, rng: np.array(  # type: ignore[method-assign]
        [[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]
    )
    km.fit(x)
    assert km.n_reseeds_ >= 1
    assert np.unique(km.labels_).size == 4
    # the split happens inside one blob: no cluster mixes points of two blobs
    blob = np.repeat([0, 1, 2], [60, 30, 10])
    for j in range(4):
        assert np.unique(blob[km.labels_ == j]).size == 1


def test_reseed_perturbs_donor_both_ways():
    km = KMeans(3, perturbation=1e-3)
    centres = np.array([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]])
    counts = np.array([40, 0, 10])
    donor_before = centres.copy()
    n = km._reseed_empty(centres, counts, np.random.default_rng(0))
    assert n == 1
    moved = [i for i in (0, 2) if not np.allclose(centres[i], donor_before[i])]
    assert len(moved) == 1
    d = moved[0]
    # the new centre and the donor sit symmetrically around the donor's old position
    np.testing.assert_allclose((centres[1] + centres[d]) / 2, donor_before[d])
    assert 0 < np.abs(centres[1] - donor_before[d]).max() < 1e-2
    assert counts.sum() == 50 and counts[1] > 0


@pytest.mark.parametrize("k", [0, 11])
def test_rejects_bad_k(k):
    with pytest.raises(ValueError, match="n_clusters"):
        KMeans(k).fit(np.zeros((10, 2)))


def test_rejects_nan():
    x = np.zeros((10, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMeans(2).fit(x)
