"""Streaming co-firing counts: the binary-activity Gram ``B = 1[a > t]ᵀ 1[a > t]`` of a site.

:class:`CoFiring` is :class:`~neuronscope.summaries.crossprod.CrossProducts` applied to the 0/1
firing indicators ``m_u = 1[a_u > t]`` (or ``1[|a_u| > t]`` with ``absolute=True``, the
magnitude definition of *ReLU² Wins*), with the offsets pinned to zero. Then every float32 GEMM
block (at most 4,096 rows of 0/1 values) sums integers below 2²⁴ and is exact, and the float64
accumulators add integers exactly below 2⁵³, so the counts

    B_ij = #{samples: m_i = 1 and m_j = 1}    (B_ii = firing count of neuron i)

are exact integers whatever the batching, and ``merge`` is exact in any order. Memory is
``units²`` float64 (the Gram) plus one block buffer; the activation matrix is never held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.crossprod import CrossProducts
from neuronscope.summaries.kernels import Batch


class CoFiring:
    """Mergeable co-firing counts of the neurons of one site.

    ``update(acts, samples)`` folds in a float32 ``(n, units)`` batch; ``result()`` gives
    ``n`` (samples), ``count`` (units,) firing counts and ``cofire`` (units, units) int64
    co-firing counts ``B``. ``threshold`` t and ``absolute`` define firing: ``a > t`` (default,
    t = 0: "non-zero after the nonlinearity") or ``|a| > t``.
    """

    kind: ClassVar[str] = "cofiring"

    def __init__(self, units: int, threshold: float = 0.0, absolute: bool = False,
                 block_rows: int = 4096) -> None:
        if units < 1:
            raise NeuronscopeError("CoFiring needs at least one neuron")
        if absolute and threshold < 0:
            raise NeuronscopeError("a magnitude threshold |a| > t needs t >= 0")
        if not 1 <= block_rows < (1 << 24):
            raise NeuronscopeError("block_rows must be in [1, 2**24) so float32 block sums stay exact")
        self.units = int(units)
        self.threshold = float(threshold)
        self.absolute = bool(absolute)
        self.cp = CrossProducts(self.units, 1, gram="x", block_rows=int(block_rows))
        self._zero_offsets()
        self._ones: np.ndarray | None = None

    def _zero_offsets(self) -> None:
        # zero offsets: the accumulators hold raw integer sums (no shift, no cancellation)
        self.cp.shift_x = np.zeros(self.units, dtype=np.float32)
        self.cp.shift_y = np.zeros(1, dtype=np.float32)

    def fired(self, acts: np.ndarray) -> np.ndarray:
        """The 0/1 float32 firing indicators of a batch (``a > t`` or ``|a| > t``)."""
        a = np.asarray(acts)
        mask = (np.abs(a) if self.absolute else a) > np.float32(self.threshold)
        return mask.view(np.uint8).astype(np.float32)

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a float32 ``(n, units)`` batch (``samples`` is not needed)."""
        a = acts.acts if isinstance(acts, Batch) else np.asarray(acts)
        if a.ndim != 2 or a.shape[1] != self.units:
            raise NeuronscopeError(f"CoFiring({self.units}) got a batch of shape {a.shape}")
        if len(a) == 0:
            return
        m = self.fired(a)
        if self._ones is None or len(self._ones) < len(m):
            self._ones = np.ones((len(m), 1), dtype=np.float32)
        self.cp.update_pair(m, self._ones[: len(m)])

    def update_fired(self, fired: np.ndarray) -> None:
        """Fold in precomputed 0/1 indicators ``(n, units)`` (bool or 0/1 numbers)."""
        m = np.asarray(fired)
        if m.ndim != 2 or m.shape[1] != self.units:
            raise NeuronscopeError(f"CoFiring({self.units}) got indicators of shape {m.shape}")
        m = (m != 0).view(np.uint8).astype(np.float32) if m.dtype != np.float32 else m
        if self._ones is None or len(self._ones) < len(m):
            self._ones = np.ones((len(m), 1), dtype=np.float32)
        self.cp.update_pair(m, self._ones[: len(m)])

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples (exact, any order)."""
        if (other.units, other.threshold, other.absolute) != (self.units, self.threshold, self.absolute):
            raise NeuronscopeError("cannot merge co-firing counts with different units or firing definitions")
        self.cp.merge(other.cp)
        return self

    @property
    def n(self) -> int:
        """Samples seen."""
        self.cp.flush()
        return int(self.cp.n)

    def gram(self) -> np.ndarray:
        """``B`` as float64 (exact integers; the summary's own array, do not modify)."""
        self.cp.flush()
        return self.cp.gxx

    def counts(self) -> np.ndarray:
        """Firing count per neuron, int64 (``B_ii``)."""
        self.cp.flush()
        return np.rint(self.cp.sx).astype(np.int64)

    def result(self) -> dict[str, np.ndarray]:
        """``n`` (), ``count`` (units,) and ``cofire`` (units, units), all int64."""
        self.cp.flush()
        return {
            "n": np.array(self.cp.n, dtype=np.int64),
            "count": self.counts(),
            "cofire": np.rint(self.cp.gxx).astype(np.int64),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The counts and the configuration (no offsets: they are zero)."""
        self.cp.flush()
        arrays = {"count": self.cp.sx, "cofire": self.cp.gxx}
        attrs = {"kind": self.kind, "units": self.units, "threshold": self.threshold,
                 "absolute": self.absolute, "n": int(self.cp.n), "block_rows": self.cp.block_rows}
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), float(attrs["threshold"]), bool(attrs["absolute"]),
                   int(attrs.get("block_rows", 4096)))
        n = int(attrs["n"])
        self.cp.n = n
        self.cp.sx = np.array(arrays["count"], dtype=np.float64).reshape(self.units)
        self.cp.sxx = self.cp.sx.copy()
        self.cp.sy = np.array([float(n)])
        self.cp.syy = np.array([float(n)])
        self.cp.sxy = self.cp.sx[:, None].copy()
        self.cp.gxx = np.array(arrays["cofire"], dtype=np.float64).reshape(self.units, self.units)
        return self
