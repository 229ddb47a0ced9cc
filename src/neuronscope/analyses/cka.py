"""Centered kernel alignment (CKA): linear, debiased, RBF, and deconfounded.

Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of Neural Network Representations
Revisited": for kernels K = k(X), L = k(Y) on the same n stimuli and H = I - 11ᵀ/n,

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   HSIC(K, L) = tr(K H L H).

With linear kernels and column-centered X, Y this is ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``, which
is computed in feature space (d × d products, never n × n when n > d). The products come
from :mod:`neuronscope.analyses._linalg` (float32 blocks accumulated in float64); each side
is first divided by a power of two near its largest magnitude when that is extreme
(:func:`~neuronscope.analyses._linalg.rescale`, exact), so CKA at 1e±150 equals CKA at 1.
"""

from __future__ import annotations

import warnings

import numpy as np

from neuronscope.analyses._linalg import (
    center,
    centered_stats,
    crossprod,
    feature_space,
    frob2,
    gram,
    require_variance,
    rescale,
)
from neuronscope.analyses._metric import Metric
from neuronscope.errors import NeuronscopeError
from neuronscope.population import ArrayLike, paired, to_matrix


def _linear_dots(xc: np.ndarray, yc: np.ndarray) -> tuple[float, float, float]:
    """(‖XᵀY‖², ‖XᵀX‖², ‖YᵀY‖²) of centered X, Y via the cheaper of feature or Gram space."""
    n, p = xc.shape
    if feature_space(n, p, yc.shape[1]):
        return frob2(crossprod(xc, yc)), frob2(crossprod(xc)), frob2(crossprod(yc))
    kx, ky = gram(xc), gram(yc)
    return float(np.einsum("ij,ij->", kx, ky)), frob2(kx), frob2(ky)


def _cka_ratio(xy: float, xx: float, yy: float, what: str = "population") -> float:
    if xx <= 0 or yy <= 0:
        raise NeuronscopeError(
            f"a {what} has zero variance across stimuli (all columns constant); CKA is undefined"
        )
    return float(np.clip(xy / np.sqrt(xx * yy), -1.0, 1.0))


def _debias(xty: float, sx: np.ndarray, sy: np.ndarray, nx: float, ny: float, n: int) -> float:
    """Unbiased HSIC (Song et al. 2012) numerator from feature-space quantities (Kornblith's
    ``_debiased_dot_product_similarity_helper``)."""
    return xty - n / (n - 2.0) * float(sx @ sy) + nx * ny / ((n - 1.0) * (n - 2.0))


def linear_cka(X: ArrayLike, Y: ArrayLike, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019): ``‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)``.

    ``X`` (n, p), ``Y`` (n, q): arrays or DataArrays (aligned by ``stimulus``/``item`` id).
    Computed in feature space when p + q <= 2n, so the n × n Gram matrix is never formed
    when n > d. ``debiased=True`` replaces HSIC by its unbiased estimator (Song et al. 2012;
    Nguyen, Raghu & Kornblith 2021), see :func:`debiased_cka`. Invariant to orthogonal
    transforms and isotropic scaling of either side, not to general invertible linear maps.
    """
    x, y = paired(X, Y, min_samples=4 if debiased else 3)
    require_variance(x, "X")
    require_variance(y, "Y")
    xc, yc = center(rescale(x)[0]), center(rescale(y)[0])  # CKA is invariant to each side's scale
    xy, xx, yy = _linear_dots(xc, yc)
    if not debiased:
        return _cka_ratio(xy, xx, yy)
    n = x.shape[0]
    sx = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    sy = np.einsum("ij,ij->i", yc, yc, dtype=np.float64)
    nx, ny = float(sx.sum()), float(sy.sum())
    return _cka_ratio(_debias(xy, sx, sy, nx, ny, n), _debias(xx, sx, sx, nx, nx, n),
                      _debias(yy, sy, sy, ny, ny, n))


def debiased_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Debiased linear CKA: CKA with the unbiased HSIC estimator (Song et al. 2012)

        HSIC_u(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)),

    K̃, L̃ the linear Grams with zeroed diagonals (as in Kornblith et al. 2019 and
    "Do wide and deep networks learn the same things?", Nguyen et al. 2021), computed in
    feature space. Needs n >= 4 stimuli.
    """
    return linear_cka(X, Y, debiased=True)


def _sq_dists_rows(a: np.ndarray, rows: slice, sq: np.ndarray) -> np.ndarray:
    d = sq[rows, None] + sq[None, :] - 2.0 * gram(a[rows], a)
    i = np.arange(rows.start or 0, rows.stop if rows.stop is not None else len(a))
    d[i - i[0], i] = 0.0  # a row's distance to itself is 0, not the rounding error of the expansion
    return np.maximum(d, 0.0)


def _rbf_sigma2(a: np.ndarray, sq: np.ndarray, threshold: float, rng: np.random.Generator) -> float:
    n = a.shape[0]
    if n <= 4096:
        med = float(np.median(_sq_dists_rows(a, slice(0, n), sq)))
    else:
        i, j = rng.integers(0, n, 1_000_000), rng.integers(0, n, 1_000_000)
        d = np.maximum(sq[i] + sq[j] - 2.0 * np.einsum("ij,ij->i", a[i], a[j]), 0.0)
        med = float(np.median(d))
    if med <= 0:
        raise NeuronscopeError("median squared distance is 0 (identical rows); give sigma explicitly")
    return threshold**2 * med


def _rbf_gamma(sigma: float, e: int) -> float:
    """1 / (2σ²) for distances of data divided by 2^e: 4^e / (2σ²), capped at the largest
    float (then every kernel entry off the diagonal is 0, as it is for the unscaled data)."""
    if not sigma > 0:
        raise NeuronscopeError(f"sigma must be positive, not {sigma:g}")
    with np.errstate(over="ignore", under="ignore"):
        g = float(np.ldexp(np.float64(0.5) / sigma / sigma, 2 * e))
    return min(g, float(np.finfo(np.float64).max))


def rbf_cka(
    X: ArrayLike,
    Y: ArrayLike,
    threshold: float = 1.0,
    sigma: float | tuple[float, float] | None = None,
    chunk: int = 2048,
    warn_above: int = 10000,
    seed: int = 0,
) -> float:
    """CKA with Gaussian (RBF) kernels, K_ij = exp(-‖x_i - x_j‖² / (2σ²)) (Kornblith et al. 2019).

    σ defaults to ``threshold`` × the median pairwise distance (exact up to n = 4096, from
    10⁶ random pairs above). HSIC(K, L) = Σ K∘L - (2/n)(K1)·(L1) + (1ᵀK1)(1ᵀL1)/n² is
    accumulated over row chunks, so only ``chunk`` × n kernel rows are held at a time; the
    cost is still O(n²) and a warning is issued above ``warn_above`` stimuli.
    """
    x, y = paired(X, Y)
    require_variance(x, "X")
    require_variance(y, "Y")
    (x, ex), (y, ey) = rescale(x), rescale(y)
    x = center(x).astype(np.float64)
    y = center(y).astype(np.float64)
    n = x.shape[0]
    if n > warn_above:
        warnings.warn(f"rbf_cka on {n} stimuli builds {n}x{n} kernels in chunks (O(n^2) time); "
                      "consider linear_cka", stacklevel=2)
    rng = np.random.default_rng(seed)
    sqx, sqy = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    if sigma is None:
        gx, gy = 0.5 / _rbf_sigma2(x, sqx, threshold, rng), 0.5 / _rbf_sigma2(y, sqy, threshold, rng)
    else:
        sx_, sy_ = (sigma, sigma) if np.isscalar(sigma) else sigma
        gx, gy = _rbf_gamma(float(sx_), ex), _rbf_gamma(float(sy_), ey)
    kl = kk = ll = 0.0
    rk, rl = np.zeros(n), np.zeros(n)
    for r0 in range(0, n, chunk):
        rows = slice(r0, min(n, r0 + chunk))
        with np.errstate(over="ignore"):  # a huge γ makes the off-diagonal kernel exactly 0
            k = np.exp(-_sq_dists_rows(x, rows, sqx) * gx)
            l_ = np.exp(-_sq_dists_rows(y, rows, sqy) * gy)
        kl += float(np.einsum("ij,ij->", k, l_))
        kk += float(np.einsum("ij,ij->", k, k))
        ll += float(np.einsum("ij,ij->", l_, l_))
        rk[rows], rl[rows] = k.sum(1), l_.sum(1)

    def hsic(s: float, a: np.ndarray, b: np.ndarray) -> float:
        return s - 2.0 / n * float(a @ b) + a.sum() * b.sum() / n**2

    return _cka_ratio(hsic(kl, rk, rl), hsic(kk, rk, rk), hsic(ll, rl, rl))


def deconfounded_cka(X: ArrayLike, Y: ArrayLike, inputs: ArrayLike) -> float:
    """Deconfounded linear CKA (Cui et al. 2022, "Deconfounded Representation Similarity for
    Comparison of Neural Networks").

    Each representation's centered linear Gram K = H X Xᵀ H is regressed on the input
    space's Gram K₀ = H Z Zᵀ H (``inputs`` Z, (n, r)): K' = K - β K₀ with
    β = ⟨K, K₀⟩_F / ‖K₀‖²_F; then dCKA = ⟨K'_X, K'_Y⟩ / (‖K'_X‖ ‖K'_Y‖). Every inner product
    ⟨HAAᵀH, HBBᵀH⟩ = ‖AcᵀBc‖²_F is taken in feature space (no n × n matrix when n > d).
    """
    x, y = paired(X, Y)
    _, z = paired(X, inputs)
    for a, what in ((x, "X"), (y, "Y"), (z, "inputs")):
        require_variance(a, what)
    xc, yc, zc = (center(rescale(a)[0]) for a in (x, y, z))  # invariant to each one's scale

    def ip(a: np.ndarray, b: np.ndarray) -> float:
        if feature_space(a.shape[0], a.shape[1], b.shape[1]):
            return frob2(crossprod(a, b))
        return float(np.einsum("ij,ij->", gram(a), gram(b)))

    zz = ip(zc, zc)
    if zz <= 0:
        raise NeuronscopeError("inputs have zero variance across stimuli; give the stimuli's input features")
    xz, yz = ip(xc, zc), ip(yc, zc)
    bx, by = xz / zz, yz / zz
    xy, xx, yy = ip(xc, yc), ip(xc, xc), ip(yc, yc)
    num = xy - by * xz - bx * yz + bx * by * zz
    dx = max(xx - 2 * bx * xz + bx * bx * zz, 0.0)
    dy = max(yy - 2 * by * yz + by * by * zz, 0.0)
    tol = 1e-12
    if dx <= tol * xx or dy <= tol * yy:
        raise NeuronscopeError(
            "a representation's similarity structure is fully explained by the inputs; "
            "deconfounded CKA is undefined"
        )
    return float(np.clip(num / np.sqrt(dx * dy), -1.0, 1.0))


def gram_linear(X: ArrayLike) -> np.ndarray:
    """The linear Gram matrix X Xᵀ (n × n, float64) of a population; for reference and tests."""
    return gram(to_matrix(X))


def linear_cka_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                          yty: np.ndarray, xty: np.ndarray) -> float:
    """Linear CKA from sufficient statistics: with C = XᵀX − ΣxΣxᵀ/n (etc.),
    CKA = ‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F) — equal to :func:`linear_cka` on the same rows."""
    cxx, cyy, cxy = centered_stats(n, sum_x, sum_y, xtx, yty, xty)
    return _cka_ratio(frob2(cxy), frob2(cxx), frob2(cyy))


# --------------------------------------------------------------------------- many vs many


def cka_factor(p: ArrayLike) -> tuple[str, np.ndarray, float]:
    """A population's linear-CKA factor, computed once for many comparisons: the centred
    matrix and ‖XcᵀXc‖_F (``"x"``), or the centred Gram matrix and its norm (``"k"``) when
    neurons outnumber stimuli."""
    x = to_matrix(p)
    require_variance(x)
    xc = center(rescale(x)[0])
    n, d = xc.shape
    if feature_space(n, d, d):
        return "x", xc, float(np.sqrt(frob2(crossprod(xc))))
    k = gram(xc)
    return "k", k, float(np.sqrt(frob2(k)))


def cka_pair(fa: tuple[str, np.ndarray, float], fb: tuple[str, np.ndarray, float]) -> float:
    """Linear CKA of two populations from their :func:`cka_factor`: one cross product."""
    (ka, a, na), (kb, b, nb) = fa, fb
    if a.shape[0] != b.shape[0]:
        raise NeuronscopeError("populations cover different numbers of stimuli; give the same stimuli")
    if ka == "x" and kb == "x":
        xy = frob2(crossprod(a, b))
    elif ka == "k" and kb == "k":
        xy = float(np.einsum("ij,ij->", a, b))
    else:
        k, x = (a, b) if ka == "k" else (b, a)
        x64 = x.astype(np.float64)
        xy = float(np.einsum("ij,ij->", k @ x64, x64))
    return _cka_ratio(xy, na * na, nb * nb)


LINEAR_CKA = Metric("cka", linear_cka, True, options=("debiased",), factor=cka_factor, pair=cka_pair)
DEBIASED_CKA = Metric("debiased_cka", debiased_cka, True)
RBF_CKA = Metric("rbf_cka", rbf_cka, True,
                 options=("threshold", "sigma", "chunk", "warn_above", "seed"))
DECONFOUNDED_CKA = Metric("deconfounded_cka", deconfounded_cka, True, options=("inputs",))
