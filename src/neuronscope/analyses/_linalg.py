"""Linear algebra shared by the comparison metrics (CKA, CCA, shape metrics, RSA, ridge).

* :func:`rescale` — a population divided by a power of two near its largest magnitude
  (exact in floating point) when its scale is extreme, so the products below neither
  overflow nor underflow: metrics invariant to scale give at 1e±150 what they give at 1;
  the others undo the factor (:func:`unscale`).
* :func:`require_variance` — a one-line error for a side that is constant across stimuli.
* :func:`center` — column-centred copy (mean in float64).
* :func:`crossprod` — ``aᵀb`` in float64: float32 input multiplies in float32 row blocks of
  :data:`BLOCK` rows accumulated in float64; very wide outputs go in column blocks.
* :func:`gram` — ``abᵀ`` (n × n) in row blocks above :data:`BIG` rows.
* :func:`eigh`, :func:`eigvalsh`, :func:`svd`, :func:`polar`, :func:`cholesky`,
  :func:`solve` — every decomposition of the metrics: one BLAS thread for large matrices
  (OpenBLAS's threaded tridiagonal reduction is several times slower on a busy machine), and
  a one-line error instead of numpy's ``LinAlgError`` or a silent NaN for non-finite input.
* :func:`frob2`, :func:`nuclear`, :func:`feature_space`.

No function here hands a threaded float64 ``X @ X.T`` with n >= 16000 to BLAS in one piece
(that path segfaults in this OpenBLAS, numpy#19685).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

BLOCK = 4096  # rows per float32 block accumulated in float64
BIG = 8192  # output side above which Gram products are computed in row blocks
_ONE_THREAD = 256  # matrices at least this large decompose on one BLAS thread
#: Populations whose largest magnitude lies within 2^±SAFE need no rescaling: their
#: squares and fourth powers (CKA's ‖XᵀY‖²) stay far inside the dtype's range. float32 is
#: multiplied in float32 blocks (see :func:`crossprod`), hence its narrower range.
SAFE_EXPONENT = {np.dtype(np.float64): 128, np.dtype(np.float32): 24}


def rescale(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(a · 2^-e, e)``: ``a`` divided by the power of two just above its largest magnitude
    (scaled values in (-1, 1)) when that magnitude lies outside 2^±:data:`SAFE_EXPONENT`,
    else ``(a, 0)`` unchanged.

    Only the exponents of the values change, so the scaling is exact; products of the scaled
    matrix neither overflow (data at 1e160 squared is 1e320) nor lose digits to underflow
    (1e-160 squared is 1e-320, subnormal), and every later operation (sums, products,
    square roots, decompositions) gives the unscaled result times a power of two. A
    scale-invariant metric (CKA, CCA, RSA, angular shape) simply uses the scaled matrix;
    one that scales with the data multiplies by ``2^e`` at the end (:func:`unscale`).
    """
    e = scale_exponent(a)
    return (np.ldexp(a, -e).astype(a.dtype, copy=False), e) if e else (a, 0)


def scale_exponent(a: np.ndarray) -> int:
    """The ``e`` of :func:`rescale`: the exponent of the power of two just above
    max |a| when that lies outside 2^±:data:`SAFE_EXPONENT`, else 0 (also for an empty,
    all-zero or non-finite ``a``)."""
    if a.size == 0:
        return 0
    m = max(float(a.max()), -float(a.min()))  # max |a| without an |a| copy of the data
    if m == 0.0 or not math.isfinite(m):
        return 0
    e = math.frexp(m)[1]
    return 0 if abs(e) <= SAFE_EXPONENT.get(a.dtype, 128) else e


def unscale(value: float, e: int) -> float:
    """``value · 2^e`` (a distance computed on data scaled by :func:`rescale`); a one-line
    error when it does not fit in a float64."""
    try:
        return math.ldexp(value, e)
    except OverflowError:
        raise NeuronscopeError(
            f"the result ({value:g} x 2^{e}) overflows float64; scale the data down first"
        ) from None


def require_variance(a: np.ndarray, what: str = "population") -> None:
    """Raise a one-line error when every column of ``a`` (samples × neurons) is constant:
    no metric compares a representation that does not vary across stimuli. (Exact
    comparison of the rows, stopping at the first block that varies: centring a constant
    column leaves rounding residue that would otherwise pass as signal.)"""
    first = a[:1]
    if not any((a[r0 : r0 + BLOCK] != first).any() for r0 in range(0, a.shape[0], BLOCK)):
        raise NeuronscopeError(
            f"{what} has zero variance across stimuli (every neuron constant); "
            "no similarity is defined — drop it or check the recording"
        )


def center(a: np.ndarray) -> np.ndarray:
    """Column-centred copy (mean taken in float64, result in ``a``'s dtype)."""
    return a - a.mean(axis=0, dtype=np.float64).astype(a.dtype)


def crossprod(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``aᵀ b`` (``aᵀ a`` when ``b`` is None) in float64.

    float32 input: float32 products over row blocks of :data:`BLOCK` summed in float64.
    A large output (side >= 16000) is built from column blocks so no single huge
    product is handed to threaded BLAS.
    """
    same = b is None
    b = a if same else b
    if a.dtype == np.float64 and b.dtype != np.float64:
        b = b.astype(np.float64)
    if b.dtype == np.float64 and a.dtype != np.float64:
        a = a.astype(np.float64)
    n = a.shape[0]
    out = np.zeros((a.shape[1], b.shape[1]))
    row_step = BLOCK if a.dtype == np.float32 else max(n, 1)
    col_step = BIG if max(a.shape[1], b.shape[1]) >= 16000 else max(a.shape[1], 1)
    for r0 in range(0, n, row_step):
        ar = a[r0 : r0 + row_step]
        br = ar if same else b[r0 : r0 + row_step]
        if col_step >= a.shape[1]:
            out += ar.T @ br
        else:
            for c0 in range(0, a.shape[1], col_step):
                out[c0 : c0 + col_step] += ar[:, c0 : c0 + col_step].T @ br
    return out


def gram(a: np.ndarray, b: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
    """``a bᵀ`` (``a aᵀ`` when ``b`` is None) computed in ``dtype``, in row blocks when
    n >= :data:`BIG` (never one huge threaded float64 ``X @ X.T``)."""
    a64 = a.astype(dtype, copy=False)
    b64 = a64 if b is None else b.astype(dtype, copy=False)
    if a64.shape[0] < BIG:
        return a64 @ b64.T
    out = np.empty((a64.shape[0], b64.shape[0]), dtype=dtype)
    for r0 in range(0, a64.shape[0], BLOCK):
        out[r0 : r0 + BLOCK] = a64[r0 : r0 + BLOCK] @ b64.T
    return out


def _decompose(fn: Any, a: np.ndarray, size: int, what: str, **kw: Any) -> Any:
    if not np.isfinite(a).all():
        raise NeuronscopeError(
            f"{what} got NaN or Inf (the data's products overflowed, or the input holds them); "
            "check the data for non-finite values and extreme magnitudes"
        )
    try:
        if size < _ONE_THREAD:
            return fn(a, **kw)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(a, **kw)
    except np.linalg.LinAlgError as e:
        raise NeuronscopeError(
            f"{what} did not converge ({e}); the data may be degenerate or badly scaled — "
            "check for constant or duplicated neurons"
        ) from None


def eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix (``np.linalg.eigh``)."""
    return _decompose(np.linalg.eigh, a, a.shape[0], "the eigendecomposition")


def svd(a: np.ndarray, compute_uv: bool = True) -> Any:
    """Thin SVD (``np.linalg.svd(full_matrices=False)``)."""
    return _decompose(np.linalg.svd, a, min(a.shape), "the singular value decomposition",
                      full_matrices=False, compute_uv=compute_uv)


def eigvalsh(a: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of symmetric matrices, stacked in the last two axes."""
    return _decompose(np.linalg.eigvalsh, a, a.shape[-1], "the eigendecomposition")


def polar(m: np.ndarray) -> np.ndarray:
    """The orthogonal factor U Vᵀ of a square m = U S Vᵀ (maximises tr(Qᵀ m) over orthogonal Q)."""
    u, _, vt = svd(m)
    return u @ vt


def cholesky(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a symmetric positive-definite matrix."""
    try:
        return _decompose(np.linalg.cholesky, a, a.shape[0], "the Cholesky factorisation")
    except NeuronscopeError as e:
        raise NeuronscopeError(f"{e}; a noise covariance must be symmetric positive definite") from None


def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b`` for a square, non-singular ``a``."""
    if not np.isfinite(b).all():
        raise NeuronscopeError("a linear solve got NaN or Inf; check the data for non-finite values")
    return _decompose(lambda m: np.linalg.solve(m, b), a, a.shape[0], "the linear solve")


def frob2(a: np.ndarray) -> float:
    """Squared Frobenius norm ``Σ a_ij²``."""
    return float(np.einsum("ij,ij->", a, a))


def nuclear(a: np.ndarray) -> float:
    """Nuclear norm ``‖a‖_* = Σ σ_i`` (0 for an empty matrix)."""
    return float(svd(a, compute_uv=False).sum()) if a.size else 0.0


def feature_space(n: int, p: int, q: int) -> bool:
    """Feature-space products (p×p, q×q, p×q) are cheaper than n×n Grams when p + q <= 2n."""
    return p + q <= 2 * n


def centered_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                   xty: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred cross-products from sufficient statistics: C = XᵀX − ΣxΣxᵀ/n (and Cyy, Cxy)."""
    if n < 3:
        raise NeuronscopeError(f"statistics over {n} samples; comparisons need at least 3 stimuli")
    sx, sy = np.asarray(sum_x, np.float64), np.asarray(sum_y, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        cxx = np.asarray(xtx, np.float64) - np.outer(sx, sx) / n
        cyy = np.asarray(yty, np.float64) - np.outer(sy, sy) / n
        cxy = np.asarray(xty, np.float64) - np.outer(sx, sy) / n
    if not (np.isfinite(cxx).all() and np.isfinite(cyy).all() and np.isfinite(cxy).all()):
        raise NeuronscopeError(
            "the sufficient statistics hold NaN or Inf (the data's squares overflow float64); "
            "scale the data into a moderate range before accumulating"
        )
    return cxx, cyy, cxy


def principal_axes(c: np.ndarray, what: str = "population", tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes ``V`` (p, r) and variances ``λ`` (r,), descending, of a centred
    cross-product matrix ``c``; null directions (λ <= tol·λ_max) dropped. Raises when ``c``
    is zero (no variance)."""
    lam, v = eigh((c + c.T) / 2)
    lam, v = lam[::-1], v[:, ::-1]
    if lam.size == 0 or lam[0] <= 0:
        raise NeuronscopeError(f"{what} has zero variance across stimuli (all columns constant)")
    keep = lam > tol * lam[0]
    return v[:, keep], lam[keep]
