"""Energy gate: windows too quiet to cluster are reported as silent, not run through the model."""

from __future__ import annotations

import numpy as np

__all__ = ["EnergyGate", "rms_dbfs"]

#: Reported level of an all-zero window (log of 0 is -inf, which JSON cannot carry).
FLOOR_DBFS = -200.0


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (a ±1.0 square wave is 0 dBFS)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return FLOOR_DBFS
    rms = float(np.sqrt(np.mean(x * x)))
    return max(FLOOR_DBFS, float(20.0 * np.log10(rms))) if rms > 0 else FLOOR_DBFS


class EnergyGate:
    """``silent(x)`` (and :meth:`measure`'s second value) is True when the window's RMS
    level is below ``threshold_dbfs``.

    A fixed threshold rather than an adaptive one: the output must not depend on what the
    stream played before (replays through any source give the same result).
    """

    def __init__(self, threshold_dbfs: float = -50.0):
        self.threshold_dbfs = threshold_dbfs

    def measure(self, samples: np.ndarray) -> tuple[float, bool]:
        """The window's RMS level (dBFS) and whether it is silent."""
        level = rms_dbfs(samples)
        return level, bool(level < self.threshold_dbfs)

    def silent(self, samples: np.ndarray) -> bool:
        return self.measure(samples)[1]
