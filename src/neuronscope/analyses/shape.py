"""Shape metrics: Procrustes and angular distances with partial whitening, and the
stochastic shape metric.

Williams, Kunz, Kornblith & Linderman (2021), "Generalized Shape Metrics on Neural
Representations": after centering and the partial whitening
φ_α(X) = X (α I + (1 - α) (XᵀX)^{-1/2}) (rescaled to keep the total variance, as in netrep),

    Procrustes distance  d(X, Y) = min_{Q orthogonal} ‖φ(X) - φ(Y) Q‖_F
                                 = sqrt(‖φX‖² + ‖φY‖² - 2 ‖φXᵀ φY‖_*),
    angular distance     θ(X, Y) = arccos(‖φXᵀ φY‖_* / (‖φX‖_F ‖φY‖_F)),

with populations of different widths zero-padded (implicit in the nuclear norm). Both are
metrics (symmetric, triangle inequality) on representations modulo rotation. Each side is
computed divided by a power of two near its largest magnitude when that is extreme
(:func:`~neuronscope.analyses._linalg.rescale`, exact): the angular distance (and Procrustes
with ``normalize``) at 1e±150 equals that at 1, and the Procrustes distance scales exactly
with the data.

Duong, Zhou, Nassar, Berman, Olieslagers & Williams (2023), "Representational dissimilarity
metric spaces for stochastic neural networks": the stochastic shape metric compares the
response distributions N(μ_i, Σ_i) per stimulus (means and covariances over repeats).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from neuronscope.analyses._linalg import (
    center,
    centered_stats,
    crossprod,
    eigh,
    nuclear,
    polar,
    principal_axes,
    require_variance,
    rescale,
    scale_exponent,
    svd,
    unscale,
)
from neuronscope.analyses._metric import Metric
from neuronscope.errors import NeuronscopeError
from neuronscope.population import ArrayLike, id_coord, paired, split_repeats, to_matrix

_EIG_TOL = 1e-10


def _principal_scores(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores P (n, r) with PᵀP = diag(λ), a rotation of centered ``xc`` (rank-r part)."""
    n, p = xc.shape
    if p <= n:
        lam, v = eigh(crossprod(xc))
        lam = np.maximum(lam[::-1], 0.0)
        v = v[:, ::-1]
        keep = lam > _EIG_TOL * max(lam[0], 1e-300)
        return xc.astype(np.float64) @ v[:, keep], lam[keep]
    u, s, _ = svd(xc.astype(np.float64))
    lam = s**2
    keep = lam > _EIG_TOL * max(lam[0], 1e-300)
    return u[:, keep] * s[keep], lam[keep]


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise NeuronscopeError(f"alpha must be in [0, 1] (1 = no whitening, 0 = full whitening), not {alpha:g}")


def _whitened(X: ArrayLike, alpha: float) -> tuple[np.ndarray, int]:
    """``(φ_α(X) / 2^e, e)``: the partially whitened principal scores of ``X`` divided by a
    power of two (``e = 0`` unless the data's scale is extreme; see ``rescale``)."""
    _check_alpha(alpha)
    x = to_matrix(X)
    require_variance(x)
    x, e = rescale(x)
    scores, lam = _principal_scores(center(x))
    if lam.size == 0:
        raise NeuronscopeError("population has zero variance across stimuli (all columns constant)")
    return scores * whiten_scale(lam, alpha, e), e


def partial_whiten(X: ArrayLike, alpha: float = 1.0) -> np.ndarray:
    """φ_α of a centered population, returned as principal scores (a rotation of X φ_α).

    Scale d_k = α + (1 - α) λ_k^{-1/2} on principal axis k (λ_k eigenvalues of XᵀX, null
    directions dropped), rescaled so the total variance is preserved (netrep ``whiten``).
    ``alpha=1``: no whitening; ``alpha=0``: full whitening (CCA-like).
    """
    w, e = _whitened(X, alpha)
    return np.ldexp(w, e)


def whiten_scale(lam: np.ndarray, alpha: float, e: int = 0) -> np.ndarray:
    """Per-axis scale of φ_α: d_k = α + (1 - α) λ_k^{-1/2}, rescaled so Σ d_k² λ_k = Σ λ_k.

    ``lam`` may be the eigenvalues of the population divided by ``2^e`` (true eigenvalues
    ``lam · 4^e``); the scale is then that of the true population."""
    if alpha >= 1.0:
        return np.ones_like(lam)
    d = alpha + (1.0 - alpha) * np.ldexp(lam**-0.5, -e)
    d = d / d.max()  # the rescaling below fixes the overall size; this keeps d² finite
    return d * np.sqrt(lam.sum() / float(np.sum(d**2 * lam)))


def procrustes_from_terms(xx: float, yy: float, nuc: float) -> float:
    """Procrustes distance from ‖φX‖²_F, ‖φY‖²_F and ‖φXᵀφY‖_*: sqrt(xx + yy − 2 nuc)."""
    return float(np.sqrt(max(xx + yy - 2.0 * nuc, 0.0)))


def angular_from_terms(xx: float, yy: float, nuc: float) -> float:
    """Angular shape distance from the same terms: arccos(nuc / sqrt(xx yy))."""
    return float(np.arccos(np.clip(nuc / np.sqrt(xx * yy), -1.0, 1.0)))


def shape_factor(p: ArrayLike, alpha: float = 1.0, normalize: bool = False) -> tuple[np.ndarray, int]:
    """A population's partially whitened principal scores φ_α divided by ``2^e``, and ``e``
    (unit Frobenius norm and ``e = 0`` with ``normalize``), computed once for many shape
    comparisons (:func:`procrustes_pair`, :func:`angular_pair`)."""
    s, e = _whitened(p, alpha)
    return (s / np.linalg.norm(s), 0) if normalize else (s, e)


def procrustes_pair(fa: tuple[np.ndarray, int], fb: tuple[np.ndarray, int]) -> float:
    """Procrustes distance of two :func:`shape_factor` results: both brought to the larger
    of their two scales (exact), the distance computed there and scaled back."""
    (a, ea), (b, eb) = fa, fb
    e = max(ea, eb)
    d = procrustes_from_terms(*_terms(np.ldexp(a, ea - e) if ea != e else a, np.ldexp(b, eb - e) if eb != e else b))
    return unscale(d, e) if e else d


def angular_pair(fa: tuple[np.ndarray, int], fb: tuple[np.ndarray, int]) -> float:
    """Angular shape distance of two :func:`shape_factor` results (invariant to their scales)."""
    return angular_from_terms(*_terms(fa[0], fb[0]))


def _terms(px: np.ndarray, py: np.ndarray) -> tuple[float, float, float]:
    if px.shape[0] != py.shape[0]:
        raise NeuronscopeError("populations cover different numbers of stimuli; give the same stimuli")
    return float(np.sum(px**2)), float(np.sum(py**2)), nuclear(px.T @ py)


def procrustes_distance(X: ArrayLike, Y: ArrayLike, alpha: float = 1.0, normalize: bool = False) -> float:
    """Orthogonal Procrustes distance min_Q ‖φ_α(X) - φ_α(Y) Q‖_F (Williams et al. 2021).

    = sqrt(‖φX‖²_F + ‖φY‖²_F - 2 ‖φXᵀφY‖_*) after centering; ``alpha`` is the partial
    whitening (1 = none), ``normalize`` scales both to unit Frobenius norm first. 0 between
    a population and its rotated (or reflected, translated) copy; symmetric; triangle inequality.
    """
    x, y = paired(X, Y)
    return procrustes_pair(shape_factor(x, alpha, normalize), shape_factor(y, alpha, normalize))


def angular_shape_distance(X: ArrayLike, Y: ArrayLike, alpha: float = 1.0) -> float:
    """Angular shape metric θ = arccos(‖φXᵀφY‖_* / (‖φX‖_F ‖φY‖_F)) (Williams et al. 2021),
    in radians [0, π/2]; invariant to rotation, translation and isotropic scaling."""
    x, y = paired(X, Y)
    return angular_pair(shape_factor(x, alpha), shape_factor(y, alpha))


def _terms_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                      xty: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """The three terms from sufficient statistics: in the principal bases,
    ‖φX‖² = Σ d_k² λ_k and φXᵀφY = D_x V_xᵀ Cxy V_y D_y."""
    _check_alpha(alpha)
    cxx, cyy, cxy = centered_stats(n, sum_x, sum_y, xtx, yty, xty)
    (vx, lx), (vy, ly) = principal_axes(cxx, "X", _EIG_TOL), principal_axes(cyy, "Y", _EIG_TOL)
    dx, dy = whiten_scale(lx, alpha), whiten_scale(ly, alpha)
    m = dx[:, None] * (vx.T @ cxy @ vy) * dy[None, :]
    return float(np.sum(dx**2 * lx)), float(np.sum(dy**2 * ly)), nuclear(m)


def procrustes_distance_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                                   yty: np.ndarray, xty: np.ndarray, alpha: float = 1.0) -> float:
    """:func:`procrustes_distance` from sufficient statistics (n, Σx, Σy, XᵀX, YᵀY, XᵀY)."""
    return procrustes_from_terms(*_terms_from_stats(n, sum_x, sum_y, xtx, yty, xty, alpha))


def angular_shape_distance_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                                      yty: np.ndarray, xty: np.ndarray, alpha: float = 1.0) -> float:
    """:func:`angular_shape_distance` from sufficient statistics."""
    return angular_from_terms(*_terms_from_stats(n, sum_x, sum_y, xtx, yty, xty, alpha))


# --------------------------------------------------------------------------- stochastic


def _gaussian_stats(X: Any, stimulus: Any = None, repeat: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(means (M, r), covariances (M, r, r)) of the responses to each stimulus over repeats,
    divided by ``2^e`` and ``4^e``, and ``e`` (0 unless the data's scale is extreme)."""
    if isinstance(X, tuple) and len(X) == 2:
        mu, cov = _real(X[0], "means"), _real(X[1], "covariances")
        if mu.ndim != 2 or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]):
            raise NeuronscopeError("give (means (M, p), covariances (M, p, p)) for a Gaussian population")
        if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
            raise NeuronscopeError("means or covariances contain NaN or Inf; drop or impute those values first")
        em, ec = scale_exponent(mu), scale_exponent(cov)
        e = max(em, -(-ec // 2)) if em > 0 or ec > 0 else min(em, ec // 2)
        return np.ldexp(mu, -e), np.ldexp(cov, -2 * e), e
    if isinstance(X, xr.DataArray):
        by = id_coord(X)
        if by is None or "repeat" not in X.coords:
            raise NeuronscopeError("stochastic shape metrics need `stimulus` and `repeat` coordinates")
        stimulus, repeat = np.asarray(X.coords[by].values), np.asarray(X.coords["repeat"].values)
        X = to_matrix(X)
    a = _real(X, "responses")
    if a.ndim == 2:
        if stimulus is None:
            raise NeuronscopeError("give (stimuli, repeats, neurons) responses or stimulus/repeat labels")
        a = np.transpose(split_repeats(a, stimulus, repeat)[0], (1, 0, 2))
    if a.ndim != 3 or a.shape[1] < 2:
        raise NeuronscopeError("stochastic shape metrics need responses (stimuli, repeats >= 2, neurons)")
    if not np.isfinite(a).all():
        raise NeuronscopeError("responses contain NaN or Inf; drop or impute those values first")
    m, r, p = a.shape
    if m < 3:
        raise NeuronscopeError(f"{m} stimuli; comparisons need at least 3 stimuli")
    a, e = rescale(a)
    flat = a.reshape(m * r, p)
    flat = flat - flat.mean(0)
    if p > m * r:  # lossless rotation onto the span of all responses
        u, s, _ = svd(flat)
        keep = s > _EIG_TOL * s[0]
        flat = u[:, keep] * s[keep]
    a = flat.reshape(m, r, -1)
    mu = a.mean(1)
    dev = a - mu[:, None]
    cov = np.einsum("mri,mrj->mij", dev, dev) / (r - 1)
    return mu, cov, e


def _real(a: Any, what: str) -> np.ndarray:
    """``a`` as a float64 array; complex values are refused, not truncated."""
    a = np.asarray(a)
    if a.dtype.kind == "c":
        raise NeuronscopeError(f"{what} are complex-valued; give real responses (e.g. np.abs or .real first)")
    if a.dtype.kind not in "biuf":
        raise NeuronscopeError(f"{what} have dtype {a.dtype}; give numbers")
    return a.astype(np.float64, copy=False)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    lam, v = eigh(c)
    return (v * np.sqrt(np.maximum(lam, 0.0))[..., None, :]) @ np.swapaxes(v, -1, -2)


def stochastic_shape_distance(
    X: Any, Y: Any, alpha: float = 1.0, max_iter: int = 200, tol: float = 1e-10,
) -> float:
    """Stochastic shape distance between noisy populations (Duong et al. 2023).

    Each side is (stimuli, repeats, neurons) responses, a DataArray with ``stimulus`` and
    ``repeat`` coordinates, or a tuple (means (M, p), covariances (M, p, p)). Per stimulus i
    the response is summarised as N(μ_i, Σ_i) (centered across stimuli; neurons of different
    counts zero-padded) and

        d²(X, Y) = min_{T orthogonal} (1/M) Σ_i [α ‖μ^x_i - T μ^y_i‖²
                                            + (2 - α) B²(Σ^x_i, T Σ^y_i Tᵀ)],

    with the Bures distance B²(A, B) = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}. ``alpha=1``
    is the mean squared 2-Wasserstein distance, ``alpha=2`` the (scaled) Procrustes distance of
    the means, ``alpha=0`` compares the noise only. Since B(A, B) = min_U ‖A^{1/2} - B^{1/2} U‖,
    T is found by alternating Procrustes steps over T and the per-stimulus U_i (each step
    lowers d², started from the alignment of the means).
    """
    if not 0.0 <= alpha <= 2.0:
        raise NeuronscopeError("alpha must be in [0, 2] (2 = means only, 0 = covariances only)")
    mx, cx, ex = _gaussian_stats(X)
    my, cy, ey = _gaussian_stats(Y)
    if mx.shape[0] != my.shape[0]:
        raise NeuronscopeError(f"{mx.shape[0]} vs {my.shape[0]} stimuli; give the same stimuli")
    e = max(ex, ey)  # both sides at the larger scale (exact), the distance scaled back at the end
    mx, cx, my, cy = np.ldexp(mx, ex - e), np.ldexp(cx, 2 * (ex - e)), np.ldexp(my, ey - e), np.ldexp(cy, 2 * (ey - e))
    mx, my = mx - mx.mean(0), my - my.mean(0)
    r = max(mx.shape[1], my.shape[1])

    def pad(mu: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = r - mu.shape[1]
        return np.pad(mu, ((0, 0), (0, k))), np.pad(c, ((0, 0), (0, k), (0, k)))

    (mx, cx), (my, cy) = pad(mx, cx), pad(my, cy)
    sx, sy = _psd_sqrt(cx), _psd_sqrt(cy)
    m = mx.shape[0]
    wa, wb = np.sqrt(alpha), np.sqrt(2.0 - alpha)

    def objective(t: np.ndarray) -> float:
        ty = np.einsum("ij,mjk->mik", t, sy)  # T Σy^{1/2}
        nuc = sum(nuclear(sx[i].T @ ty[i]) for i in range(m))
        bures = np.trace(cx, axis1=1, axis2=2).sum() + np.trace(cy, axis1=1, axis2=2).sum() - 2 * nuc
        mean_term = np.sum((mx - my @ t.T) ** 2)
        return float(alpha * mean_term + (2.0 - alpha) * bures) / m

    t = polar(mx.T @ my) if alpha > 0 and np.any(mx) and np.any(my) else np.eye(r)
    best = objective(t)
    for _ in range(max_iter):
        ty = np.einsum("ij,mjk->mik", t, sy)
        us = np.stack([polar(ty[i].T @ sx[i]) for i in range(m)])  # optimal U_i given T
        ax = np.concatenate([wa * mx.T] + [wb * sx[i] for i in range(m)], axis=1)
        by = np.concatenate([wa * my.T] + [wb * sy[i] @ us[i] for i in range(m)], axis=1)
        t_new = polar(ax @ by.T)
        val = objective(t_new)
        if val > best - tol * max(best, 1.0):
            if val < best:
                t, best = t_new, val
            break
        t, best = t_new, val
    return unscale(float(np.sqrt(max(best, 0.0))), e)


PROCRUSTES = Metric("procrustes", procrustes_distance, False, options=("alpha", "normalize"),
                    factor=shape_factor, pair=lambda a, b, **_: procrustes_pair(a, b),
                    factored_options=("alpha", "normalize"))
ANGULAR = Metric("shape", angular_shape_distance, False, options=("alpha",),
                 factor=shape_factor, pair=lambda a, b, **_: angular_pair(a, b),
                 factored_options=("alpha",))
STOCHASTIC_SHAPE = Metric("stochastic_shape", stochastic_shape_distance, False,
                          options=("alpha", "max_iter", "tol"))
