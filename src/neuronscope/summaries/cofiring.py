"""Streaming co-firing counts: the binary-activity Gram ``B = 1[a > t]ᵀ 1[a > t]`` of a site.

:class:`CoFiring` streams the 0/1 firing indicators ``m_u = 1[a_u > t]`` (or ``1[|a_u| > t]``
with ``absolute=True``, the magnitude definition of *ReLU² Wins*) through the blocked-GEMM
scheme of :class:`~neuronscope.summaries.crossprod.CrossProducts` — rows buffered into blocks
of ``block_rows`` so every GEMM is large — with two changes that exact 0/1 data allow: no
offsets, and the block products accumulate **in place** (BLAS ``C += AᵀA``, β = 1) into a
float32 Gram. Every partial sum is then an integer below the number of rows accumulated, and
float32 holds every integer below 2²⁴ exactly, so the float32 Gram is exact while it has seen
fewer than 2²⁴ rows; before that bound it is moved into an int64 Gram and restarted. The counts

    B_ij = #{samples: m_i = 1 and m_j = 1}    (B_ii = firing count of neuron i)

are exact integers whatever the batching, and ``merge`` is exact in any order. Memory:
``units²`` float32 (plus ``units²`` int64 only past 2²⁴ samples or after a merge of large
parts) and one block; the activation matrix is never held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch

#: rows a float32 Gram may accumulate while staying exact (integers below 2**24)
EXACT_ROWS = (1 << 24) - 1


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
        if not 1 <= block_rows <= EXACT_ROWS:
            raise NeuronscopeError("block_rows must be in [1, 2**24) so float32 block sums stay exact")
        self.units = int(units)
        self.threshold = float(threshold)
        self.absolute = bool(absolute)
        self.block_rows = int(block_rows)
        self._n = 0  # rows folded into the Grams
        self._acc32 = np.zeros((self.units, self.units), dtype=np.float32)
        self._acc_rows = 0  # rows in _acc32
        self._base: np.ndarray | None = None  # int64 Gram of rows moved out of _acc32
        self._count = np.zeros(self.units, dtype=np.int64)
        self._buf: np.ndarray | None = None
        self._buf_n = 0

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
        if len(a):
            self.update_fired(self.fired(a))

    def update_fired(self, fired: np.ndarray) -> None:
        """Fold in precomputed 0/1 indicators ``(n, units)`` (bool or 0/1 numbers)."""
        m = np.asarray(fired)
        if m.ndim != 2 or m.shape[1] != self.units:
            raise NeuronscopeError(f"CoFiring({self.units}) got indicators of shape {m.shape}")
        if self._buf is None:
            self._buf = np.empty((self.block_rows, self.units), dtype=np.float32)
        r0 = 0
        while r0 < len(m):
            k = min(len(m) - r0, self.block_rows - self._buf_n)
            np.not_equal(m[r0 : r0 + k], 0, out=self._buf[self._buf_n : self._buf_n + k], casting="unsafe")
            self._buf_n += k
            r0 += k
            if self._buf_n == self.block_rows:
                self.flush()

    def flush(self) -> None:
        """Fold buffered rows into the Gram (done by every reader)."""
        if self._buf_n == 0:
            return
        import torch

        block = self._buf[: self._buf_n]
        if self._acc_rows + self._buf_n > EXACT_ROWS:
            self._spill()
        t = torch.from_numpy(block)
        torch.from_numpy(self._acc32).addmm_(t.T, t)  # C += BᵀB in place, exact integers
        self._count += np.rint(block.sum(axis=0, dtype=np.float64)).astype(np.int64)
        self._acc_rows += self._buf_n
        self._n += self._buf_n
        self._buf_n = 0

    def _spill(self) -> None:
        """Move the float32 Gram into the int64 one (before it could stop being exact)."""
        if self._base is None:
            self._base = np.zeros((self.units, self.units), dtype=np.int64)
        self._base += np.rint(self._acc32).astype(np.int64)
        self._acc32[...] = 0.0
        self._acc_rows = 0

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples (exact, any order)."""
        if (other.units, other.threshold, other.absolute) != (self.units, self.threshold, self.absolute):
            raise NeuronscopeError("cannot merge co-firing counts with different units or firing definitions")
        self.flush()
        other.flush()
        if self._acc_rows + other._acc_rows <= EXACT_ROWS:
            self._acc32 += other._acc32
            self._acc_rows += other._acc_rows
        else:
            self._spill()
            self._base += np.rint(other._acc32).astype(np.int64)
        if other._base is not None:
            if self._base is None:
                self._base = np.zeros((self.units, self.units), dtype=np.int64)
            self._base += other._base
        self._count += other._count
        self._n += other._n
        return self

    @property
    def n(self) -> int:
        """Samples seen."""
        self.flush()
        return self._n

    def gram(self) -> np.ndarray:
        """``B`` as float64 (exact integers)."""
        self.flush()
        g = self._acc32.astype(np.float64)
        if self._base is not None:
            g += self._base
        return g

    def counts(self) -> np.ndarray:
        """Firing count per neuron, int64 (``B_ii``)."""
        self.flush()
        return self._count.copy()

    def cofire(self) -> np.ndarray:
        """``B`` as int64."""
        self.flush()
        g = np.rint(self._acc32).astype(np.int64)
        if self._base is not None:
            g += self._base
        return g

    def result(self) -> dict[str, np.ndarray]:
        """``n`` (), ``count`` (units,) and ``cofire`` (units, units), all int64."""
        return {"n": np.array(self.n, dtype=np.int64), "count": self.counts(), "cofire": self.cofire()}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The counts (int64) and the configuration."""
        arrays = {"count": self.counts(), "cofire": self.cofire()}
        attrs = {"kind": self.kind, "units": self.units, "threshold": self.threshold,
                 "absolute": self.absolute, "n": self._n, "block_rows": self.block_rows}
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), float(attrs["threshold"]), bool(attrs["absolute"]),
                   int(attrs.get("block_rows", 4096)))
        self._n = int(attrs["n"])
        self._count = np.array(arrays["count"], dtype=np.int64).reshape(self.units)
        g = np.asarray(arrays["cofire"]).reshape(self.units, self.units)
        if self._n <= EXACT_ROWS:
            self._acc32 = g.astype(np.float32)
            self._acc_rows = self._n
        else:
            self._base = g.astype(np.int64)
        return self
