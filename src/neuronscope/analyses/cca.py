"""Canonical correlation analysis family: CCA, SVCCA, PWCCA (regularised, rank-safe).

* CCA (Hotelling 1936): canonical correlations ρ_i are the singular values of
  (Σxx + εI)^{-1/2} Σxy (Σyy + εI)^{-1/2}.
* SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical
  Correlation Analysis for Deep Learning Dynamics and Interpretability"): keep the top
  singular directions of each side explaining ``keep`` (default 99 %) of the variance, then
  CCA; the score is the mean ρ.
* PWCCA (Morcos, Raghu & Bengio 2018, "Insights on representational similarity in neural
  networks with canonical correlation"): Σ α_i ρ_i / Σ α_i with α_i = Σ_j |⟨h_i, x_j⟩|, h_i the
  unit-norm canonical variates of one side and x_j its (centered) neurons.

Everything runs in each side's principal basis (Xc = S Vᵀ, SᵀS = diag(λ)): null directions
(λ <= 1e-10 λ_max) are dropped and ε = ``eps`` · λ_max is added, so rank-deficient or
constant-column input never gives NaN. Each side is divided by a power of two near its largest
magnitude when that is extreme (exact; every score here is invariant to the scale of either
side), so the scores at 1e±150 equal those at 1. The same core runs on streamed sufficient
statistics (:func:`cca_from_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuronscope.analyses._linalg import (
    center,
    centered_stats,
    crossprod,
    principal_axes,
    require_variance,
    rescale,
    svd,
)
from neuronscope.analyses._metric import Metric
from neuronscope.errors import NeuronscopeError
from neuronscope.population import ArrayLike, paired, to_matrix

_TOL = 1e-10


@dataclass
class _Basis:
    vecs: np.ndarray  # (p, r) principal axes
    lam: np.ndarray  # (r,) eigenvalues of XcᵀXc, descending, > 0
    scores: np.ndarray | None  # (n, r) = Xc V (in-memory only)


def _basis_from_cov(c: np.ndarray, what: str) -> _Basis:
    vecs, lam = principal_axes(c, what, _TOL)
    return _Basis(vecs, lam, None)


def _basis(x: np.ndarray, what: str) -> _Basis:
    """The principal basis of a population (of ``x`` divided by a power of two when its scale
    is extreme: the scores are invariant to it)."""
    require_variance(x, what)
    xc = center(rescale(x)[0])
    n, p = xc.shape
    if p <= n:
        b = _basis_from_cov(crossprod(xc), what)
        b.scores = xc.astype(np.float64) @ b.vecs
        return b
    u, s, vt = svd(xc.astype(np.float64))
    lam = s**2
    if lam[0] <= 0:
        raise NeuronscopeError(f"{what} has zero variance across stimuli (all columns constant)")
    keep = lam > _TOL * lam[0]
    return _Basis(vt[keep].T, lam[keep], u[:, keep] * s[keep])


def _n_keep(lam: np.ndarray, keep: float | int | None) -> int:
    if keep is None:
        return len(lam)
    if isinstance(keep, int | np.integer) and not isinstance(keep, bool) and keep >= 1:
        return int(min(keep, len(lam)))
    if 0 < float(keep) <= 1:
        frac = np.cumsum(lam) / lam.sum()
        return int(min(np.searchsorted(frac, float(keep) - 1e-12) + 1, len(lam)))
    raise NeuronscopeError("keep must be a variance fraction in (0, 1] or a number of dimensions >= 1")


@dataclass
class CCAResult:
    """Canonical correlations ``rho`` (descending) and, per side, the canonical directions in
    the principal basis (``ax``, ``ay``) with that basis (of the side divided by a power of
    two when its scale is extreme, see :func:`~neuronscope.analyses._linalg.rescale`)."""

    rho: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    bx: _Basis
    by: _Basis


def _cca_core(bx: _Basis, by: _Basis, mxy: np.ndarray, keep: float | int | None, eps: float) -> CCAResult:
    kx, ky = _n_keep(bx.lam, keep), _n_keep(by.lam, keep)
    wx = 1.0 / np.sqrt(bx.lam[:kx] + eps * bx.lam[0])
    wy = 1.0 / np.sqrt(by.lam[:ky] + eps * by.lam[0])
    t = wx[:, None] * mxy[:kx, :ky] * wy[None, :]
    u, rho, vt = svd(t)
    rho = np.clip(rho, 0.0, 1.0)
    bx2 = _Basis(bx.vecs[:, :kx], bx.lam[:kx], None if bx.scores is None else bx.scores[:, :kx])
    by2 = _Basis(by.vecs[:, :ky], by.lam[:ky], None if by.scores is None else by.scores[:, :ky])
    return CCAResult(rho, wx[:, None] * u, wy[:, None] * vt.T, bx2, by2)


def cca(X: ArrayLike, Y: ArrayLike, keep: float | int | None = None, eps: float = 1e-10) -> CCAResult:
    """Regularised CCA of two populations (n, p), (n, q); see the module docstring."""
    x, y = paired(X, Y)
    bx, by = _basis(x, "X"), _basis(y, "Y")
    return _cca_core(bx, by, bx.scores.T @ by.scores, keep, eps)


def canonical_correlations(X: ArrayLike, Y: ArrayLike, keep: float | int | None = None,
                           eps: float = 1e-10) -> np.ndarray:
    """The canonical correlations ρ_1 >= ρ_2 >= … of X and Y (min(rank X, rank Y) of them).
    Invariant to invertible linear maps of either side (exactly so for ``eps=0``)."""
    return cca(X, Y, keep, eps).rho


def mean_cca(X: ArrayLike, Y: ArrayLike, eps: float = 1e-10) -> float:
    """Mean canonical correlation (Yanai's / mean-ρ CCA similarity) without truncation."""
    return float(np.mean(canonical_correlations(X, Y, None, eps)))


def svcca(X: ArrayLike, Y: ArrayLike, keep: float | int = 0.99, eps: float = 1e-10) -> float:
    """SVCCA similarity (Raghu et al. 2017): mean canonical correlation after keeping, on each
    side, the top singular directions explaining ``keep`` of the variance (or ``keep`` dims)."""
    return float(np.mean(cca(X, Y, keep, eps).rho))


def _pwcca_weights(basis: _Basis, a: np.ndarray) -> np.ndarray:
    # h_i = Xc V a_i; ⟨h_i, x_j⟩ = (V diag(λ) a_i)_j; ‖h_i‖² = a_iᵀ diag(λ) a_i.
    proj = basis.vecs @ (basis.lam[:, None] * a)
    norms = np.sqrt(np.maximum(np.einsum("ki,k,ki->i", a, basis.lam, a), 1e-300))
    w = np.abs(proj).sum(0) / norms
    return w


def _pwcca_from_result(res: CCAResult, side: str) -> float:
    if side == "auto":
        side = "x" if res.bx.vecs.shape[0] <= res.by.vecs.shape[0] else "y"
    if side not in ("x", "y"):
        raise NeuronscopeError("side must be 'x', 'y' or 'auto'")
    w = _pwcca_weights(res.bx, res.ax) if side == "x" else _pwcca_weights(res.by, res.ay)
    if w.sum() <= 0:
        return float(np.mean(res.rho))
    return float(np.sum(w * res.rho) / w.sum())


def pwcca(X: ArrayLike, Y: ArrayLike, keep: float | int | None = None, eps: float = 1e-10,
          side: str = "auto") -> float:
    """Projection-weighted CCA (Morcos et al. 2018): Σ α_i ρ_i / Σ α_i, α_i = Σ_j |⟨h_i, x_j⟩|.

    The weights come from ``side`` ("x", "y", or "auto": the side with fewer neurons, as the
    reference implementation). Canonical variates h_i are unit-norm.
    """
    return _pwcca_from_result(cca(X, Y, keep, eps), side)


# --------------------------------------------------------------------------- streamed


def cca_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                   xty: np.ndarray, keep: float | int | None = None, eps: float = 1e-10) -> CCAResult:
    """CCA from sufficient statistics (n, Σx, Σy, XᵀX, YᵀY, XᵀY) accumulated in one pass;
    centered covariances C = XᵀX - ΣxΣxᵀ/n etc., then the same core as :func:`cca`."""
    cxx, cyy, cxy = centered_stats(n, sum_x, sum_y, xtx, yty, xty)
    bx, by = _basis_from_cov(cxx, "X"), _basis_from_cov(cyy, "Y")
    return _cca_core(bx, by, bx.vecs.T @ cxy @ by.vecs, keep, eps)


def svcca_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                     xty: np.ndarray, keep: float | int = 0.99, eps: float = 1e-10) -> float:
    """:func:`svcca` from streamed sufficient statistics."""
    return float(np.mean(cca_from_stats(n, sum_x, sum_y, xtx, yty, xty, keep, eps).rho))


def pwcca_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                     xty: np.ndarray, keep: float | int | None = None, eps: float = 1e-10,
                     side: str = "auto") -> float:
    """:func:`pwcca` from streamed sufficient statistics (the weights need only XᵀX)."""
    return _pwcca_from_result(cca_from_stats(n, sum_x, sum_y, xtx, yty, xty, keep, eps), side)


# --------------------------------------------------------------------------- many vs many


def cca_factor(p: ArrayLike, **_: object) -> _Basis:
    """A population's principal basis (computed once for many CCA comparisons)."""
    return _basis(to_matrix(p), "population")


def _factored(metric: str):
    def pair(bx: _Basis, by: _Basis, keep: float | int | None = None, eps: float = 1e-10,
             side: str = "auto") -> float:
        if bx.scores.shape[0] != by.scores.shape[0]:
            raise NeuronscopeError("populations cover different numbers of stimuli; give the same stimuli")
        if metric == "svcca" and keep is None:
            keep = 0.99
        res = _cca_core(bx, by, bx.scores.T @ by.scores, keep, eps)
        return _pwcca_from_result(res, side) if metric == "pwcca" else float(np.mean(res.rho))

    return pair


MEAN_CCA = Metric("cca", mean_cca, True, options=("eps",), factor=cca_factor, pair=_factored("cca"),
                  factored_options=("eps",))
SVCCA = Metric("svcca", svcca, True, options=("keep", "eps"), factor=cca_factor,
               pair=_factored("svcca"), factored_options=("keep", "eps"))
PWCCA = Metric("pwcca", pwcca, True, symmetric=False, options=("keep", "eps", "side"),
               factor=cca_factor, pair=_factored("pwcca"), factored_options=("keep", "eps", "side"))
