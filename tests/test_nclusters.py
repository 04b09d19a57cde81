"""``--clusters auto``: K by the notion of distinct clusters, in the heads' input space,
on mixtures of known K; and its picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioclust.training.heads.deepcluster import DeepCluster
from audioclust.training.nclusters import (
    auto_clusters,
    choose_n_clusters,
    heads_space,
    plot_n_clusters,
)


def gaussians(k: int, per: int, dim: int = 256, sep: float = 1.0, seed: int = 0):
    """k Gaussians with centres ~N(0, sep²·I) and unit noise, in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * sep
    y = np.repeat(np.arange(k), per)
    return centres[y] + rng.standard_normal((y.size, dim)), y


@pytest.mark.parametrize(("k", "per", "seed"), [(3, 80, 1), (6, 60, 2), (12, 40, 3)])
def test_finds_the_number_of_gaussians(k, per, seed):
    x, _ = gaussians(k, per, seed=seed)
    chosen, scores = choose_n_clusters(x, k_max=20)
    assert chosen == k, scores
    assert all(scores[j] < 0.5 for j in range(2, k + 1)) and scores[k + 1] >= 0.5
    assert max(scores) <= k + 4  # the curve stops a few steps past the answer


def test_k_is_scored_in_the_heads_input_space():
    """Nearly dead units (std 1e-4 on the training clips) must not count: a 1e-6 std floor
    turns each into a unit-variance noise dimension that drowns the clusters (the rule
    before the fix said K = 2 here), the heads' floor (the median live std) leaves them
    near zero."""
    rng = np.random.default_rng(4)
    x, _ = gaussians(4, 60, dim=16, sep=1.5, seed=4)
    dead = 1.0 + 1e-4 * rng.standard_normal((x.shape[0], 200))
    x = np.concatenate([x, dead], axis=1)
    assert choose_n_clusters(x, k_max=10)[0] == 4
    # the space is the one a head trained on these embeddings sees
    head = DeepCluster(4, n_heads=1, epochs=1, passes=1).fit(
        x.astype(np.float32)).head_
    with torch.no_grad():
        want = head.prepare(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(heads_space(x), want, atol=1e-4)


def test_labels_of_the_chosen_k_and_subsampling():
    x, y = gaussians(5, 50, dim=64, seed=5)
    k, _, rows, labels = auto_clusters(x, k_max=12, fit_points=200)
    assert k == 5 and rows.size == 200 == labels.size and np.all(np.diff(rows) > 0)
    # the labels are the clusters: one label per true cluster
    pairs = {(int(a), int(b)) for a, b in zip(y[rows], labels, strict=True)}
    assert len(pairs) == 5


def test_bad_input():
    with pytest.raises(ValueError, match="cannot choose K"):
        choose_n_clusters(np.random.default_rng(0).standard_normal((3, 4)))
    with pytest.raises(ValueError, match="finite"):
        choose_n_clusters(np.full((20, 4), np.nan))


def test_picture(tmp_path):
    from PIL import Image

    x, _ = gaussians(3, 40, dim=32, seed=6)
    k, scores = choose_n_clusters(x, k_max=10)
    png = plot_n_clusters(scores, k, tmp_path / "k.png", "test")
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
