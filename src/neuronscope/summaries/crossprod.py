"""Streaming cross-products of two populations seen on the same samples.

``CrossProducts`` accumulates ``n``, ``Σx``, ``Σy``, ``Σx²``, ``Σy²`` and ``ΣxᵀY`` (and, with
``gram=True``, ``ΣxᵀX`` and ``ΣyᵀY``; with ``gram="x"`` only ``ΣxᵀX``) batch by batch, so the
full neuron × neuron Pearson correlation between two populations (two models recorded in
lockstep, or a model and a brain) is available without storing activations:

    r_ij = (Σx_i y_j − Σx_i Σy_j / n) / sqrt((Σx_i² − (Σx_i)²/n) (Σy_j² − (Σy_j)²/n))

It is the one streaming implementation of these sufficient statistics in neuronscope:
``neuronscope.analyses.compare.CrossStats`` (CKA, CCA, shape distances and ridge from
streamed statistics) is a thin layer over it, and :meth:`CrossProducts.sufficient_stats`
gives the keyword arguments of the ``*_from_stats`` functions directly.

Numerics: the products are float32 GEMMs (BLAS ``sgemm``) over blocks of ``block_rows``
samples; every block result is added into float64 accumulators. A batch in which either
population is wider than float32 (float64, integers) switches the object to float64 GEMMs
(``dgemm``, on blocks of ``block_rows // 2`` rows) from then on, so float64 data are never
rounded to float32. To keep float32 products free of cancellation the data are shifted by a
fixed per-neuron offset (the float32 mean of the first batch), i.e. the accumulators hold
``Σ(x−s)(y−t)ᵀ`` etc.; the raw sums are exactly recoverable (``raw_sums()``) and ``merge``
converts between offsets. Incoming rows are shifted into a preallocated buffer of
``block_rows`` rows so the GEMMs stay large whatever the batch size (the buffer is
``block_rows × (nx + ny)`` float32; by default ``block_rows`` is chosen so it stays under
``max_temp_bytes``, between 256 and 4096 rows). Wide outputs are computed in column blocks
so the GEMM temporary stays under ``max_temp_bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples

_FIELDS = ("sx", "sy", "sxx", "syy", "sxy")
_GRAMS = {False: (False, False), True: (True, True), "x": (True, False), "y": (False, True)}
_FLOAT32_OK = (np.dtype(np.float32), np.dtype(np.float16))


def _gram_flags(gram: bool | str) -> tuple[bool, bool]:
    """``gram`` → (keep ΣxᵀX, keep ΣyᵀY)."""
    key = gram if isinstance(gram, str) else bool(gram)
    if key not in _GRAMS:
        raise NeuronscopeError(f"gram must be True, False, 'x' or 'y'; got {gram!r}")
    return _GRAMS[key]


def _gram_value(gx: bool, gy: bool) -> bool | str:
    """(keep ΣxᵀX, keep ΣyᵀY) → the ``gram`` argument that means it."""
    return next(k for k, v in _GRAMS.items() if v == (gx, gy))


class CrossProducts:
    """Mergeable ``n, Σx, Σy, Σx², Σy², ΣxᵀY`` (+ optional ``ΣxᵀX, ΣyᵀY``) of two populations.

    ``update(acts, samples)`` follows the Summary protocol with ``acts = [x | y]`` (columns
    ``:nx`` are x, the rest y); ``update_pair(x, y)`` takes the two halves directly.
    ``gram``: ``False`` (cross terms only), ``True`` (also ``ΣxᵀX`` and ``ΣyᵀY``), ``"x"``
    (also ``ΣxᵀX`` only — e.g. ridge from features x to 50k voxels y, where ``Σy²`` suffices)
    or ``"y"``. Batches containing NaN or Inf are rejected with a ``NeuronscopeError`` before
    anything is folded in.
    """

    kind: ClassVar[str] = "crossprod"

    def __init__(
        self,
        nx: int,
        ny: int,
        gram: bool | str = False,
        block_rows: int | None = None,
        max_temp_bytes: int = 64 << 20,
    ):
        if nx < 1 or ny < 1:
            raise NeuronscopeError("CrossProducts needs at least one neuron on each side")
        if block_rows is None:
            block_rows = int(np.clip(max_temp_bytes // (4 * (nx + ny)), 256, 4096))
        if block_rows < 1:
            raise NeuronscopeError("block_rows must be a positive integer")
        self.gram_x, self.gram_y = _gram_flags(gram)
        self.gram = _gram_value(self.gram_x, self.gram_y)
        self.nx, self.ny = int(nx), int(ny)
        self.block_rows = int(block_rows)
        self.max_temp_bytes = int(max_temp_bytes)
        self.n = 0
        self.shift_x: np.ndarray | None = None  # float32 offsets, fixed once set
        self.shift_y: np.ndarray | None = None
        self.sx = np.zeros(nx)
        self.sy = np.zeros(ny)
        self.sxx = np.zeros(nx)
        self.syy = np.zeros(ny)
        self.sxy = np.zeros((nx, ny))
        self.gxx = np.zeros((nx, nx)) if self.gram_x else None
        self.gyy = np.zeros((ny, ny)) if self.gram_y else None
        # rows already shifted, waiting for a full block (allocated on first use)
        self._buf_x: np.ndarray | None = None
        self._buf_y: np.ndarray | None = None
        self._buf_n = 0
        self._tmp: np.ndarray | None = None  # GEMM output (buffer dtype), reused across blocks

    # ------------------------------------------------------------------ updates
    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, gram: bool | str = False, **kw: Any) -> Self:
        """Cross-products of two in-memory populations ``x (n, nx)``, ``y (n, ny)``."""
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or y.ndim != 2:
            raise NeuronscopeError("from_arrays needs two 2-D arrays (samples × neurons)")
        cp = cls(x.shape[1], y.shape[1], gram=gram, **kw)
        cp.update_pair(x, y)
        cp.flush()
        return cp

    def update(self, acts: np.ndarray, samples: Samples | None = None) -> None:
        """Summary protocol: ``acts`` is ``[x | y]`` float32 ``(n, nx + ny)``."""
        if acts.ndim != 2 or acts.shape[1] != self.nx + self.ny:
            raise NeuronscopeError(
                f"CrossProducts expects {self.nx}+{self.ny} columns, got shape {acts.shape}"
            )
        self.update_pair(acts[:, : self.nx], acts[:, self.nx :])

    def update_pair(self, x: np.ndarray, y: np.ndarray) -> None:
        """Fold in one batch of the two populations on the same ``n`` samples.

        Rows are shifted by the fixed offsets ``s, t`` into the block buffer; a full block
        ``(X−s, Y−t)`` adds ``Σ(x−s)``, ``Σ(x−s)²``, ``(X−s)ᵀ(Y−t)`` (and the Gram products) to
        the float64 accumulators. The batch is checked to be finite first, so a rejected batch
        leaves the statistics untouched.
        """
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != self.nx or y.shape[1] != self.ny:
            raise NeuronscopeError(
                f"CrossProducts({self.nx}, {self.ny}) got x {x.shape} and y {y.shape}"
            )
        if len(x) != len(y):
            raise NeuronscopeError(
                f"x and y must hold the same samples; got {len(x)} and {len(y)} rows"
            )
        if len(x) == 0:
            return
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise NeuronscopeError("batch contains NaN or Inf; clean the activations first")
        if self.shift_x is None:
            self.shift_x = x.mean(axis=0, dtype=np.float64).astype(np.float32)
            self.shift_y = y.mean(axis=0, dtype=np.float64).astype(np.float32)
        wide = x.dtype not in _FLOAT32_OK or y.dtype not in _FLOAT32_OK
        if self._buf_x is None or (wide and self._buf_x.dtype != np.float64):
            self.flush()
            dt = np.float64 if wide else np.float32
            # a float64 block holds half the rows, so the buffer stays the same size in bytes
            rows = self.block_rows if dt == np.float32 else max(1, self.block_rows // 2)
            self._buf_x = np.empty((rows, self.nx), dt)
            self._buf_y = np.empty((rows, self.ny), dt)
            self._tmp = None
        cap = len(self._buf_x)
        r0 = 0
        while r0 < len(x):
            k = min(len(x) - r0, cap - self._buf_n)
            rows = slice(self._buf_n, self._buf_n + k)
            np.subtract(x[r0 : r0 + k], self.shift_x, out=self._buf_x[rows], casting="unsafe")
            np.subtract(y[r0 : r0 + k], self.shift_y, out=self._buf_y[rows], casting="unsafe")
            self._buf_n += k
            r0 += k
            if self._buf_n == cap:
                self.flush()

    def flush(self) -> None:
        """Fold buffered rows into the float64 accumulators (done by result/state/merge)."""
        if self._buf_n == 0:
            return
        xs, ys = self._buf_x[: self._buf_n], self._buf_y[: self._buf_n]
        self.n += self._buf_n
        self._buf_n = 0
        self.sx += xs.sum(axis=0, dtype=np.float64)
        self.sy += ys.sum(axis=0, dtype=np.float64)
        self.sxx += np.einsum("ij,ij->j", xs, xs, dtype=np.float64)
        self.syy += np.einsum("ij,ij->j", ys, ys, dtype=np.float64)
        self._gemm_into(self.sxy, xs, ys)
        if self.gram_x:
            self._gemm_into(self.gxx, xs, xs)
        if self.gram_y:
            self._gemm_into(self.gyy, ys, ys)

    def _gemm_into(self, acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """``acc += aᵀb`` with a GEMM in ``a``'s dtype (float32 sgemm, or float64 dgemm) in
        column blocks, float64 accumulation."""
        ncols = b.shape[1]
        step = max(1, min(ncols, self.max_temp_bytes // (a.itemsize * a.shape[1])))
        if self._tmp is None or self._tmp.dtype != a.dtype or self._tmp.size < a.shape[1] * step:
            self._tmp = np.empty(a.shape[1] * step, a.dtype)
        at = a.T
        for c0 in range(0, ncols, step):
            bb = b[:, c0 : c0 + step]
            tmp = self._tmp[: a.shape[1] * bb.shape[1]].reshape(a.shape[1], bb.shape[1])
            np.matmul(at, bb, out=tmp)
            acc[:, c0 : c0 + step] += tmp

    # ------------------------------------------------------------------ merge / state
    def _rebase(self, shift_x: np.ndarray, shift_y: np.ndarray) -> None:
        """Re-express the accumulators about new offsets (exact algebra on the sums)."""
        if self.shift_x is None:
            self.shift_x, self.shift_y = shift_x, shift_y
            return
        a = self.shift_x.astype(np.float64) - shift_x.astype(np.float64)
        b = self.shift_y.astype(np.float64) - shift_y.astype(np.float64)
        n = self.n
        self.sxy += np.outer(self.sx, b) + np.outer(a, self.sy) + n * np.outer(a, b)
        if self.gram_x:
            self.gxx += np.outer(self.sx, a) + np.outer(a, self.sx) + n * np.outer(a, a)
        if self.gram_y:
            self.gyy += np.outer(self.sy, b) + np.outer(b, self.sy) + n * np.outer(b, b)
        self.sxx += 2 * a * self.sx + n * a * a
        self.syy += 2 * b * self.sy + n * b * b
        self.sx += n * a
        self.sy += n * b
        self.shift_x, self.shift_y = shift_x, shift_y

    def merge(self, other: Self) -> Self:
        """Fold in the cross-products of disjoint samples (in place); return ``self``."""
        if (other.nx, other.ny) != (self.nx, self.ny):
            raise NeuronscopeError(
                f"cannot merge CrossProducts({other.nx}, {other.ny}) into ({self.nx}, {self.ny})"
            )
        if (self.gram_x and not other.gram_x) or (self.gram_y and not other.gram_y):
            raise NeuronscopeError(
                f"cannot merge a CrossProducts with gram={other.gram!r} into one with "
                f"gram={self.gram!r}; record both with the same gram"
            )
        self.flush()
        other.flush()
        if other.n == 0:
            return self
        if self.n == 0:
            self.shift_x, self.shift_y = other.shift_x.copy(), other.shift_y.copy()
        o = CrossProducts.from_state(*other.state())
        o._rebase(self.shift_x, self.shift_y)
        self.n += o.n
        for f in _FIELDS:
            getattr(self, f).__iadd__(getattr(o, f))
        if self.gram_x:
            self.gxx += o.gxx
        if self.gram_y:
            self.gyy += o.gyy
        return self

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (offsets and shifted sums) and JSON attrs that rebuild this summary."""
        self.flush()
        arrays = {f: getattr(self, f) for f in _FIELDS}
        if self.gram_x:
            arrays["gxx"] = self.gxx
        if self.gram_y:
            arrays["gyy"] = self.gyy
        if self.shift_x is not None:
            arrays.update(shift_x=self.shift_x, shift_y=self.shift_y)
        attrs = {
            "kind": self.kind,
            "nx": self.nx,
            "ny": self.ny,
            "gram": self.gram,
            "n": int(self.n),
            "block_rows": self.block_rows,
            "max_temp_bytes": self.max_temp_bytes,
        }
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from ``state()`` (arrays are copied)."""
        cp = cls(
            attrs["nx"],
            attrs["ny"],
            gram=attrs["gram"],
            block_rows=attrs.get("block_rows"),
            max_temp_bytes=attrs.get("max_temp_bytes", 64 << 20),
        )
        cp.n = int(attrs["n"])
        grams = ("gxx",) * cp.gram_x + ("gyy",) * cp.gram_y
        for f in _FIELDS + grams:
            setattr(cp, f, np.array(arrays[f], dtype=np.float64))
        if "shift_x" in arrays:
            cp.shift_x = np.array(arrays["shift_x"], dtype=np.float32)
            cp.shift_y = np.array(arrays["shift_y"], dtype=np.float32)
        return cp

    # ------------------------------------------------------------------ results
    def raw_sums(self) -> dict[str, np.ndarray]:
        """Sums of the unshifted rows (float64): ``n, sum_x, sum_y, sum_x2, sum_y2, sum_xy``
        (+ ``sum_xx`` = XᵀX with a Gram of x, ``sum_yy`` = YᵀY with a Gram of y).

        With offsets s, t and shifted sums S = Σ(x−s), Sxy = Σ(x−s)(y−t)ᵀ: Σx = S + n s,
        ΣxyᵀY = Sxy + s Syᵀ + Sx tᵀ + n s tᵀ (and alike for the squares and Grams). Defined
        for any ``n`` (all zeros before the first batch)."""
        self.flush()
        sx0 = np.zeros(self.nx) if self.shift_x is None else self.shift_x.astype(np.float64)
        sy0 = np.zeros(self.ny) if self.shift_y is None else self.shift_y.astype(np.float64)
        n = self.n
        out = {
            "n": np.array(n, dtype=np.int64),
            "sum_x": self.sx + n * sx0,
            "sum_y": self.sy + n * sy0,
            "sum_x2": self.sxx + 2 * sx0 * self.sx + n * sx0 * sx0,
            "sum_y2": self.syy + 2 * sy0 * self.sy + n * sy0 * sy0,
            "sum_xy": self.sxy
            + np.outer(sx0, self.sy)
            + np.outer(self.sx, sy0)
            + n * np.outer(sx0, sy0),
        }
        if self.gram_x:
            out["sum_xx"] = (
                self.gxx + np.outer(sx0, self.sx) + np.outer(self.sx, sx0) + n * np.outer(sx0, sx0)
            )
        if self.gram_y:
            out["sum_yy"] = (
                self.gyy + np.outer(sy0, self.sy) + np.outer(self.sy, sy0) + n * np.outer(sy0, sy0)
            )
        return out

    def result(self) -> dict[str, np.ndarray]:
        """Raw sums ``n, sum_x, sum_y, sum_x2, sum_y2, sum_xy`` (+ ``sum_xx``/``sum_yy`` with
        the Grams; see :meth:`raw_sums`), the means and the Pearson ``correlation`` (nx, ny)."""
        return {
            **self.raw_sums(),
            "mean_x": self.mean_x(),
            "mean_y": self.mean_y(),
            "correlation": self.correlation(),
        }

    def sufficient_stats(self) -> dict[str, Any]:
        """``dict(n, sum_x, sum_y, xtx, yty, xty)`` of the raw rows — the keyword arguments of
        ``linear_cka_from_stats``, ``cca_from_stats``, ``procrustes_distance_from_stats``, … and
        a fold of ``ridge_from_stats`` (``neuronscope.analyses.compare``).

        ``xtx`` = XᵀX (needs a Gram of x: ``gram=True`` or ``"x"``), ``xty`` = XᵀY, ``yty`` =
        YᵀY with a Gram of y, else its diagonal ``Σy²`` (enough for ridge)."""
        if not self.gram_x:
            raise NeuronscopeError(
                "sufficient statistics need XᵀX; record with CrossProducts(gram=True) or gram='x'"
            )
        raw = self.raw_sums()
        return {
            "n": int(raw["n"]),
            "sum_x": raw["sum_x"],
            "sum_y": raw["sum_y"],
            "xtx": raw["sum_xx"],
            "yty": raw["sum_yy"] if self.gram_y else raw["sum_y2"],
            "xty": raw["sum_xy"],
        }

    def _need_samples(self, k: int = 2) -> None:
        self.flush()
        if self.n < k:
            raise NeuronscopeError(
                f"cross-products hold {self.n} samples; record at least {k} to get statistics"
            )

    def mean_x(self) -> np.ndarray:
        """Per-neuron mean of x."""
        self._need_samples(1)
        return self.shift_x.astype(np.float64) + self.sx / self.n

    def mean_y(self) -> np.ndarray:
        """Per-neuron mean of y."""
        self._need_samples(1)
        return self.shift_y.astype(np.float64) + self.sy / self.n

    def var_x(self) -> np.ndarray:
        """Per-neuron sample variance of x (ddof=1): ``(Σx² − (Σx)²/n)/(n−1)``."""
        self._need_samples()
        return np.maximum(self.sxx - self.sx**2 / self.n, 0.0) / (self.n - 1)

    def var_y(self) -> np.ndarray:
        """Per-neuron sample variance of y (ddof=1)."""
        self._need_samples()
        return np.maximum(self.syy - self.sy**2 / self.n, 0.0) / (self.n - 1)

    def cov_xy(self) -> np.ndarray:
        """Sample cross-covariance (nx, ny): ``(ΣxᵀY − Σx Σyᵀ/n)/(n−1)``."""
        self._need_samples()
        return (self.sxy - np.outer(self.sx, self.sy) / self.n) / (self.n - 1)

    def cov_xx(self) -> np.ndarray:
        """Sample covariance of x (nx, nx): ``(ΣxᵀX − Σx Σxᵀ/n)/(n−1)``; needs ``gram=True``
        or ``"x"``."""
        self._need_gram(self.gram_x)
        return (self.gxx - np.outer(self.sx, self.sx) / self.n) / (self.n - 1)

    def cov_yy(self) -> np.ndarray:
        """Sample covariance of y (ny, ny): ``(ΣyᵀY − Σy Σyᵀ/n)/(n−1)``; needs ``gram=True``
        or ``"y"``."""
        self._need_gram(self.gram_y)
        return (self.gyy - np.outer(self.sy, self.sy) / self.n) / (self.n - 1)

    def _need_gram(self, have: bool) -> None:
        self._need_samples()
        if not have:
            raise NeuronscopeError(
                "within-population covariances need CrossProducts(gram=True) "
                "(record with within=True)"
            )

    def correlation(self) -> np.ndarray:
        """Pearson correlation (nx, ny); NaN where a neuron has zero variance."""
        self._need_samples()
        return _corr(self.cov_xy(), self.var_x(), self.var_y())

    def linear_cka(self) -> float:
        """Linear CKA (Kornblith et al. 2019) from the streamed statistics (needs ``gram``):
        ``‖C_xy‖²_F / (‖C_xx‖_F ‖C_yy‖_F)`` with the centered (co)variances — equal to
        ``neuronscope.analyses.compare.linear_cka`` on the same rows."""
        cxy, cxx, cyy = self.cov_xy(), self.cov_xx(), self.cov_yy()
        den = np.linalg.norm(cxx) * np.linalg.norm(cyy)
        if den <= 0:
            raise NeuronscopeError("a population has zero variance; CKA is undefined")
        return float(np.linalg.norm(cxy) ** 2 / den)

    def corr_xx(self) -> np.ndarray:
        """Pearson correlation among the x neurons (needs ``gram=True``)."""
        v = self.var_x()
        return _corr(self.cov_xx(), v, v)

    def corr_yy(self) -> np.ndarray:
        """Pearson correlation among the y neurons (needs ``gram=True``)."""
        v = self.var_y()
        return _corr(self.cov_yy(), v, v)

    # ------------------------------------------------------------------ views
    def subset(self, rows: slice | np.ndarray | None = None, cols: slice | np.ndarray | None = None) -> Self:
        """The cross-products of a subset of x neurons (``rows``) and y neurons (``cols``)."""
        self.flush()
        rows = slice(None) if rows is None else rows
        cols = slice(None) if cols is None else cols
        ix = np.arange(self.nx)[rows]
        iy = np.arange(self.ny)[cols]
        cp = type(self)(len(ix), len(iy), gram=self.gram, block_rows=self.block_rows,
                        max_temp_bytes=self.max_temp_bytes)
        cp.n = self.n
        if self.shift_x is not None:
            cp.shift_x, cp.shift_y = self.shift_x[ix].copy(), self.shift_y[iy].copy()
        cp.sx, cp.sxx = self.sx[ix].copy(), self.sxx[ix].copy()
        cp.sy, cp.syy = self.sy[iy].copy(), self.syy[iy].copy()
        cp.sxy = self.sxy[np.ix_(ix, iy)].copy()
        if self.gram_x:
            cp.gxx = self.gxx[np.ix_(ix, ix)].copy()
        if self.gram_y:
            cp.gyy = self.gyy[np.ix_(iy, iy)].copy()
        return cp

    def transpose(self) -> Self:
        """The same cross-products with the roles of x and y swapped."""
        self.flush()
        cp = type(self)(self.ny, self.nx, gram=_gram_value(self.gram_y, self.gram_x),
                        block_rows=self.block_rows, max_temp_bytes=self.max_temp_bytes)
        cp.n = self.n
        cp.shift_x, cp.shift_y = self.shift_y, self.shift_x
        cp.sx, cp.sy, cp.sxx, cp.syy = self.sy.copy(), self.sx.copy(), self.syy.copy(), self.sxx.copy()
        cp.sxy = self.sxy.T.copy()
        cp.gxx = None if self.gyy is None else self.gyy.copy()
        cp.gyy = None if self.gxx is None else self.gxx.copy()
        return cp


def _corr(cov: np.ndarray, var_a: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    sa = np.sqrt(var_a)
    sb = np.sqrt(var_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.outer(sa, sb)
    r[(sa == 0)[:, None] | (sb == 0)[None, :]] = np.nan
    return np.clip(r, -1.0, 1.0)
