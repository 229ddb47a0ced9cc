"""Linear algebra shared by the comparison metrics (CKA, CCA, shape metrics, RSA, ridge).

* :func:`center` — column-centred copy (mean in float64).
* :func:`crossprod` — ``aᵀb`` in float64: float32 input multiplies in float32 row blocks of
  :data:`BLOCK` rows accumulated in float64; very wide outputs go in column blocks.
* :func:`gram` — ``abᵀ`` (n × n) in row blocks above :data:`BIG` rows.
* :func:`eigh`, :func:`svd` — one BLAS thread for large matrices (OpenBLAS's threaded
  tridiagonal reduction is several times slower on a busy machine) and a one-line error
  instead of numpy's ``LinAlgError``.
* :func:`frob2`, :func:`nuclear`, :func:`feature_space`.

No function here hands a threaded float64 ``X @ X.T`` with n >= 16000 to BLAS in one piece
(that path segfaults in this OpenBLAS, numpy#19685).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

BLOCK = 4096  # rows per float32 block accumulated in float64
BIG = 8192  # output side above which Gram products are computed in row blocks
_ONE_THREAD = 256  # matrices at least this large decompose on one BLAS thread


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
    cxx = np.asarray(xtx, np.float64) - np.outer(sx, sx) / n
    cyy = np.asarray(yty, np.float64) - np.outer(sy, sy) / n
    cxy = np.asarray(xty, np.float64) - np.outer(sx, sy) / n
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
