"""Compare representations: one entry point over every metric, the many-vs-many matrix,
and the linear metrics from streamed sufficient statistics.

* :func:`compare` — ``compare(a, b, metric, **kw)`` dispatches to the metric functions
  (re-exported here: :func:`linear_cka`, :func:`rsa`, :func:`trsa`, :func:`procrustes_distance`,
  :func:`encoding_score`, …); all take ``f(X (n, p), Y (n, q), **kw)``.
* :func:`compare_all` — the full matrix over many populations (models × layers × subjects)
  with each population's own factor (centered matrix and its norm, RDM, principal basis)
  computed once, so a pair costs one cross product.
* :class:`CrossStats` and ``*_from_stats`` — n, Σx, Σy, XᵀX, YᵀY, XᵀY accumulated in one pass
  over a corpus larger than memory (float64, mergeable; a layer over
  :class:`~neuronscope.summaries.crossprod.CrossProducts`, whose ``sufficient_stats()`` the
  functions accept too); linear CKA, CCA/SVCCA/PWCCA, Procrustes/angular shape distances and
  ridge regression from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.analyses.cca import (
    _basis,
    _basis_from_cov,
    _cca_core,
    _centered_stats,
    _pwcca_from_result,
    canonical_correlations,
    cca,
    cca_from_stats,
    mean_cca,
    pwcca,
    pwcca_from_stats,
    svcca,
    svcca_from_stats,
)
from neuronscope.analyses.cka import (
    _ata,
    _center,
    _eigh,
    _feature_space,
    _frob2,
    _gram,
    debiased_cka,
    deconfounded_cka,
    linear_cka,
    rbf_cka,
)
from neuronscope.analyses.encoding import (
    RidgeEncoder,
    encoding_ceiling,
    encoding_score,
    ncsnr,
    split_half_reliability,
)
from neuronscope.analyses.rsa import (
    RDMs,
    _to_rdms,
    compare_rdms,
    deconfounded_rsa,
    geotopological_transform,
    noise_ceiling,
    rdm,
    rsa,
    trsa,
)
from neuronscope.analyses.shape import (
    _nuclear,
    _principal_scores,
    angular_shape_distance,
    procrustes_distance,
    stochastic_shape_distance,
    whiten_scale,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.population import average_repeats, id_coord, to_matrix
from neuronscope.summaries.crossprod import CrossProducts

__all__ = [
    "CrossStats", "RDMs", "RidgeEncoder", "METRICS", "angular_shape_distance",
    "angular_shape_distance_from_stats", "canonical_correlations", "cca", "cca_from_stats",
    "compare", "compare_all", "compare_rdms", "debiased_cka", "deconfounded_cka",
    "deconfounded_rsa", "encoding_ceiling", "encoding_score", "geotopological_transform",
    "linear_cka", "linear_cka_from_stats", "mean_cca", "ncsnr", "noise_ceiling",
    "procrustes_distance", "procrustes_distance_from_stats", "pwcca", "pwcca_from_stats",
    "rbf_cka", "rdm", "ridge_from_stats", "rsa", "split_half_reliability",
    "stochastic_shape_distance", "svcca", "svcca_from_stats", "trsa",
]


def _encoding_mean(X: Any, Y: Any, **kw: Any) -> float:
    """Mean held-out Pearson r over targets (see :func:`encoding_score`)."""
    return float(np.nanmean(encoding_score(X, Y, **kw)))


#: metric name -> (function, higher_is_more_similar)
METRICS: dict[str, tuple[Callable[..., float], bool]] = {
    "cka": (linear_cka, True),
    "linear_cka": (linear_cka, True),
    "debiased_cka": (debiased_cka, True),
    "rbf_cka": (rbf_cka, True),
    "rsa": (rsa, True),
    "trsa": (trsa, True),
    "cca": (mean_cca, True),
    "svcca": (svcca, True),
    "pwcca": (pwcca, True),
    "procrustes": (procrustes_distance, False),
    "shape": (angular_shape_distance, False),
    "angular": (angular_shape_distance, False),
    "stochastic_shape": (stochastic_shape_distance, False),
    "deconfounded_cka": (deconfounded_cka, True),
    "deconfounded_rsa": (deconfounded_rsa, True),
    "encoding": (_encoding_mean, True),
}
_SYMMETRIC = {"cka", "linear_cka", "debiased_cka", "rbf_cka", "rsa", "trsa", "cca", "svcca",
              "procrustes", "shape", "angular", "stochastic_shape", "deconfounded_cka",
              "deconfounded_rsa"}


def _metric(name: str) -> Callable[..., float]:
    if name not in METRICS:
        raise NeuronscopeError(f"unknown metric {name!r}; use one of {', '.join(sorted(METRICS))}")
    return METRICS[name][0]


def compare(a: Any, b: Any, metric: str = "cka", **kw: Any) -> float:
    """Similarity (or distance) of two populations under ``metric``.

    Metrics: ``cka`` (linear CKA), ``debiased_cka``, ``rbf_cka``, ``rsa``, ``trsa``, ``cca``
    (mean canonical correlation), ``svcca``, ``pwcca``, ``procrustes`` (distance),
    ``shape``/``angular`` (angular shape distance), ``stochastic_shape``, ``deconfounded_cka``
    and ``deconfounded_rsa`` (need ``inputs=``), ``encoding`` (mean held-out ridge r of b from a).
    Keyword arguments go to the metric function.
    """
    return float(_metric(metric)(a, b, **kw))


# --------------------------------------------------------------------------- many vs many


def _prepared(pops: Sequence[Any]) -> list[Any]:
    """Average repeats and align every DataArray to the first one's stimulus order."""
    out = [average_repeats(p) if isinstance(p, xr.DataArray) and "repeat" in p.coords else p for p in pops]
    ref = next((p for p in out if isinstance(p, xr.DataArray) and id_coord(p)), None)
    if ref is None:
        return out
    by = id_coord(ref)
    ids = np.asarray(ref.coords[by].values)
    aligned = []
    for i, p in enumerate(out):
        if isinstance(p, xr.DataArray) and id_coord(p) == by:
            pid = np.asarray(p.coords[by].values)
            if not np.array_equal(pid, ids):
                pos = {v: k for k, v in enumerate(pid.tolist())}
                if len(pos) != len(pid) or set(pos) != set(ids.tolist()):
                    raise NeuronscopeError(
                        f"population {i} has different or duplicate {by} ids than population 0; "
                        "select the common stimuli first"
                    )
                p = p.isel(sample=[pos[v] for v in ids.tolist()])
        aligned.append(p)
    return aligned


def _cka_factor(p: Any) -> tuple[str, np.ndarray, float]:
    xc = _center(to_matrix(p))
    n, d = xc.shape
    if _feature_space(n, d, d):
        return "x", xc, float(np.sqrt(_frob2(_ata(xc))))
    k = _gram(xc)
    return "k", k, float(np.sqrt(_frob2(k)))


def _cka_pair(fa: tuple[str, np.ndarray, float], fb: tuple[str, np.ndarray, float]) -> float:
    (ka, a, na), (kb, b, nb) = fa, fb
    if a.shape[0] != b.shape[0]:
        raise NeuronscopeError("populations cover different numbers of stimuli; give the same stimuli")
    if ka == "x" and kb == "x":
        xy = _frob2(_ata(a, b))
    elif ka == "k" and kb == "k":
        xy = float(np.einsum("ij,ij->", a, b))
    else:
        k, x = (a, b) if ka == "k" else (b, a)
        x64 = x.astype(np.float64)
        xy = float(np.einsum("ij,ij->", k @ x64, x64))
    if na <= 0 or nb <= 0:
        raise NeuronscopeError("a population has zero variance across stimuli (all columns constant)")
    return float(np.clip(xy / (na * nb), -1.0, 1.0))


def compare_all(
    populations: Mapping[str, Any] | Sequence[Any],
    metric: str = "cka",
    others: Mapping[str, Any] | Sequence[Any] | None = None,
    **kw: Any,
) -> xr.DataArray:
    """The matrix of ``metric`` between every pair of populations.

    ``populations`` (and optionally ``others`` for a rectangular rows × columns matrix) is a
    mapping name -> population (array, DataArray, or for RSA an :class:`RDMs`) or a sequence
    (named "0", "1", …). Per-population factors are computed once: for linear CKA the
    centered matrix and ‖XᵀX‖_F (or the Gram matrix when neurons outnumber stimuli), for
    RSA/tRSA the (transformed) RDM, for Procrustes/angular the (partially whitened)
    principal scores, for CCA/SVCCA/PWCCA the principal basis. Other metrics run pairwise.
    Returns an ``xarray.DataArray`` with dims ``("a", "b")``.
    """
    def named(p: Mapping[str, Any] | Sequence[Any]) -> tuple[list[str], list[Any]]:
        if isinstance(p, Mapping):
            return [str(k) for k in p], list(p.values())
        return [str(i) for i in range(len(p))], list(p)

    names_a, pops_a = named(populations)
    square = others is None
    names_b, pops_b = (names_a, pops_a) if square else named(others)
    if not pops_a or not pops_b:
        raise NeuronscopeError("compare_all needs at least one population on each side")
    allp = _prepared(pops_a + ([] if square else pops_b))
    pa, pb = allp[: len(pops_a)], (allp[: len(pops_a)] if square else allp[len(pops_a) :])
    _metric(metric)
    if metric not in ("rsa", "trsa") and any(isinstance(p, RDMs) for p in allp):
        raise NeuronscopeError(f"precomputed RDMs only support metric rsa or trsa, not {metric!r}")

    factor: Callable[[Any], Any] | None = None
    pair: Callable[[Any, Any], float] | None = None
    if metric in ("cka", "linear_cka") and not kw:
        factor, pair = _cka_factor, _cka_pair
    elif metric in ("rsa", "trsa"):
        rdm_method = kw.get("rdm_method", "correlation")
        comp = kw.get("compare", "spearman" if metric == "rsa" else "pearson")

        def factor(p: Any) -> RDMs:
            r = _to_rdms(p, rdm_method)
            if metric == "trsa":
                r = RDMs(geotopological_transform(r, kw.get("low", 0.1), kw.get("up", 0.9)))
            return r

        def pair(a: RDMs, b: RDMs) -> float:
            if a.stimulus is not None and b.stimulus is not None and not np.array_equal(a.stimulus, b.stimulus):
                b = b.reorder(a.stimulus)
            return float(np.mean(compare_rdms(a, b, comp)))
    elif metric in ("procrustes", "shape", "angular"):
        alpha = kw.get("alpha", 1.0)
        normalize = kw.get("normalize", False)

        def factor(p: Any) -> np.ndarray:
            s, lam = _principal_scores(_center(to_matrix(p)))
            s = s * whiten_scale(lam, alpha)
            return s / np.linalg.norm(s) if normalize and metric == "procrustes" else s

        def pair(a: np.ndarray, b: np.ndarray) -> float:
            xx, yy, nuc = float(np.sum(a**2)), float(np.sum(b**2)), _nuclear(a.T @ b)
            if metric == "procrustes":
                return float(np.sqrt(max(xx + yy - 2 * nuc, 0.0)))
            return float(np.arccos(np.clip(nuc / np.sqrt(xx * yy), -1.0, 1.0)))
    elif metric in ("cca", "svcca", "pwcca"):
        keep = kw.get("keep", 0.99 if metric == "svcca" else None)
        eps = kw.get("eps", 1e-10)

        def factor(p: Any) -> Any:
            return _basis(to_matrix(p), "population")

        def pair(a: Any, b: Any) -> float:
            res = _cca_core(a, b, a.scores.T @ b.scores, keep, eps)
            return _pwcca_from_result(res, kw.get("side", "auto")) if metric == "pwcca" else float(np.mean(res.rho))

    out = np.full((len(pa), len(pb)), np.nan)
    if factor is not None and pair is not None:
        fa = [factor(p) for p in pa]
        fb = fa if square else [factor(p) for p in pb]
        fn = pair
    else:
        fa, fb = pa, pb

        def fn(a: Any, b: Any) -> float:
            return compare(a, b, metric, **kw)

    sym = square and metric in _SYMMETRIC
    for i in range(len(pa)):
        for j in range(len(pb)):
            if sym and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = fn(fa[i], fb[j])
    return xr.DataArray(out, dims=("a", "b"), coords={"a": names_a, "b": names_b},
                        name=metric, attrs={"metric": metric})


# --------------------------------------------------------------------------- streamed statistics


class CrossStats:
    """One-pass sufficient statistics of two populations seen in lockstep, in the form the
    ``*_from_stats`` functions take.

    n, Σx, Σy, XᵀX, YᵀY (or only its diagonal Σy², ``full_yty=False``, enough for ridge, so
    50k-voxel targets fit) and XᵀY, accumulated by
    :class:`neuronscope.summaries.crossprod.CrossProducts` (``gram=True``, or ``gram="x"``
    without the full YᵀY; available as :attr:`cross`): rows are shifted by the first batch's
    means before the products (the shifted-data algorithm) so float32 activations with large
    means keep their centered variance, float32 batches multiply in float32 and add in
    float64 (float64 batches multiply in float64), and :meth:`result` converts back to raw
    moments in float64. ``merge`` is exact and associative, so chunks can be reduced on Dask
    workers.
    """

    def __init__(self, p: int, q: int, full_yty: bool = True):
        self.full_yty = bool(full_yty)
        self.cross = CrossProducts(p, q, gram=True if self.full_yty else "x")

    @property
    def n(self) -> int:
        """Number of rows folded in so far."""
        self.cross.flush()
        return self.cross.n

    def update(self, x: np.ndarray, y: np.ndarray) -> CrossStats:
        """Fold in a batch of paired rows ``x`` (b, p), ``y`` (b, q); rejects NaN/Inf."""
        self.cross.update_pair(x, y)
        return self

    def merge(self, other: CrossStats) -> CrossStats:
        """Add another CrossStats of disjoint rows (in place)."""
        if other.full_yty != self.full_yty or (other.cross.nx, other.cross.ny) != (
            self.cross.nx, self.cross.ny
        ):
            raise NeuronscopeError(
                "cannot merge CrossStats of different shapes; build both with the same p, q, "
                "full_yty"
            )
        self.cross.merge(other.cross)
        return self

    def result(self) -> dict[str, Any]:
        """``dict(n, sum_x, sum_y, xtx, yty, xty)`` of the raw rows — the keyword arguments
        of the ``*_from_stats`` functions (``yty`` is the diagonal with ``full_yty=False``)."""
        return self.cross.sufficient_stats()

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON attributes to rebuild this object (``from_state``); the state of
        the underlying ``CrossProducts``."""
        return self.cross.state()

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> CrossStats:
        """Rebuild from :meth:`state`."""
        cross = CrossProducts.from_state(arrays, attrs)
        if not cross.gram_x:
            raise NeuronscopeError("this state has no XᵀX; pass the state of a CrossStats")
        obj = cls.__new__(cls)
        obj.full_yty, obj.cross = cross.gram_y, cross
        return obj


def _fold_stats(f: CrossStats | CrossProducts | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(f, CrossStats):
        return f.result()
    if isinstance(f, CrossProducts):
        return f.sufficient_stats()
    return dict(f)


def linear_cka_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                          yty: np.ndarray, xty: np.ndarray) -> float:
    """Linear CKA from sufficient statistics: with C = XᵀX - ΣxΣxᵀ/n (etc.),
    CKA = ‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F) — equal to :func:`linear_cka` on the same rows."""
    cxx, cyy, cxy = _centered_stats(n, sum_x, sum_y, xtx, yty, xty)
    den = np.sqrt(_frob2(cxx) * _frob2(cyy))
    if den <= 0:
        raise NeuronscopeError("a population has zero variance across stimuli (all columns constant)")
    return float(np.clip(_frob2(cxy) / den, -1.0, 1.0))


def _shape_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray, yty: np.ndarray,
                      xty: np.ndarray, alpha: float) -> tuple[float, float, float]:
    cxx, cyy, cxy = _centered_stats(n, sum_x, sum_y, xtx, yty, xty)
    bx, by = _basis_from_cov(cxx, "X"), _basis_from_cov(cyy, "Y")
    dx, dy = whiten_scale(bx.lam, alpha), whiten_scale(by.lam, alpha)
    m = dx[:, None] * (bx.vecs.T @ cxy @ by.vecs) * dy[None, :]
    return float(np.sum(dx**2 * bx.lam)), float(np.sum(dy**2 * by.lam)), _nuclear(m)


def procrustes_distance_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                                   yty: np.ndarray, xty: np.ndarray, alpha: float = 1.0) -> float:
    """:func:`procrustes_distance` from sufficient statistics: in the principal bases,
    ‖φX‖² = Σ d_k² λ_k and φXᵀφY = D_x V_xᵀ Cxy V_y D_y."""
    xx, yy, nuc = _shape_from_stats(n, sum_x, sum_y, xtx, yty, xty, alpha)
    return float(np.sqrt(max(xx + yy - 2 * nuc, 0.0)))


def angular_shape_distance_from_stats(n: int, sum_x: np.ndarray, sum_y: np.ndarray, xtx: np.ndarray,
                                      yty: np.ndarray, xty: np.ndarray, alpha: float = 1.0) -> float:
    """:func:`angular_shape_distance` from sufficient statistics."""
    xx, yy, nuc = _shape_from_stats(n, sum_x, sum_y, xtx, yty, xty, alpha)
    return float(np.arccos(np.clip(nuc / np.sqrt(xx * yy), -1.0, 1.0)))


def ridge_from_stats(
    folds: Sequence[CrossStats | CrossProducts | Mapping[str, Any]],
    alphas: Sequence[float] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6),
    alpha_per_target: bool = True,
) -> dict[str, np.ndarray]:
    """Ridge regression with k-fold α selection from per-fold sufficient statistics.

    ``folds`` are the CrossStats (or ``CrossProducts`` with ``gram="x"`` or ``True``, or the
    dicts of ``CrossStats.result()``) of k disjoint parts of the corpus (e.g. documents hashed to k folds
    during the one pass; ``full_yty=False`` suffices). For fold f and α the model is
    fit on the other folds' centered statistics, W = (Cxx + αI)⁻¹ Cxy, and its held-out error
    Σ(y - ŷ)² = Σ(y - ȳ)² - 2 wᵀ X̃ᵀỹ + wᵀ X̃ᵀX̃ w is read from fold f's statistics (X̃, ỹ
    centered at the training means). Returns ``coef`` (p, t) and ``intercept`` (t,) refit on
    all folds at the chosen ``alpha`` (t,), and ``cv_mse`` (n_alphas, t). Matches
    :class:`RidgeEncoder` (``scoring="mse"``) on the same folds.
    """
    st = [_fold_stats(f) for f in folds]
    if len(st) < 2:
        raise NeuronscopeError("ridge_from_stats needs the statistics of at least 2 folds")
    alphas = np.asarray(alphas, dtype=np.float64)

    def yy_diag(s: Mapping[str, Any]) -> np.ndarray:
        y = np.asarray(s["yty"])
        return np.diagonal(y).copy() if y.ndim == 2 else y

    tot = {k: sum(np.asarray(s[k], np.float64) for s in st) for k in ("sum_x", "sum_y", "xtx", "xty")}
    tot["n"] = sum(int(s["n"]) for s in st)
    n_all = tot["n"]
    t = len(tot["sum_y"])
    sse = np.zeros((len(alphas), t))
    for s in st:
        nf = int(s["n"])
        ntr = n_all - nf
        mx = (tot["sum_x"] - s["sum_x"]) / ntr
        my = (tot["sum_y"] - s["sum_y"]) / ntr
        cxx = (tot["xtx"] - s["xtx"]) - ntr * np.outer(mx, mx)
        cxy = (tot["xty"] - s["xty"]) - ntr * np.outer(mx, my)
        lam, v = _eigh(cxx)
        lam = np.maximum(lam, 0.0)
        b = v.T @ cxy
        # held-out fold statistics centered at the training means
        sx, sy = np.asarray(s["sum_x"]), np.asarray(s["sum_y"])
        txx = s["xtx"] - np.outer(sx, mx) - np.outer(mx, sx) + nf * np.outer(mx, mx)
        txy = s["xty"] - np.outer(sx, my) - np.outer(mx, sy) + nf * np.outer(mx, my)
        tyy = yy_diag(s) - 2 * sy * my + nf * my**2
        txx_v = v.T @ txx @ v
        txy_v = v.T @ txy
        for j, a in enumerate(alphas):
            w = b / (lam + a)[:, None]  # coefficients in the eigenbasis
            sse[j] += tyy - 2 * np.einsum("kt,kt->t", w, txy_v) + np.einsum("kt,kt->t", w, txx_v @ w)
    cv_mse = sse / n_all
    best = np.argmin(cv_mse, axis=0) if alpha_per_target else np.full(t, int(np.argmin(cv_mse.sum(1))))
    alpha = alphas[best]
    mx, my = tot["sum_x"] / n_all, tot["sum_y"] / n_all
    cxx = tot["xtx"] - n_all * np.outer(mx, mx)
    cxy = tot["xty"] - n_all * np.outer(mx, my)
    lam, v = _eigh(cxx)
    coef = v @ ((v.T @ cxy) / (np.maximum(lam, 0.0)[:, None] + alpha[None, :]))
    return {"coef": coef, "intercept": my - mx @ coef, "alpha": alpha, "cv_mse": cv_mse}
