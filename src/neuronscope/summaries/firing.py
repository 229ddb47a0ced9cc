"""Firing counts: per neuron (a > 0 and |a| > t) and per token (share of the site active).

Firing per group of samples (per label value for LAPE, per position) is
:class:`~neuronscope.summaries.groups.GroupFiring`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch, add_counts, as_batch, col_count, compact_counts


class Firing:
    """How often each neuron is active, and how much of the site is active per token.

    * ``pos_count[u] = #{samples: a_u > 0}`` — activation as "non-zero after ReLU"
      (Voita et al., *Neurons in LLMs: Dead, N-gram, Positional*; Li et al., *The
      Lazy Neuron Phenomenon*).
    * ``abs_count[j, u] = #{samples: |a_u| > t_j}`` — the magnitude-threshold
      definition of activation for non-ReLU nets (Zhang et al., *ReLU² Wins*).
    * per token ``f = #{u: a_u > 0} / units``: kept as ``active_frac_sum = sum f``
      and ``tokens``, so the mean share of active neurons per token (the Lazy-neuron
      figure) is ``active_frac_sum / tokens``; plus ``frac_hist``, a histogram of
      ``f`` over ``frac_bins`` equal bins of [0, 1] (``f = 1`` in the last bin).

    All counts are integers, so merge is exact in any order. Counts are int32 while the
    number of tokens stays below ``2**31`` and are widened to int64 past it (never wrap).
    """

    kind = "firing"

    def __init__(self, units: int, thresholds: Sequence[float] = (), frac_bins: int = 20) -> None:
        self.units = int(units)
        self.thresholds = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
        if np.any(self.thresholds < 0):
            raise NeuronscopeError("magnitude thresholds must be >= 0 (they compare |a| > t)")
        self.frac_bins = int(frac_bins)
        if self.frac_bins < 1:
            raise NeuronscopeError("frac_bins must be >= 1")
        self.pos_count = np.zeros(self.units, dtype=np.int32)
        self.abs_count = np.zeros((len(self.thresholds), self.units), dtype=np.int32)
        self.active_frac_sum = 0.0
        self.tokens = 0
        self.frac_hist = np.zeros(self.frac_bins, dtype=np.int64)

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a float32 ``(n, units)`` batch."""
        b = as_batch(acts, samples, self.units)
        if b.n == 0:
            return
        absa = b.abs
        abs_count = np.zeros((len(self.thresholds), self.units), dtype=np.int64)
        for j, t in enumerate(self.thresholds.astype(np.float32)):
            abs_count[j] = col_count(absa > t)
        self.fold(b.n, col_count(b.pos_mask), abs_count, b.pos_row_count)

    def fold(self, n: int, pos_count: np.ndarray, abs_count: np.ndarray, per_row: np.ndarray) -> None:
        """Fold in a batch of ``n`` rows given ``#{a_u > 0}`` and ``#{|a_u| > t_j}`` per neuron
        and ``#{u: a_u > 0}`` per row (``per_row``, int64 ``(n,)``)."""
        tokens = self.tokens + n
        self.pos_count = add_counts(self.pos_count, pos_count, tokens)
        self.abs_count = add_counts(self.abs_count, abs_count, tokens)
        self.active_frac_sum += float(per_row.sum()) / self.units
        self.tokens = tokens
        bins = np.minimum(per_row * self.frac_bins // self.units, self.frac_bins - 1)
        self.frac_hist += np.bincount(bins, minlength=self.frac_bins)

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples."""
        if other.units != self.units or not np.array_equal(other.thresholds, self.thresholds):
            raise NeuronscopeError("cannot merge firing counts with different units or thresholds")
        if other.frac_bins != self.frac_bins:
            raise NeuronscopeError("cannot merge firing counts with different frac_bins")
        tokens = self.tokens + other.tokens
        self.pos_count = add_counts(self.pos_count, other.pos_count, tokens)
        self.abs_count = add_counts(self.abs_count, other.abs_count, tokens)
        self.active_frac_sum += other.active_frac_sum
        self.tokens = tokens
        self.frac_hist += other.frac_hist
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``thresholds`` (T,), ``pos_count`` (units,), ``abs_count`` (T, units),
        ``active_frac_sum`` (), ``tokens`` (), ``frac_hist`` (frac_bins,), ``frac_edges``."""
        return {
            "thresholds": self.thresholds.copy(),
            "pos_count": self.pos_count.astype(np.int64),
            "abs_count": self.abs_count.astype(np.int64),
            "active_frac_sum": np.float64(self.active_frac_sum),
            "tokens": np.int64(self.tokens),
            "frac_hist": self.frac_hist.copy(),
            "frac_edges": np.linspace(0.0, 1.0, self.frac_bins + 1),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Count arrays (int32 while they fit) plus ``active_frac_sum``/``tokens`` as (1,)
        arrays; attrs hold config."""
        arrays = {
            "pos_count": self.pos_count,
            "abs_count": self.abs_count,
            "active_frac_sum": np.array([self.active_frac_sum], dtype=np.float64),
            "tokens": np.array([self.tokens], dtype=np.int64),
            "frac_hist": self.frac_hist,
        }
        attrs = {
            "kind": self.kind,
            "units": self.units,
            "thresholds": self.thresholds.tolist(),
            "frac_bins": self.frac_bins,
        }
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), attrs["thresholds"], int(attrs["frac_bins"]))
        self.active_frac_sum = float(np.asarray(arrays["active_frac_sum"]).reshape(-1)[0])
        self.tokens = int(np.asarray(arrays["tokens"]).reshape(-1)[0])
        self.pos_count = compact_counts(arrays["pos_count"], self.tokens)
        self.abs_count = compact_counts(arrays["abs_count"], self.tokens).reshape(
            len(self.thresholds), self.units
        )
        self.frac_hist = np.array(arrays["frac_hist"], dtype=np.int64)
        return self
