"""Per-neuron moments: count, mean, variance, min, max, mean |a|."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch, as_batch


class Moments:
    """Streaming count, mean, variance (ddof=0), min, max and mean |a| per neuron.

    A batch contributes its own count ``n_b``, mean ``m_b`` and sum of squared
    deviations ``M2_b = sum a^2 - n_b m_b^2`` (float64 accumulation of float32 inputs;
    the cancellation costs ~``sqrt(n_b) * 1e-16 * (mean/std)^2`` relative, below
    float32 resolution while ``|mean|/std < 1e3``); two summaries combine with Chan, Golub & LeVeque's parallel update::

        n = n_a + n_b;  d = m_b - m_a
        m = m_a + d n_b / n;  M2 = M2_a + M2_b + d^2 n_a n_b / n

    ``var = M2 / n`` (population variance); merge order changes the result only by
    float64 rounding. min/max are exact; ``mean_abs = sum |a| / n``.
    """

    kind = "moments"

    def __init__(self, units: int) -> None:
        self.units = int(units)
        self.count = 0
        self.mean = np.zeros(self.units, dtype=np.float64)
        self.m2 = np.zeros(self.units, dtype=np.float64)
        self.min = np.full(self.units, np.inf, dtype=np.float32)
        self.max = np.full(self.units, -np.inf, dtype=np.float32)
        self.sum_abs = np.zeros(self.units, dtype=np.float64)

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a float32 ``(n, units)`` batch."""
        b = as_batch(acts, samples, self.units)
        if b.n == 0:
            return
        a = b.acts
        self.fold(
            b.n,
            a.sum(axis=0, dtype=np.float64),
            np.einsum("ij,ij->j", a, a, dtype=np.float64),
            b.abs.sum(axis=0, dtype=np.float64),
            a.min(axis=0),
            a.max(axis=0),
        )

    def fold(
        self,
        n: int,
        sum_b: np.ndarray,
        sumsq_b: np.ndarray,
        sum_abs_b: np.ndarray,
        min_b: np.ndarray,
        max_b: np.ndarray,
    ) -> None:
        """Fold in a batch of ``n`` rows given its per-neuron ``Σa``, ``Σa²``, ``Σ|a|`` (float64),
        min and max: ``m_b = Σa / n``, ``M2_b = max(Σa² - Σa m_b, 0)``, then the parallel update."""
        if n == 0:
            return
        mean_b = sum_b / n
        # M2_b = sum a^2 - n mean_b^2 in float64 (one pass fewer than a shifted sum)
        m2_b = sumsq_b - sum_b * mean_b
        np.maximum(m2_b, 0.0, out=m2_b)
        self._combine(n, mean_b, m2_b)
        np.minimum(self.min, min_b, out=self.min)
        np.maximum(self.max, max_b, out=self.max)
        self.sum_abs += sum_abs_b

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        if n_a == 0:
            self.mean = mean_b.astype(np.float64, copy=True)
            self.m2 = m2_b.astype(np.float64, copy=True)
        else:
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / n)
            self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    def merge(self, other: Self) -> Self:
        """Fold in a summary of disjoint samples (Chan et al. parallel update)."""
        if other.units != self.units:
            raise NeuronscopeError(f"cannot merge moments of {other.units} and {self.units} units")
        if other.count:
            self._combine(other.count, other.mean, other.m2)
            np.minimum(self.min, other.min, out=self.min)
            np.maximum(self.max, other.max, out=self.max)
            self.sum_abs += other.sum_abs
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``count`` (units,) int64, ``mean``, ``var`` (ddof=0), ``std``, ``min``, ``max``,
        ``mean_abs`` (float64; NaN while empty)."""
        n = self.count
        nan = np.full(self.units, np.nan)
        return {
            "count": np.full(self.units, n, dtype=np.int64),
            "mean": self.mean.copy() if n else nan,
            "var": self.m2 / n if n else nan.copy(),
            "std": np.sqrt(self.m2 / n) if n else nan.copy(),
            "min": self.min.astype(np.float64) if n else nan.copy(),
            "max": self.max.astype(np.float64) if n else nan.copy(),
            "mean_abs": self.sum_abs / n if n else nan.copy(),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``count`` (1,), ``mean``, ``m2``, ``min``, ``max``, ``sum_abs``; attrs ``units``."""
        arrays = {
            "count": np.array([self.count], dtype=np.int64),
            "mean": self.mean,
            "m2": self.m2,
            "min": self.min,
            "max": self.max,
            "sum_abs": self.sum_abs,
        }
        return arrays, {"kind": self.kind, "units": self.units}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]))
        self.count = int(np.asarray(arrays["count"]).reshape(-1)[0])
        self.mean = np.array(arrays["mean"], dtype=np.float64)
        self.m2 = np.array(arrays["m2"], dtype=np.float64)
        self.min = np.array(arrays["min"], dtype=np.float32)
        self.max = np.array(arrays["max"], dtype=np.float32)
        self.sum_abs = np.array(arrays["sum_abs"], dtype=np.float64)
        return self
