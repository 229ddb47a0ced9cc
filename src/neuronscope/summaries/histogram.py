"""Per-neuron activation histograms on fixed per-site bins, and quantiles from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch, add_counts, as_batch, compact_counts

#: fewest neurons per bincount call (a 64 x (n_bins + 2) int64 table stays in cache).
_BLOCK = 64


def calibration_edges(calibration: np.ndarray, n_bins: int, margin: float = 0.5) -> np.ndarray:
    """Site-wide bin edges from a calibration batch: ``n_bins`` equal bins over
    ``[lo - margin*span, hi + margin*span]`` where ``lo, hi`` are the batch's min and
    max and ``span = hi - lo`` (``span = 1`` if the batch is constant or empty)."""
    if n_bins < 1:
        raise NeuronscopeError("n_bins must be >= 1")
    cal = np.asarray(calibration, dtype=np.float64)
    if cal.size:
        lo, hi = float(cal.min()), float(cal.max())
    else:
        lo, hi = 0.0, 0.0
    span = hi - lo if hi > lo else 1.0
    return np.linspace(lo - margin * span, hi + margin * span, n_bins + 1)


class Histogram:
    """Counts per neuron in ``n_bins`` equal bins ``[e_j, e_{j+1})`` shared by the site,
    plus underflow (``a < e_0``) and overflow (``a >= e_n``) per neuron — the
    per-neuron activation distributions ("Visual DNA", Ramtoula et al.).

    Only samples with ``sample % stride == 0`` are counted (``stride=1``: all); the
    choice depends on the global sample id only, so merge stays exact. One pass per
    batch: bin index ``floor((a - e_0) / w)`` in float32 then ``np.bincount`` over
    ``unit * (n_bins + 2) + bin``, a block of neurons per call (float32 rounding may put a value within ~1e-7
    relative of an edge into the neighbouring bin). Memory: ``units * (n_bins + 2)`` int32
    counts, widened to int64 once more than ``2**31 - 1`` samples were counted (never wrap).
    """

    kind = "histogram"

    def __init__(self, units: int, edges: Sequence[float] | np.ndarray, stride: int = 1) -> None:
        self.units = int(units)
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or len(self.edges) < 2 or not np.all(np.diff(self.edges) > 0):
            raise NeuronscopeError("histogram edges must be increasing, at least 2 of them")
        widths = np.diff(self.edges)
        if not np.allclose(widths, widths[0], rtol=1e-9, atol=0):
            raise NeuronscopeError("histogram edges must be equally spaced")
        self.stride = int(stride)
        if self.stride < 1:
            raise NeuronscopeError("histogram stride must be >= 1")
        self.n_bins = len(self.edges) - 1
        # bucket 0 = underflow, 1..n_bins = bins, n_bins + 1 = overflow
        self.counts = np.zeros((self.units, self.n_bins + 2), dtype=np.int32)

    @property
    def counted(self) -> int:
        """Samples counted so far (every neuron counts each one once: ``Σ_j counts[0, j]``)."""
        return int(self.counts[0].sum(dtype=np.int64)) if self.units else 0

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a float32 ``(n, units)`` batch."""
        b = as_batch(acts, samples, self.units)
        a = b.acts
        if self.stride > 1:
            a = a[b.coord("sample") % self.stride == 0]
        if a.shape[0] == 0:
            return
        scale = np.float32(self.n_bins / (self.edges[-1] - self.edges[0]))
        shift = np.float32(1.0 - self.edges[0] * float(scale))
        nb2 = self.n_bins + 2
        # ~256k values per bincount call, at least 64 neurons (table in cache) per call
        block = int(min(max(_BLOCK, (1 << 18) // a.shape[0]), 512))
        offsets = np.arange(block, dtype=np.intp) * nb2
        counts = np.zeros_like(self.counts, dtype=np.int64)
        # column blocks keep bincount's table in cache (~1.5x faster than one call)
        for j in range(0, self.units, block):
            t = np.multiply(a[:, j : j + block], scale)
            t += shift
            np.clip(t, 0, self.n_bins + 1, out=t)
            idx = t.astype(np.intp)
            width = idx.shape[1]
            idx += offsets[:width]
            counts[j : j + width] = np.bincount(idx.ravel(), minlength=width * nb2).reshape(width, nb2)
        self.fold(counts, a.shape[0])

    def fold(self, counts: np.ndarray, n: int) -> None:
        """Add a batch's bucket counts ``(units, n_bins + 2)`` of ``n`` counted samples."""
        self.counts = add_counts(self.counts, counts, self.counted + n)

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples (same edges and stride)."""
        if (
            other.units != self.units
            or other.stride != self.stride
            or not np.array_equal(other.edges, self.edges)
        ):
            raise NeuronscopeError("cannot merge histograms with different edges, stride or units")
        self.counts = add_counts(self.counts, other.counts, self.counted + other.counted)
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``edges`` (n_bins+1,), ``counts`` (units, n_bins) int64, ``under``/``over`` (units,)."""
        return {
            "edges": self.edges.copy(),
            "counts": self.counts[:, 1:-1].astype(np.int64),
            "under": self.counts[:, 0].astype(np.int64),
            "over": self.counts[:, -1].astype(np.int64),
        }

    def quantiles(
        self,
        q: Sequence[float] | np.ndarray,
        vmin: np.ndarray | None = None,
        vmax: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Quantiles per neuron from the histogram, with a guaranteed error bound.

        For rank ``r = max(ceil(q N), 1)`` (``N`` counted samples) the bucket holding
        the ``r``-th smallest value is located exactly from the cumulative counts and
        the value is interpolated linearly inside it. Returns ``(values, bound)``,
        both ``(len(q), units)``: ``|value - x_(r)| <= bound`` = the bucket's width,
        i.e. the bin width ``w`` for interior bins. Under/overflow buckets span
        ``[vmin, e_0]`` / ``[e_n, vmax]``; pass the exact min/max from ``Moments``
        (``SiteSummaries.quantiles`` does) — without them the bound there is ``inf``.
        Results are clamped to ``[vmin, vmax]``, and ``q = 0`` / ``q = 1`` return them
        exactly when given. NaN for neurons with no samples.
        """
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if np.any((qs < 0) | (qs > 1)):
            raise NeuronscopeError("quantile levels must lie in [0, 1]")
        e = self.edges
        lo_b = np.concatenate([[e[0]], e])  # lower edge of each bucket (under uses vmin)
        hi_b = np.concatenate([e, [e[-1]]])
        lo_b = np.broadcast_to(lo_b, self.counts.shape).copy()
        hi_b = np.broadcast_to(hi_b, self.counts.shape).copy()
        inf_lo = np.zeros(self.units, dtype=bool) if vmin is not None else np.ones(self.units, bool)
        inf_hi = np.zeros(self.units, dtype=bool) if vmax is not None else np.ones(self.units, bool)
        if vmin is not None:
            lo_b[:, 0] = np.minimum(np.asarray(vmin, dtype=np.float64), e[0])
        if vmax is not None:
            hi_b[:, -1] = np.maximum(np.asarray(vmax, dtype=np.float64), e[-1])
        cum = np.cumsum(self.counts, axis=1)
        total = cum[:, -1]
        rows = np.arange(self.units)
        values = np.full((len(qs), self.units), np.nan)
        bound = np.full((len(qs), self.units), np.nan)
        for i, level in enumerate(qs):
            r = np.maximum(np.ceil(level * total), 1)
            bucket = np.minimum((cum < r[:, None]).sum(axis=1), self.n_bins + 1)
            before = np.where(bucket > 0, cum[rows, np.maximum(bucket - 1, 0)], 0)
            cnt = np.maximum(self.counts[rows, bucket], 1)
            lo, hi = lo_b[rows, bucket], hi_b[rows, bucket]
            val = lo + (r - before) / cnt * (hi - lo)
            if vmin is not None:
                val = np.asarray(vmin, dtype=np.float64) if level == 0 else np.maximum(val, vmin)
            if vmax is not None:
                val = np.asarray(vmax, dtype=np.float64) if level == 1 else np.minimum(val, vmax)
            err = hi - lo
            err = np.where((bucket == 0) & inf_lo, np.inf, err)
            err = np.where((bucket == self.n_bins + 1) & inf_hi, np.inf, err)
            ok = total > 0
            values[i, ok] = val[ok]
            bound[i, ok] = err[ok]
        return values, bound

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``edges``, ``counts`` (units, n_bins+2; under first, over last)."""
        attrs = {"kind": self.kind, "units": self.units, "stride": self.stride}
        return {"edges": self.edges, "counts": self.counts}, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), np.asarray(arrays["edges"]), int(attrs["stride"]))
        self.counts = compact_counts(arrays["counts"])
        return self
