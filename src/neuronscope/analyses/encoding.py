"""Ridge encoding models with a per-target α chosen by k-fold cross-validation, and the
noise ceilings they are normalised by.

The model of the voxel-/neuron-wise encoding literature (e.g. Antonello, Vaidya & Huth
2023, "Scaling laws for language encoding models in fMRI"): for each target t,

    ŵ_t = argmin_w ‖y_t - X w‖² + α_t ‖w‖² = (XᵀX + α_t I)⁻¹ Xᵀ y_t   (X, y centered),

with α_t chosen from a grid by k-fold cross-validation on the training data, and the model
scored by the Pearson r between held-out predictions and responses. One eigendecomposition
per fold serves every α and target: XᵀX = V Λ Vᵀ gives ŷ = (X_te V) diag(1/(λ + α)) (Vᵀ Xᵀ y)
(primal, p <= n) and K = X Xᵀ = U M Uᵀ the dual form (p > n). Targets run in batches, so
50k voxels fit; the p × t coefficient matrix is only formed when asked (``keep_coef``).

Noise ceilings: split-half reliability with the Spearman-Brown correction, and the
noise-ceiling SNR (NCSNR) of Allen et al. 2022 (the Natural Scenes Dataset).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError as _SkNotFitted
from sklearn.utils.validation import validate_data

from neuronscope.analyses._linalg import crossprod, eigh, gram, require_variance, rescale
from neuronscope.analyses._metric import Metric
from neuronscope.errors import NeuronscopeError
from neuronscope.population import (
    ArrayLike,
    align,
    average_repeats,
    id_coord,
    split_repeats,
    to_matrix,
)

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 9))


def kfold_indices(n: int, k: int) -> list[np.ndarray]:
    """Contiguous k folds of range(n), the first n % k one larger (scikit-learn ``KFold``)."""
    if not 2 <= k <= n:
        raise NeuronscopeError(f"cv={k} folds for {n} samples; use 2 <= cv <= samples")
    return np.array_split(np.arange(n), k)


def _pearson_from_sums(n: float, sp: np.ndarray, spp: np.ndarray, sy: np.ndarray,
                       syy: np.ndarray, spy: np.ndarray) -> np.ndarray:
    """Pearson r from running sums (0 where either side is constant)."""
    cov = spy - sp * sy / n
    vp = np.maximum(spp - sp**2 / n, 0.0)
    vy = np.maximum(syy - sy**2 / n, 0.0)
    den = np.sqrt(vp * vy)
    ok = den > 1e-12 * np.maximum(np.sqrt(np.maximum(syy, 0) * np.maximum(spp, 0)), 1e-300)
    return np.where(ok, cov / np.where(ok, den, 1.0), 0.0)


def pearson_per_target(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r between columns of ``pred`` and ``y`` (0 for a constant column)."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    n = len(y)
    return _pearson_from_sums(n, pred.sum(0), (pred**2).sum(0), y.sum(0), (y**2).sum(0),
                              np.einsum("ij,ij->j", pred, y))


class _Decomp:
    """Eigendecomposition of one training set, for predictions at any α."""

    def __init__(self, primal: bool, vecs: np.ndarray, lam: np.ndarray, x_mean: np.ndarray):
        self.primal, self.vecs, self.lam, self.x_mean = primal, vecs, np.maximum(lam, 0.0), x_mean


def _decompose_primal(g: np.ndarray, n: int, s: np.ndarray) -> _Decomp:
    mu = s / n
    lam, v = eigh(g - n * np.outer(mu, mu))
    return _Decomp(True, v, lam, mu)


class NotFittedError(NeuronscopeError, _SkNotFitted):
    """A :class:`RidgeEncoder` used before ``fit`` (also scikit-learn's ``NotFittedError``)."""


class RidgeEncoder(RegressorMixin, BaseEstimator):
    """Ridge regression from features X (n, p) to targets Y (n, t) with an α per target
    chosen by k-fold cross-validation (scikit-learn style ``fit`` / ``predict`` / ``score``).

    Parameters: ``alphas`` grid; ``cv`` folds (contiguous, as ``KFold(cv)``); ``scoring``
    ``"mse"`` (α minimising the summed held-out squared error, as ``GridSearchCV`` with
    ``neg_mean_squared_error``) or ``"r"`` (α maximising held-out Pearson r);
    ``alpha_per_target`` (else one α minimising the total); ``batch_size`` targets per batch;
    ``keep_coef`` to store ``coef_`` (p, t) and ``intercept_``; otherwise predictions are made
    from the stored eigendecomposition and training data, batch by batch.

    Fitted attributes: ``alpha_`` (t,), ``cv_scores_`` (n_alphas, t) (negative MSE or r),
    ``cv_r_`` (t,) the out-of-fold Pearson r at the chosen α (optimistic by the α choice; use
    :func:`encoding_score` for nested held-out r), ``solver_`` ("primal" or "dual").
    """

    def __init__(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        cv: int = 5,
        scoring: str = "mse",
        alpha_per_target: bool = True,
        fit_intercept: bool = True,
        batch_size: int = 4096,
        keep_coef: bool = False,
        solver: str = "auto",
    ):
        self.alphas = alphas
        self.cv = cv
        self.scoring = scoring
        self.alpha_per_target = alpha_per_target
        self.fit_intercept = fit_intercept
        self.batch_size = batch_size
        self.keep_coef = keep_coef
        self.solver = solver

    def _validate_params(self) -> np.ndarray:
        """Check the parameters (at ``fit``, as scikit-learn estimators do); the α grid."""
        a = np.asarray(self.alphas, dtype=np.float64).ravel()
        if a.size == 0 or not np.isfinite(a).all() or (a <= 0).any():
            raise NeuronscopeError("alphas must be positive numbers, e.g. np.logspace(-2, 6, 9)")
        if self.scoring not in ("mse", "r"):
            raise NeuronscopeError("scoring must be 'mse' or 'r'")
        if self.solver not in ("auto", "primal", "dual"):
            raise NeuronscopeError("solver must be 'auto', 'primal' or 'dual'")
        if not isinstance(self.cv, int | np.integer) or self.cv < 2:
            raise NeuronscopeError(f"cv must be an integer >= 2, not {self.cv!r}")
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise NeuronscopeError(f"batch_size must be a positive integer, not {self.batch_size!r}")
        return a

    # ---------------------------------------------------------------- fitting
    def _prepare(self, X: ArrayLike, Y: ArrayLike, reset: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Align DataArrays by stimulus id, then scikit-learn's input validation (2-D finite
        X, numeric Y with the same rows; ``reset`` records ``n_features_in_``)."""
        if isinstance(X, xr.DataArray) and isinstance(Y, xr.DataArray):
            X, Y = align(X, Y)
        X = X.values if isinstance(X, xr.DataArray) else X
        Y = Y.values if isinstance(Y, xr.DataArray) else Y
        x, y = validate_data(self, X, Y, reset=reset, multi_output=True, y_numeric=True,
                             dtype=[np.float64, np.float32], ensure_min_samples=2)
        if reset:
            self._y_1d = y.ndim == 1
        return x.astype(np.float64, copy=False), y.reshape(len(y), -1)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _batches(self, t: int) -> Iterator[slice]:
        for b0 in range(0, t, self.batch_size):
            yield slice(b0, min(t, b0 + self.batch_size))

    def fit(self, X: ArrayLike, Y: ArrayLike) -> RidgeEncoder:
        """Choose α per target by k-fold CV, then refit on all rows."""
        alphas = self._validate_params()
        x, y = self._prepare(X, Y)
        n, p = x.shape
        t = y.shape[1]
        folds = kfold_indices(n, self.cv)
        n_tr_min = n - max(len(f) for f in folds)
        primal = self.solver == "primal" or (self.solver == "auto" and p <= n_tr_min)
        self.solver_ = "primal" if primal else "dual"
        xm = x.mean(0) if self.fit_intercept else np.zeros(p)
        xg = x - xm  # globally centered: fold means are then small (no cancellation)
        na = len(alphas)
        sse = np.zeros((na, t))
        sums = {k: np.zeros((na, t)) for k in ("sp", "spp", "spy")}
        ysum, yy = np.zeros(t), np.zeros(t)

        if primal:
            s_f = [crossprod(xg[f]) for f in folds]
            g_all = np.sum(s_f, axis=0)
            sum_f = [xg[f].sum(0) for f in folds]
            sum_all = np.sum(sum_f, axis=0)
            decs = []
            for i, f in enumerate(folds):
                ntr = n - len(f)
                s = sum_all - sum_f[i] if self.fit_intercept else np.zeros(p)
                dec = _decompose_primal(g_all - s_f[i], ntr, s)
                decs.append((dec, (xg[f] - dec.x_mean) @ dec.vecs))
        else:
            k_all = gram(xg)
            decs = []
            for f in folds:
                tr = np.setdiff1d(np.arange(n), f)
                ktt, ket = k_all[np.ix_(tr, tr)], k_all[np.ix_(f, tr)]
                if self.fit_intercept:
                    r = ktt.mean(1)
                    c = r.mean()
                    ket = ket - ket.mean(1, keepdims=True) - r[None, :] + c
                    ktt = ktt - r[:, None] - r[None, :] + c
                lam, u = eigh(ktt)
                dec = _Decomp(False, u, lam, xg[tr].mean(0) if self.fit_intercept else np.zeros(p))
                dec.train = tr  # type: ignore[attr-defined]
                decs.append((dec, ket @ u))

        # float32 data: the per-α held-out predictions (the bulk of the work) run as float32
        # GEMMs; decompositions, statistics and error sums stay float64.
        pdt = np.float32 if (getattr(X, "dtype", None) == np.float32 and y.dtype == np.float32) else np.float64
        decs = [(dec, a.astype(pdt, copy=False)) for dec, a in decs]
        for sl in self._batches(t):
            yb = y[:, sl].astype(np.float64)
            ysum[sl], yy[sl] = yb.sum(0), (yb**2).sum(0)
            if primal:
                c_f = [xg[f].T @ yb[f] for f in folds]
                ys_f = [yb[f].sum(0) for f in folds]
                c_all, ys_all = np.sum(c_f, axis=0), np.sum(ys_f, axis=0)
            for i, f in enumerate(folds):
                dec, a = decs[i]
                ntr = n - len(f)
                if primal:
                    ym = (ys_all - ys_f[i]) / ntr if self.fit_intercept else np.zeros(yb.shape[1])
                    cc = (c_all - c_f[i]) - ntr * np.outer(dec.x_mean, ym)
                    b = dec.vecs.T @ cc
                else:
                    ytr = yb[dec.train]  # type: ignore[attr-defined]
                    ym = ytr.mean(0) if self.fit_intercept else np.zeros(yb.shape[1])
                    b = dec.vecs.T @ (ytr - ym)
                yte = yb[f]
                for j, alpha in enumerate(alphas):
                    pred = (a @ (b / (dec.lam + alpha)[:, None]).astype(pdt, copy=False)) + ym
                    sse[j, sl] += ((yte - pred) ** 2).sum(0)
                    sums["sp"][j, sl] += pred.sum(0)
                    sums["spp"][j, sl] += (pred**2).sum(0)
                    sums["spy"][j, sl] += np.einsum("ij,ij->j", pred, yte)

        r_all = _pearson_from_sums(n, sums["sp"], sums["spp"], ysum[None], yy[None], sums["spy"])
        self.cv_scores_ = -sse / n if self.scoring == "mse" else r_all
        if self.alpha_per_target:
            best = np.argmax(self.cv_scores_, axis=0)
        else:
            best = np.full(t, int(np.argmax(self.cv_scores_.sum(1))))
        self.alpha_ = alphas[best]
        self.cv_r_ = r_all[best, np.arange(t)]

        # refit on all rows
        self._xg, self._y, self._xm = xg, y, xm
        self.n_features_in_, self.n_targets_ = p, t
        if primal:
            self._dec = _decompose_primal(g_all, n, np.zeros(p))
        else:
            lam, u = eigh(gram(xg))
            self._dec = _Decomp(False, u, lam, np.zeros(p))
        self._ym = y.mean(0, dtype=np.float64) if self.fit_intercept else np.zeros(t)
        if self.keep_coef:
            self.coef_ = np.empty((p, t))
            for sl in self._batches(t):
                self.coef_[:, sl] = self._coef_batch(sl)
            self.intercept_ = self._ym - xm @ self.coef_
        return self

    def _coef_batch(self, sl: slice) -> np.ndarray:
        dec = self._dec
        yc = self._y[:, sl].astype(np.float64) - self._ym[sl]
        if dec.primal:
            b = dec.vecs.T @ (self._xg.T @ yc)
            return dec.vecs @ (b / (dec.lam[:, None] + self.alpha_[None, sl]))
        b = dec.vecs.T @ yc
        return self._xg.T @ (dec.vecs @ (b / (dec.lam[:, None] + self.alpha_[None, sl])))

    # ---------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "alpha_"):
            raise NotFittedError("this RidgeEncoder is not fitted yet; call fit(X, Y) first")

    def predict_batches(self, X: ArrayLike) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (target slice, predictions (m, batch)) without forming all predictions at once."""
        self._check_fitted()
        X = X.values if isinstance(X, xr.DataArray) else X
        x = validate_data(self, X, reset=False, dtype=[np.float64, np.float32]).astype(np.float64, copy=False)
        xc = x - self._xm
        for sl in self._batches(self.n_targets_):
            if self.keep_coef:
                yield sl, x @ self.coef_[:, sl] + self.intercept_[sl]
            else:
                yield sl, xc @ self._coef_batch(sl) + self._ym[sl]

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted responses (m, t); (m,) when the encoder was fit on a 1-D ``Y``."""
        self._check_fitted()
        out = None
        for sl, pred in self.predict_batches(X):
            if out is None:
                out = np.empty((pred.shape[0], self.n_targets_))
            out[:, sl] = pred
        assert out is not None
        return out[:, 0] if getattr(self, "_y_1d", False) else out

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: None = None) -> float:
        """Coefficient of determination R² averaged over targets (scikit-learn's ``score``;
        a constant target scores 0)."""
        if sample_weight is not None:
            raise NeuronscopeError("RidgeEncoder.score takes no sample_weight; pass None")
        self._check_fitted()
        x, yv = self._prepare(X, y, reset=False)
        pred = self.predict(x).reshape(len(x), -1)
        yv = yv.astype(np.float64)
        ss_res = ((yv - pred) ** 2).sum(0)
        ss_tot = ((yv - yv.mean(0)) ** 2).sum(0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 0.0)
        return float(r2.mean())

    def score_targets(self, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
        """Pearson r per target between predictions and ``Y`` (0 for a constant target)."""
        self._check_fitted()
        x, y = self._prepare(X, Y, reset=False)
        return pearson_per_target(self.predict(x).reshape(len(x), -1), y)


# --------------------------------------------------------------------------- streamed


def _fold_stats(f: Any) -> dict[str, Any]:
    """Sufficient statistics of one fold: an object with ``sufficient_stats()`` or the dict."""
    get = getattr(f, "sufficient_stats", None)
    return dict(get()) if callable(get) else dict(f)


def ridge_from_stats(
    folds: Sequence[Any],
    alphas: Sequence[float] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6),
    alpha_per_target: bool = True,
) -> dict[str, np.ndarray]:
    """Ridge regression with k-fold α selection from per-fold sufficient statistics.

    ``folds`` are the ``CrossStats`` (or ``CrossProducts`` with ``gram="x"`` or ``True``, or the
    dicts of their ``sufficient_stats()``) of k disjoint parts of the corpus (e.g. documents hashed to k folds
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
        lam, v = eigh(cxx)
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
    lam, v = eigh(cxx)
    coef = v @ ((v.T @ cxy) / (np.maximum(lam, 0.0)[:, None] + alpha[None, :]))
    return {"coef": coef, "intercept": my - mx @ coef, "alpha": alpha, "cv_mse": cv_mse}


# --------------------------------------------------------------------------- noise ceilings


def _repeat_array(Y: Any) -> np.ndarray:
    """(stimuli, repeats, targets) from a 3-D array or a DataArray with stimulus/repeat coords."""
    if isinstance(Y, xr.DataArray):
        by = id_coord(Y)
        if by is None or "repeat" not in Y.coords:
            raise NeuronscopeError("a noise ceiling needs `stimulus` and `repeat` coordinates")
        reps, _ = split_repeats(to_matrix(Y), np.asarray(Y.coords[by].values), np.asarray(Y.coords["repeat"].values))
        return np.transpose(reps, (1, 0, 2))
    a = np.asarray(Y, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] < 2:
        raise NeuronscopeError("give responses as (stimuli, repeats >= 2, targets) for a noise ceiling")
    if not np.isfinite(a).all():
        raise NeuronscopeError("responses contain NaN or Inf; drop or impute those values first")
    return a


def split_half_reliability(Y: Any, n_splits: int = 20, seed: int = 0) -> np.ndarray:
    """Spearman-Brown corrected split-half reliability per target.

    Repeats are split at random into halves; r_h = Pearson r (across stimuli) of the two half
    means; ρ = 2 r_h / (1 + r_h) is the reliability of the mean of all repeats (Spearman 1910,
    Brown 1910), averaged over ``n_splits`` random splits.
    """
    a = _repeat_array(Y)
    r = a.shape[1]
    rng = np.random.default_rng(seed)
    out = np.zeros(a.shape[2])
    for _ in range(n_splits):
        perm = rng.permutation(r)
        h1, h2 = a[:, perm[: r // 2]].mean(1), a[:, perm[r // 2 :]].mean(1)
        rh = pearson_per_target(h1, h2)
        out += 2 * rh / (1 + rh)
    return out / n_splits


def ncsnr(Y: Any) -> np.ndarray:
    """Noise-ceiling SNR per target (Allen et al. 2022): σ_signal / σ_noise with
    σ²_noise = mean over stimuli of the across-repeat variance and
    σ²_signal = max(var_stimuli(mean response) - σ²_noise / R, 0)."""
    a = _repeat_array(Y)
    noise = a.var(axis=1, ddof=1).mean(0)
    signal = np.maximum(a.mean(1).var(axis=0, ddof=1) - noise / a.shape[1], 0.0)
    return np.sqrt(signal) / np.sqrt(np.where(noise > 0, noise, np.inf))


def encoding_ceiling(Y: Any, method: str = "split_half", n_splits: int = 20, seed: int = 0) -> np.ndarray:
    """Highest Pearson r a perfect model can reach with the repeat-averaged responses.

    ``split_half``: sqrt(ρ_SB) (ρ_SB from :func:`split_half_reliability`); ``ncsnr``:
    sqrt(NCSNR² / (NCSNR² + 1/R)) (Allen et al. 2022, with R repeats averaged).
    """
    if method == "split_half":
        return np.sqrt(np.clip(split_half_reliability(Y, n_splits, seed), 0.0, 1.0))
    if method == "ncsnr":
        s = ncsnr(Y)
        r = _repeat_array(Y).shape[1]
        return np.sqrt(s**2 / (s**2 + 1.0 / r))
    raise NeuronscopeError("ceiling method must be 'split_half' or 'ncsnr'")


def encoding_score(
    X: ArrayLike,
    Y: Any,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv: int = 5,
    inner_cv: int | None = 5,
    ceiling: str | None = None,
    scoring: str = "mse",
    batch_size: int = 4096,
) -> np.ndarray:
    """Held-out Pearson r per target of a ridge encoding model X → Y.

    Outer ``cv``-fold cross-validation; in each outer training set α is chosen per target by
    an inner ``inner_cv``-fold CV (:class:`RidgeEncoder`), and r is computed on the pooled
    outer held-out predictions. ``inner_cv=None`` chooses α from the same folds (faster,
    slightly optimistic). ``Y`` may hold repeats ((stimuli, repeats, targets) or a DataArray
    with ``repeat``): they are averaged for fitting, and with ``ceiling`` (``"split_half"`` or
    ``"ncsnr"``) r is divided by :func:`encoding_ceiling` (NaN where the ceiling is 0).
    """
    y_rep = None
    if isinstance(Y, xr.DataArray) and "repeat" in Y.coords:
        y_rep = Y
        if isinstance(X, xr.DataArray):
            X, Y = align(X, Y)
        else:
            Y = average_repeats(Y)
    elif np.ndim(Y) == 3:
        y_rep = np.asarray(Y, dtype=np.float64)
        Y = y_rep.mean(1)
    enc_kw = dict(alphas=alphas, scoring=scoring, batch_size=batch_size)
    if isinstance(X, xr.DataArray) and isinstance(Y, xr.DataArray):
        X, Y = align(X, Y)
    x, y = to_matrix(X, "X").astype(np.float64), to_matrix(Y, "Y")
    if len(x) != len(y):
        raise NeuronscopeError(f"X has {len(x)} samples and Y has {len(y)}; give paired rows")
    require_variance(x, "X")
    require_variance(y, "Y")
    x, y, enc_kw["alphas"] = _scale_free(x, y, alphas)
    if inner_cv is None:
        r = RidgeEncoder(cv=cv, **enc_kw).fit(x, y).cv_r_
    else:
        n, t = y.shape
        sp, spp, spy = np.zeros(t), np.zeros(t), np.zeros(t)
        for f in kfold_indices(n, cv):
            tr = np.setdiff1d(np.arange(n), f)
            enc = RidgeEncoder(cv=inner_cv, **enc_kw).fit(x[tr], y[tr])
            for sl, pred in enc.predict_batches(x[f]):
                yte = y[f, sl].astype(np.float64)
                sp[sl] += pred.sum(0)
                spp[sl] += (pred**2).sum(0)
                spy[sl] += np.einsum("ij,ij->j", pred, yte)
        yv = y.astype(np.float64)
        r = _pearson_from_sums(n, sp, spp, yv.sum(0), (yv**2).sum(0), spy)
    if ceiling is not None:
        if y_rep is None:
            raise NeuronscopeError("a noise ceiling needs repeats; give Y as (stimuli, repeats, targets)")
        c = encoding_ceiling(y_rep, ceiling)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(c > 0, r / c, np.nan)
    return r


def _scale_free(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray, Any]:
    """``x``, ``y`` and the α grid of the same ridge problem with each side divided by a power
    of two when its scale is extreme (``rescale``, exact): predictions of ``X 2^-a`` with
    α 4^-a equal those of ``X`` with α (times ``2^-a``), and r does not depend on the scale
    of ``Y``. So the scores are those of the data as given, without overflow at 1e160 or
    underflow at 1e-160. α is then kept within [ε, 1/ε] · tr(XᵀX): below, it could change the
    fit only through rounding noise in null directions; above, the predictions are
    proportional to X Xᵀ y whatever α is, and r does not depend on the factor."""
    x, ex = rescale(x)
    y, _ = rescale(y)
    if not ex:
        return x, y, alphas
    a = np.asarray(alphas, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all() or (a <= 0).any():
        return x, y, alphas  # RidgeEncoder refuses it with its own message
    eps, trace = np.finfo(np.float64).eps, float(np.sum((x - x.mean(0)) ** 2))
    with np.errstate(over="ignore", under="ignore"):
        scaled = np.ldexp(a, -2 * ex)
    return x, y, np.clip(scaled, eps * trace, trace / eps)


def _encoding_mean(X: ArrayLike, Y: Any, **kw: Any) -> float:
    """Mean held-out Pearson r over targets (see :func:`encoding_score`)."""
    return float(np.nanmean(encoding_score(X, Y, **kw)))


ENCODING = Metric("encoding", _encoding_mean, True, symmetric=False,
                  options=("alphas", "cv", "inner_cv", "ceiling", "scoring", "batch_size"))
