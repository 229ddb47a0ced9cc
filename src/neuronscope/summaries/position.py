"""Firing counts per position, for positional neurons."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples, register
from neuronscope.summaries.kernels import Batch, as_batch, group_sum


@register
class PositionFiring:
    """Per-position firing counts: ``count[p, u] = #{samples at position p: a_u > 0}``
    and ``n[p] = #{samples at position p}``; positions ``>= max_pos`` share the last
    bucket ``max_pos - 1``.

    The firing rate by position ``count[p] / n[p]`` is what identifies positional
    neurons (Voita et al., *Neurons in LLMs: Dead, N-gram, Positional*); see
    ``analyses.characterize`` for the positional score. Integer counts: exact merge.
    """

    kind = "position"

    def __init__(self, units: int, max_pos: int) -> None:
        self.units = int(units)
        self.max_pos = int(max_pos)
        if self.max_pos < 1:
            raise NeuronscopeError("max_pos must be >= 1")
        self.count = np.zeros((self.max_pos, self.units), dtype=np.int64)
        self.n = np.zeros(self.max_pos, dtype=np.int64)

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a batch; needs ``samples['pos']``."""
        b = as_batch(acts, samples, self.units)
        pos = b.coord("pos")
        if pos is None:
            raise NeuronscopeError(
                "samples lack 'pos'; set SummaryConfig(max_pos=0) for sources without positions"
            )
        if b.n == 0:
            return
        if np.any(pos < 0):
            raise NeuronscopeError("positions must be >= 0")
        bucket = np.minimum(pos, self.max_pos - 1)
        groups, sums = group_sum(b.pos_mask_f32, bucket, self.max_pos)
        self.count[groups] += sums.astype(np.int64)
        self.n += np.bincount(bucket, minlength=self.max_pos)

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples."""
        if other.max_pos != self.max_pos or other.units != self.units:
            raise NeuronscopeError("cannot merge position counts with different max_pos or units")
        self.count += other.count
        self.n += other.n
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``count`` (max_pos, units) int64 and ``n`` (max_pos,) int64."""
        return {"count": self.count.copy(), "n": self.n.copy()}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``count``, ``n`` up to the last position seen (trailing empty positions
        are not stored); attrs ``units``, ``max_pos``."""
        seen = np.flatnonzero(self.n)
        last = int(seen[-1]) + 1 if len(seen) else 0
        attrs = {"kind": self.kind, "units": self.units, "max_pos": self.max_pos}
        return {"count": self.count[:last], "n": self.n[:last]}, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), int(attrs["max_pos"]))
        n = np.asarray(arrays["n"], dtype=np.int64)
        self.count[: len(n)] = np.asarray(arrays["count"], dtype=np.int64).reshape(len(n), self.units)
        self.n[: len(n)] = n
        return self
