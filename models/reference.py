"""The novelty reference: what the training audio looked like to the model, in a few KB.

At export (``audioclust-export --data DIR``) the exported graph embeds the training audio
cut into the stream's own windows (window, hop and energy gate as ``audioclust-stream``
uses them), and this module summarises those window embeddings z:

- the standardisation the heads use: x = (z − mean) / std, with each std floored at the
  median std of the live dimensions (:meth:`ClusterHead.set_input_stats
  <audioclust.models.heads.ClusterHead.set_input_stats>`);
- a probabilistic PCA density of x (Tipping and Bishop, 1999): the top ``r`` principal
  directions W with their variances λ, and the mean variance σ² of the other directions.
  A window's score is its squared Mahalanobis distance under that density,

      s(z) = Σ_i (w_iᵀx)² / λ_i + (‖x‖² − Σ_i (w_iᵀx)²) / σ²,

  which weighs both how far the window lies along the directions the training audio
  varies in and how much of it lies outside them (a sound unlike speech has energy where
  speech has none). ``r`` is the number of directions whose variance exceeds the mean
  variance (the Kaiser–Guttman rule on the standardised covariance), at most
  :data:`MAX_COMPONENTS` and at most n/20 so every variance is estimated from ≥ 20
  windows per direction;
- the upper tail of the training windows' scores: the score exceeded by a fraction t of
  them, for t from 1/2 down to 1/n on a geometric grid.

- the scale of the training audio's clusters, for the open-set clusterer
  (:mod:`audioclust.stream.openset`): the training windows grouped by the head's argmax
  (or, head-free, by ``--clusters auto``'s rule), each member's similarity to its
  cluster's centroid in the heads' unit space, and of those the 5 % quantile (the prior
  radius ρ₀: how close a window must be to belong) and the mean (m₀).

A window's **novelty** is 1 − t(s): the fraction of training windows that are more typical
than it (0.99: only 1 % of the training audio is this unusual), interpolated in log t
between grid points and extrapolated beyond the most unusual training window with the
tail's last slope. The window is **novel** when novelty > 1 − ``alpha``: by construction
about ``alpha`` (default :data:`ALPHA`, 1 %) of audio like the training data is flagged,
and anything the model never heard far more (measured in ``docs/benchmarks.md``).

The reference is stored in the ONNX metadata as one JSON string (arrays as base64
float32); this module needs numpy only, so the streaming service reads it without torch.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from audioclust.models.errors import DataError

__all__ = ["ALPHA", "MAX_COMPONENTS", "NoveltyReference", "floored_std"]

#: Fraction of training-like windows flagged novel (the quantile rule's level).
ALPHA = 0.01
#: Most principal directions kept (the reference stays a few KB: (2 + r)·d floats).
MAX_COMPONENTS = 16
#: Points of the tail grid between t = 1/2 and t = 1/n.
TAIL_POINTS = 48
FORMAT = "audioclust-novelty-reference"
VERSION = 1


def floored_std(std: np.ndarray) -> np.ndarray:
    """Per-dimension std floored at the median std of the live dimensions (std above 1e-3
    of the largest), as :meth:`ClusterHead.set_input_stats` does for the heads."""
    std = np.asarray(std, dtype=np.float64)
    live = std[std > 1e-3 * std.max()] if std.size else std
    if live.size == 0:
        return np.maximum(std, 1.0)
    # torch's median: the lower of the two middle values (a sort of a few hundred values is
    # quicker than np.partition, and the stream calls this once a window)
    floor = float(np.sort(live)[(live.size - 1) // 2])
    return np.maximum(std, max(floor, 1e-6))


def _encode(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["f32"], validate=True)
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).astype(np.float64)


@dataclass(frozen=True)
class NoveltyReference:
    """Standardisation, PPCA density and score tail of the training windows."""

    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,), floored
    components: np.ndarray  # (r, d), orthonormal rows
    variances: np.ndarray  # (r,)
    residual_variance: float
    tail_scores: np.ndarray  # (m,), increasing
    tail_fractions: np.ndarray  # (m,), decreasing: fraction of training windows above
    alpha: float = ALPHA
    windows: int = 0
    #: Prior radius ρ₀ and mean member similarity m₀ of the training windows' clusters.
    cluster_radius: float | None = None
    cluster_similarity: float | None = None
    #: How many clusters they were grouped in, and by what ("head" or "auto").
    clusters: int = 0
    cluster_source: str = ""

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        if self.std.shape != (d,) or self.components.ndim != 2 or \
                self.components.shape[1] != d or self.variances.shape != \
                (self.components.shape[0],):
            raise DataError("novelty reference arrays do not fit together")
        if not 0 < self.alpha < 1 or self.residual_variance <= 0 or (self.variances <= 0).any():
            raise DataError("novelty reference: alpha must be in (0, 1) and variances > 0")
        if self.tail_scores.shape != self.tail_fractions.shape or self.tail_scores.size < 2:
            raise DataError("novelty reference: tail grid of fewer than 2 points")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    # --- building ------------------------------------------------------------------------

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray | None = None,
            cluster_source: str = "", alpha: float = ALPHA,
            max_components: int = MAX_COMPONENTS) -> NoveltyReference:
        """The reference of ``embeddings`` (n, d): n windows of the training audio;
        ``labels`` (n,), their clusters (-1: left out), give the cluster scale."""
        z = np.asarray(embeddings, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] < 20:
            raise DataError(f"a novelty reference needs at least 20 windows, got {z.shape[0]}")
        if not np.isfinite(z).all():
            raise DataError("non-finite values in the reference embeddings")
        mean = z.mean(0)
        std = floored_std(z.std(0, ddof=1))  # as the heads: torch.std is unbiased
        x = (z - mean) / std
        n, d = x.shape
        # Eigen-decomposition of the covariance (d x d): cheap for embedding widths.
        evals, evecs = np.linalg.eigh(x.T @ x / n)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.maximum(evals[order], 0.0), evecs[:, order]
        limit = max(1, min(max_components, n // 20, d - 1))
        r = int(np.clip(np.sum(evals > evals.mean()), 1, limit))
        residual = float(evals[r:].mean()) if d > r else float(evals[-1])
        residual = max(residual, 1e-12)
        components = evecs[:, :r].T.copy()
        variances = np.maximum(evals[:r], residual)
        ref = cls(mean, std, components, variances, residual,
                  np.array([0.0, 1.0]), np.array([1.0, 0.5]), alpha, n)
        scores = np.sort(ref.score(z))
        fractions = np.geomspace(0.5, 1.0 / n, TAIL_POINTS)
        # the score exceeded by a fraction t of the windows: the (1 - t) quantile
        tail = np.quantile(scores, 1.0 - fractions, method="linear")
        tail = np.maximum.accumulate(tail)  # monotone even where quantiles tie
        radius = similarity = None
        k = 0
        if labels is not None:
            from audioclust.stream.openset import prior_from_data

            labels = np.asarray(labels)
            keep = labels >= 0
            _, dense = np.unique(labels[keep], return_inverse=True)
            k = int(dense.max()) + 1 if dense.size else 0
            radius, similarity = prior_from_data(ref.unit(z[keep]), dense, k)
        return cls(mean, std, components, variances, residual, tail, fractions, alpha, n,
                   radius, similarity, k, cluster_source if labels is not None else "")

    # --- scoring -------------------------------------------------------------------------

    def standardise(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, d) embeddings in the heads' standardised space (not yet unit length)."""
        return (np.atleast_2d(np.asarray(embeddings, dtype=np.float64)) - self.mean) / self.std

    def unit(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, d) standardised embeddings scaled to unit length: the heads' input space."""
        x = self.standardise(embeddings)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(B,) squared Mahalanobis distances under the PPCA density."""
        x = self.standardise(embeddings)
        t = x @ self.components.T
        inside = (t * t).sum(1)
        outside = np.maximum((x * x).sum(1) - inside, 0.0)
        return (t * t / self.variances).sum(1) + outside / self.residual_variance

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """(B,) in [0, 1]: the fraction of training windows more typical than each one."""
        s = self.score(embeddings)
        # the grid starts at the median (t = 1/2); from score 0 (t = 1) up to it, linear
        grid = np.concatenate([[0.0], self.tail_scores])
        logt = np.concatenate([[0.0], np.log(self.tail_fractions)])
        out = np.interp(s, grid, logt)
        beyond = s > grid[-1]
        if beyond.any():
            span = grid[-1] - grid[-2]
            slope = (logt[-1] - logt[-2]) / span if span > 0 else -1.0
            out[beyond] = logt[-1] + slope * (s[beyond] - grid[-1])
        return 1.0 - np.exp(out)

    def is_novel(self, novelty: np.ndarray | float) -> np.ndarray | bool:
        return np.asarray(novelty) > 1.0 - self.alpha

    # --- metadata ------------------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "format": FORMAT, "version": VERSION, "alpha": self.alpha, "windows": self.windows,
            "mean": _encode(self.mean), "std": _encode(self.std),
            "components": _encode(self.components), "variances": _encode(self.variances),
            "residual_variance": self.residual_variance,
            "tail_scores": [float(v) for v in self.tail_scores],
            "tail_fractions": [float(v) for v in self.tail_fractions],
            "cluster_radius": self.cluster_radius, "cluster_similarity": self.cluster_similarity,
            "clusters": self.clusters, "cluster_source": self.cluster_source,
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NoveltyReference:
        doc = json.loads(text)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise DataError(f"not a version-{VERSION} novelty reference")
        return cls(
            mean=_decode(doc["mean"]), std=_decode(doc["std"]),
            components=_decode(doc["components"]), variances=_decode(doc["variances"]),
            residual_variance=float(doc["residual_variance"]),
            tail_scores=np.asarray(doc["tail_scores"], dtype=np.float64),
            tail_fractions=np.asarray(doc["tail_fractions"], dtype=np.float64),
            alpha=float(doc["alpha"]), windows=int(doc["windows"]),
            cluster_radius=_optional_float(doc.get("cluster_radius")),
            cluster_similarity=_optional_float(doc.get("cluster_similarity")),
            clusters=int(doc.get("clusters", 0)), cluster_source=str(doc.get("cluster_source", "")),
        )


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


#: Most training windows a reference is built from (files are drawn in a fixed random
#: order until this many windows are in: the PPCA and the tail need thousands, not more).
MAX_WINDOWS = 20000


def reference_embeddings(model: Any, paths: list[Any], silence_dbfs: float | None = None,
                         max_windows: int = MAX_WINDOWS, progress: bool = False,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, d) embeddings, and (n, K) posteriors (None head-free), of the audio files
    ``paths`` as ``audioclust-stream`` sees them.

    ``model`` is a loaded :class:`~audioclust.models.runtime.OnnxModel`. The audio is cut
    by the stream's own windower at the model's window and hop, and presented two ways, as
    streams present it: each file as a stream of its own (its shorter last window
    included), and all files as one continuous stream, one after another in a random order
    with a pause of random length (0 to one window) between them, so that windows also
    hold parts of two sounds, and a sound among silence. Windows below the energy gate
    (``silence_dbfs``, default the stream's) are left out; the rest run through the
    exported graph itself, so the reference holds what the service would compute. Half of
    ``max_windows`` goes to each presentation. Unreadable files raise the audio loader's
    one-line error.
    """
    from tqdm import tqdm

    from audioclust.models.audio import load_audio
    from audioclust.stream.config import StreamConfig
    from audioclust.stream.gate import EnergyGate
    from audioclust.stream.window import Chunk, Window, Windower, recording_windows

    info = model.info
    gate = EnergyGate(StreamConfig().silence_dbfs if silence_dbfs is None else silence_dbfs)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    budget = max(1, max_windows // 2)
    zs: list[np.ndarray] = []
    ps: list[np.ndarray] = []

    def embed(windows: list[np.ndarray]) -> int:
        audible = [w for w in windows if not gate.silent(w)]
        if audible:
            z, p = model.embed(audible, max_batch=16)
            zs.append(z)
            if p is not None:
                ps.append(p)
        return len(audible)

    def cut(windower: Windower, name: str, audio: np.ndarray) -> list[np.ndarray]:
        items, _ = windower.push(Chunk(name, audio))
        return [w.samples for w in items if isinstance(w, Window)]

    alone = joined = 0
    continuous = Windower(info.window_samples, info.hop_samples, info.sample_rate)
    with tqdm(total=len(paths), desc="reference", unit="file", disable=not progress) as bar:
        for i in order:
            audio = load_audio(paths[i], info.sample_rate)
            if alone < budget:
                alone += embed(recording_windows(audio, info.window_samples,
                                                 info.hop_samples, info.sample_rate,
                                                 info.min_samples))
            if joined < budget:
                pause = np.zeros(int(rng.integers(0, info.window_samples + 1)), np.float32)
                joined += embed(cut(continuous, "joined", np.concatenate([pause, audio])))
            bar.update(1)
            if alone >= budget and joined >= budget:
                break
    if not zs:
        raise DataError("no audible window in the reference audio (all below the energy gate "
                        "or shorter than the model's minimum)")
    z = np.concatenate(zs)
    return z, (np.concatenate(ps) if ps else None)
