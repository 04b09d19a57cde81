"""The runtime's one entry point, OnnxModel.embed: length buckets, batch limits, the I/O
binding path (run here on the CPU provider), against each window run alone."""

from __future__ import annotations

import numpy as np
import pytest

from audioclust.models.runtime import OnnxModel, _buckets


def _alone(model: OnnxModel, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each window in a call of its own: no batching, no padding."""
    rows = [model._run(w[None].astype(np.float32), np.array([len(w)], np.int64))
            for w in windows]
    return np.concatenate([z for z, _ in rows]), np.concatenate([p for _, p in rows])


def _windows(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


def test_buckets_keep_shared_lengths_unpadded_and_pack_the_rest():
    lengths = np.array([16000, 9000, 16000, 12000, 16000, 3000, 16000, 16000, 12000, 5000])
    got = [b.tolist() for b in _buckets(lengths, max_batch=3)]
    # 12000 twice and 16000 five times: batches of their own, in input order, <= 3 each
    assert got[:3] == [[3, 8], [0, 2, 4], [6, 7]]
    # the lengths nobody shares, shortest first
    assert got[3:] == [[5, 9, 1]]
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))


@pytest.mark.parametrize("max_batch", [1, 3, 32])
def test_embed_matches_each_window_alone(stream_model, max_batch):
    model = OnnxModel(stream_model, threads=1)
    # full windows of two streams, tails of ended ones, two tails of one length
    windows = _windows([16000] * 7 + [9000, 4321, 12000, 12000, 2000, 16000, 5555])
    z, p = model.embed(windows, max_batch=max_batch)
    za, pa = _alone(model, windows)
    assert z.shape == (len(windows), 64) and p.shape == (len(windows), 4)
    np.testing.assert_allclose(z, za, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, pa, atol=1e-5, rtol=0)


def test_embed_reports_each_batch(stream_model):
    model = OnnxModel(stream_model, threads=1)
    seen: list[tuple[int, float]] = []
    model.embed(_windows([16000] * 5 + [7000, 8000, 9000]), max_batch=2,
                on_batch=lambda size, seconds: seen.append((size, seconds)))
    assert [size for size, _ in seen] == [2, 2, 1, 2, 1]
    assert all(seconds > 0 for _, seconds in seen)


def test_embed_takes_an_equal_length_array(stream_model):
    model = OnnxModel(stream_model, threads=1)
    batch = np.stack(_windows([8000] * 5, seed=1))
    z, p = model.embed(batch)
    z2, p2 = model.embed(list(batch), max_batch=2)
    np.testing.assert_allclose(z, z2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, p2, atol=1e-5, rtol=0)


def test_embed_edge_cases_and_errors(stream_model):
    model = OnnxModel(stream_model, threads=1)
    z, p = model.embed([])
    assert z.shape == (0, 64) and p.shape == (0, 4)
    with pytest.raises(ValueError, match="shorter than the model's minimum"):
        model.embed([np.zeros(16000, np.float32), np.zeros(100, np.float32)])
    with pytest.raises(ValueError, match="max_batch"):
        model.embed(_windows([16000]), max_batch=0)
    with pytest.raises(ValueError, match="expected"):
        model.embed(np.zeros((2, 3, 16000), np.float32))


def test_io_binding_path_gives_the_plain_results(stream_model):
    # The CUDA provider runs every batch through I/O binding; the same binding code runs
    # on the CPU provider here, so it is checked against the plain session.run path.
    plain = OnnxModel(stream_model, provider="cpu", threads=1)
    bound = OnnxModel(stream_model, provider="cpu", threads=1)
    assert plain.output_device is None  # the CPU provider needs no binding
    bound.output_device = "cpu"
    windows = _windows([16000] * 4 + [6000, 9000])
    z, p = plain.embed(windows, max_batch=3)
    zb, pb = bound.embed(windows, max_batch=3)
    np.testing.assert_array_equal(z, zb)
    np.testing.assert_array_equal(p, pb)
