"""Representational similarity analysis (RSA), its noise ceiling, topological and
deconfounded RSA.

Kriegeskorte, Mur & Bandettini (2008), "Representational similarity analysis — connecting
the branches of systems neuroscience"; conventions follow rsatoolbox (Schütt et al. 2023):
RDMs are stored condensed (the upper triangle in scipy ``squareform`` order), the
``euclidean`` RDM is the squared Euclidean distance per channel, crossnobis is the
leave-one-fold-out cross-validated squared distance (unbalanced folds allowed), the
comparators are rsatoolbox's (including the whitened ``corr_cov``/``cosine_cov`` of
Diedrichsen et al. 2021 and ``bures``), missing (NaN) dissimilarities are skipped pairwise,
and the noise ceiling is rsatoolbox's ``boot_noise_ceiling`` (leave-one-subject-out lower
bound, all-subject upper bound). Topological RSA follows Lin & Kriegeskorte (2023), "The
topology and geometry of neural representations": geo-topological and geodesic transforms.
The model-comparison workflow (bootstrap, tests, figure) is
:func:`neuronscope.analyses.rsa_workflow.rsa_models`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats
import xarray as xr

from neuronscope.analyses._linalg import (
    cholesky,
    eigh,
    eigvalsh,
    gram,
    require_variance,
    rescale,
    solve,
)
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
from neuronscope.rdms import RDMs, as_rdm_stack, condense_square, n_from_m

RDM_METHODS = ("correlation", "euclidean", "cosine", "crossnobis")
COMPARATORS = ("pearson", "spearman", "kendall", "cosine", "rho-a", "corr_cov", "cosine_cov", "bures")
_ALIASES = {"corr": "pearson", "tau-a": "kendall", "tau_a": "kendall", "kendall_tau_a": "kendall",
            "rho_a": "rho-a"}


# --------------------------------------------------------------------------- RDMs


def _stimulus_repeat(X: ArrayLike, stimulus: Any, repeat: Any) -> tuple[np.ndarray, Any, Any]:
    if isinstance(X, xr.DataArray):
        by = id_coord(X)
        if stimulus is None and by is not None:
            stimulus = np.asarray(X.coords[by].values)
        if repeat is None and "repeat" in X.coords:
            repeat = np.asarray(X.coords["repeat"].values)
    return to_matrix(X), stimulus, repeat


def _crossnobis(x: np.ndarray, stimulus: Any, folds: Any, noise: np.ndarray | None) -> np.ndarray:
    """Cross-validated squared Mahalanobis distances (see :func:`rdm`), condensed over the
    sorted unique stimulus ids; NaN for a pair measured together in fewer than 2 folds."""
    if stimulus is None or folds is None:
        raise NeuronscopeError("crossnobis needs `stimulus` and fold (`folds` or `repeat`) labels per row")
    stim, fold = np.asarray(stimulus), np.asarray(folds)
    if len(stim) != len(x) or len(fold) != len(x):
        raise NeuronscopeError(f"{len(stim)} stimulus and {len(fold)} fold labels for {len(x)} rows; give one per row")
    us, si = np.unique(stim, return_inverse=True)
    uf, fi = np.unique(fold, return_inverse=True)
    si, fi = si.reshape(-1), fi.reshape(-1)
    if len(uf) < 2:
        raise NeuronscopeError("crossnobis needs at least 2 folds (repeats or runs)")
    x = np.asarray(x, dtype=np.float64)
    if noise is not None:
        x = x @ cholesky(np.asarray(noise, dtype=np.float64))
    n_f, n, p = len(uf), len(us), x.shape[1]
    sums = np.zeros((n_f, n, p))
    np.add.at(sums, (fi, si), x)
    counts = np.zeros((n_f, n))
    np.add.at(counts, (fi, si), 1.0)
    if (counts > 0).all() and (counts == counts[0, 0]).all():
        # balanced: Σ_f a^{(-f)} b^{(f)}ᵀ = (s sᵀ - Σ_f b_f b_fᵀ)/(F-1) from two Gram products
        reps = sums / counts[..., None]
        s = reps.sum(0)
        cat = np.transpose(reps, (1, 0, 2)).reshape(n, n_f * p)
        k = (gram(s) - gram(cat)) / (n_f - 1)
        dg = np.diagonal(k)
        d = dg[:, None] + dg[None, :] - k - k.T
        return condense_square(d, overwrite=True) / (n_f * p)
    present = counts > 0
    if n_f > 62:
        raise NeuronscopeError(f"{n_f} folds with missing stimuli; crossnobis supports at most 62 then")
    code = (present.astype(np.int64) << np.arange(n_f, dtype=np.int64)[:, None]).sum(0)
    common = code[:, None] & code[None, :]
    iu = np.triu_indices(n, k=1)
    out = np.full(len(iu[0]), np.nan)
    pair_codes = common[iu]
    for c in np.unique(pair_codes):
        fs = np.flatnonzero((int(c) >> np.arange(n_f)) & 1)
        if len(fs) < 2:
            continue
        t = np.flatnonzero((code & c) == c)  # stimuli measured in every fold of this set
        s_t, c_t = sums[np.ix_(fs, t)], counts[np.ix_(fs, t)]
        tot_s, tot_c = s_t.sum(0), c_t.sum(0)
        d = np.zeros((len(t), len(t)))
        for j in range(len(fs)):
            b = s_t[j] / c_t[j][:, None]
            a = (tot_s - s_t[j]) / (tot_c - c_t[j])[:, None]
            kern = gram(a, b)
            dg = np.diagonal(kern)
            d += dg[:, None] + dg[None, :] - kern - kern.T
        d /= len(fs) * p
        sel = np.flatnonzero(pair_codes == c)
        pos = np.searchsorted(t, iu[0][sel]), np.searchsorted(t, iu[1][sel])
        out[sel] = d[pos]
    return out


def rdm(
    X: ArrayLike,
    method: str = "correlation",
    stimulus: Any = None,
    repeat: Any = None,
    noise: np.ndarray | None = None,
    precision: str = "auto",
    folds: Any = None,
) -> np.ndarray:
    """Representational dissimilarity matrix of a population, condensed (m = n(n-1)/2,).

    Rows of ``X`` (n, p) are stimuli (repeats of a ``stimulus`` id are averaged, except for
    crossnobis). Methods (as rsatoolbox ``calc_rdm``):

    * ``correlation``: d_ij = 1 - r(x_i, x_j) (Pearson across channels);
    * ``euclidean``: d_ij = ‖x_i - x_j‖² / p (squared Euclidean per channel);
    * ``cosine``: d_ij = 1 - x_i·x_j / (‖x_i‖‖x_j‖);
    * ``crossnobis``: d_ij = (1/F) Σ_f (a_i^{(-f)} - a_j^{(-f)})ᵀ Λ (b_i^{(f)} - b_j^{(f)}) / p over
      the folds f (``folds`` labels, e.g. runs; default the ``repeat`` labels), with b^{(f)}
      the mean of fold f's rows of a stimulus, a^{(-f)} the mean of its rows in the other
      folds and Λ the noise precision ``noise`` (identity by default) — an unbiased estimate
      of the squared distance (Walther et al. 2016); equal to rsatoolbox
      ``calc_rdm(method='crossnobis', descriptor=stimulus, cv_descriptor=folds)``, including
      folds with different numbers of rows per stimulus. Unbalanced folds in which some
      stimuli are missing: pair (i, j) uses the folds in which both were measured (rsatoolbox
      on those folds' rows of i and j); a pair measured together in fewer than 2 folds is
      NaN (a missing dissimilarity). Stimuli are in sorted id order.

    All products are one BLAS Gram matrix (blocked above 8192 stimuli). ``precision``:
    ``float64``, ``float32`` (the Gram product of the float64-normalised patterns in float32:
    ~2× faster, dissimilarities within ~1e-6) or ``auto`` (float32 for float32 input). The
    patterns are divided by a power of two when their scale is extreme (exact), so nothing
    overflows; squared (``euclidean``, ``crossnobis``) dissimilarities too large for float64
    are an error.
    """
    d, e = _rdm_scaled(X, method, stimulus, repeat, noise, precision, folds)
    if not e:
        return d
    with np.errstate(over="ignore"):
        out = np.ldexp(d, e)
    if not np.isfinite(out[np.isfinite(d)]).all():
        raise NeuronscopeError(
            f"{method} dissimilarities of data this large overflow float64; scale the data down "
            "(RSA scores do not depend on the scale)"
        )
    return out


def _rdm_scaled(X: ArrayLike, method: str = "correlation", stimulus: Any = None, repeat: Any = None,
                noise: np.ndarray | None = None, precision: str = "auto", folds: Any = None,
                ) -> tuple[np.ndarray, int]:
    """``(rdm / 2^e, e)``: :func:`rdm` of the patterns divided by a power of two when their
    scale is extreme (``e`` is 0 for the scale-free correlation and cosine RDMs)."""
    if precision not in ("auto", "float32", "float64"):
        raise NeuronscopeError("precision must be 'auto', 'float32' or 'float64'")
    if precision == "auto":
        is32 = (X.dtype if isinstance(X, xr.DataArray | np.ndarray) else np.float64) == np.float32
        precision = "float32" if is32 else "float64"
    gdt = np.float32 if precision == "float32" else np.float64
    x, stimulus, repeat = _stimulus_repeat(X, stimulus, repeat)
    x, ex = rescale(x)
    if method == "crossnobis":
        return _crossnobis(x, stimulus, repeat if folds is None else folds, noise), 2 * ex
    if method not in RDM_METHODS:
        raise NeuronscopeError(f"unknown RDM method {method!r}; use one of {', '.join(RDM_METHODS)}")
    if repeat is not None and stimulus is not None:
        da = xr.DataArray(x, dims=("sample", "neuron"), coords={"stimulus": ("sample", np.asarray(stimulus))})
        x = average_repeats(da, "stimulus").values
    x = x.astype(np.float64, copy=False)
    if x.shape[0] < 3:
        raise NeuronscopeError(f"{x.shape[0]} stimuli; an RDM needs at least 3")
    if method == "euclidean":
        sq = np.einsum("ij,ij->i", x, x)
        g = gram(x)
        g *= -2.0
        g += sq[:, None]
        g += sq[None, :]
        return np.maximum(condense_square(g, overwrite=True), 0.0) / x.shape[1], 2 * ex
    z = x - x.mean(axis=1, keepdims=True) if method == "correlation" else x
    norms = np.sqrt(np.einsum("ij,ij->i", z, z))
    if (norms == 0).any():
        raise NeuronscopeError(
            f"stimulus {int(np.argmax(norms == 0))} has a constant (or zero) response pattern; "
            f"{method} distance is undefined — use method='euclidean' or drop it"
        )
    z = z / norms[:, None]
    g = gram(z, dtype=gdt)
    if gdt is np.float64:
        np.subtract(1.0, g, out=g)
    else:
        g = np.subtract(1.0, g, dtype=np.float64)
    return condense_square(g, overwrite=True), 0


def rdms_from_repeats(X: ArrayLike, method: str = "correlation", stimulus: Any = None,
                      repeat: Any = None) -> RDMs:
    """One RDM per repeat index (for a noise ceiling from repeats)."""
    x, stimulus, repeat = _stimulus_repeat(X, stimulus, repeat)
    reps, us = split_repeats(x, stimulus, repeat)
    return RDMs(np.stack([rdm(r, method) for r in reps]), stimulus=us,
                names=[f"repeat{i}" for i in range(len(reps))], measure=method)


# --------------------------------------------------------------------------- comparators


def _method(method: str) -> str:
    m = _ALIASES.get(method, method)
    if m not in COMPARATORS:
        raise NeuronscopeError(f"unknown RDM comparator {method!r}; use one of {', '.join(COMPARATORS)}")
    return m


def _prep(v: np.ndarray, method: str) -> np.ndarray:
    if method in ("spearman", "rho-a"):
        v = scipy.stats.rankdata(v, axis=1)
    if method in ("pearson", "spearman", "rho-a"):
        v = v - v.mean(axis=1, keepdims=True)
    return v


def _tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's τ_a = (concordant - discordant) / (m(m-1)/2), from scipy's τ_b and tie counts."""
    m = len(a)
    n0 = m * (m - 1) / 2.0

    def ties(v: np.ndarray) -> float:
        _, c = np.unique(v, return_counts=True)
        return float((c * (c - 1) / 2.0).sum())

    t1, t2 = ties(a), ties(b)
    if t1 == n0 or t2 == n0:
        return 0.0
    tau_b = scipy.stats.kendalltau(a, b).statistic
    return float(np.clip(tau_b * np.sqrt((n0 - t1) * (n0 - t2)) / n0, -1.0, 1.0))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine matrix; a zero vector has similarity 0 (as rsatoolbox)."""
    na, nb = np.sqrt(np.einsum("ij,ij->i", a, a)), np.sqrt(np.einsum("ij,ij->i", b, b))
    den = np.outer(na, nb)
    return np.clip((a @ b.T) / np.where(den > 0, den, np.inf), -1.0, 1.0)


def _pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def whiten(v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Whitened coordinates of RDM vectors (Diedrichsen et al. 2021, "Comparing
    representational geometries using whitened unbiased-distance-matrix similarity").

    For RDM vectors d with the covariance V = (CCᵀ)∘(CCᵀ) of distance estimates from i.i.d.
    pattern noise (C the pairwise contrasts; rsatoolbox's default ``sigma_k=None``),
    dᵀV⁻¹e = ⟨w(d), w(e)⟩ where w(d) is the double-centred second moment G̃ = H(-D/2)H as
    (√2·off-diagonal, diagonal) entries. With missing pairs (``mask`` of the finite entries of
    the full m-vector; ``v`` holds only those) the double centring is the weighted
    least-squares projection rsatoolbox's ``_cov_weighting`` uses, for which the identity
    still holds with V restricted to the observed pairs. ``v`` is (k, q); returns (k, q + n).
    """
    k, q = v.shape
    n = n_from_m(q if mask is None else len(mask))
    if mask is None or mask.all():
        g = np.zeros((k, n, n))
        iu = _pair_index(n)
        g[:, iu[0], iu[1]] = -0.5 * v
        g[:, iu[1], iu[0]] = -0.5 * v
        r = g.mean(axis=1, keepdims=True)
        g = g - r - np.swapaxes(r, 1, 2) + r.mean(axis=2, keepdims=True)
        return np.concatenate([np.sqrt(2.0) * g[:, iu[0], iu[1]], np.diagonal(g, axis1=1, axis2=2)], axis=1)
    iu = _pair_index(n)
    rows_p = np.flatnonzero(mask)
    x = np.zeros((q + n, n))
    x[np.arange(q), iu[0][rows_p]] = 1.0
    x[np.arange(q), iu[1][rows_p]] = 1.0
    x[q + np.arange(n), np.arange(n)] = 1.0
    wdiag = np.concatenate([np.full(q, 0.5), np.ones(n)])
    dx = wdiag[:, None] * x
    vw = np.concatenate([-0.5 * v, np.zeros((k, n))], axis=1)
    vw = vw - vw @ x @ solve(x.T @ dx, dx.T)
    vw[:, :q] *= np.sqrt(2.0)
    return vw


def _centered_kernels(v: np.ndarray) -> np.ndarray:
    """Double-centred kernels H(-D/2)H of condensed RDMs (k, m) -> (k, n, n)."""
    n = n_from_m(v.shape[1])
    g = np.zeros((len(v), n, n))
    iu = _pair_index(n)
    g[:, iu[0], iu[1]] = -0.5 * v
    g[:, iu[1], iu[0]] = -0.5 * v
    r = g.mean(axis=1, keepdims=True)
    return g - r - np.swapaxes(r, 1, 2) + r.mean(axis=2, keepdims=True)


def _bures(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Bures similarity tr((A^½ B A^½)^½) / √(tr A tr B) of the centred kernels (rsatoolbox
    ``compare_bures_similarity``; negative eigenvalues clipped at 0 as there)."""
    ka, kb = _centered_kernels(va), _centered_kernels(vb)
    n = ka.shape[1]
    lam, u = eigh(ka)
    # the same operations as rsatoolbox: the square roots of rounding-level eigenvalues make
    # this comparator sensitive to 1e-8 to the order of floating-point operations
    asq = u @ (np.sqrt(np.maximum(lam[:, :, None], 0.0)) * np.swapaxes(u, 1, 2))
    tra, trb = np.trace(ka, axis1=1, axis2=2), np.trace(kb, axis1=1, axis2=2)
    out = np.empty((len(va), len(vb)))
    step = max(1, int(2e7 // (n * n)))
    pairs = [(i, j) for i in range(len(va)) for j in range(len(vb))]
    for s0 in range(0, len(pairs), step):
        ch = pairs[s0 : s0 + step]
        ia, ib = np.array([p[0] for p in ch]), np.array([p[1] for p in ch])
        mats = asq[ia] @ kb[ib] @ asq[ia]
        ev = eigvalsh(mats)
        out[ia, ib] = np.sqrt(np.maximum(ev, 0.0)).sum(axis=1) / np.sqrt(tra[ia] * trb[ib])
    return out


def _block(a: np.ndarray, b: np.ndarray, method: str, mask: np.ndarray | None) -> np.ndarray:
    """Similarity matrix of complete vectors ``a`` (ka, q), ``b`` (kb, q) under ``method``."""
    if method == "kendall":
        return np.array([[_tau_a(x, y) for y in b] for x in a])
    if method == "rho-a":
        q = a.shape[1]
        return _prep(a, method) @ _prep(b, method).T * 12.0 / (q**3 - q)
    if method in ("corr_cov", "cosine_cov"):
        if method == "corr_cov":
            a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        return _cosine(whiten(a, mask), whiten(b, mask))
    if method == "bures":
        return _bures(a, b)
    return _cosine(_prep(a, method), _prep(b, method))


def _mask_groups(finite: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, rows) for each distinct pattern of finite entries."""
    u, inv = np.unique(finite, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return [(u[g], np.flatnonzero(inv == g)) for g in range(len(u))]


def _compare_matrix(va: np.ndarray, vb: np.ndarray, method: str) -> np.ndarray:
    """(ka, kb) similarities; NaN pairs are skipped pairwise (a pair counts for two RDMs
    when both are finite there), so each pair of RDMs is compared on their common pairs."""
    fa, fb = np.isfinite(va), np.isfinite(vb)
    if fa.all() and fb.all():
        return _block(va, vb, method, None)
    if method == "bures":
        raise NeuronscopeError("bures compares whole kernels and cannot skip missing (NaN) pairs; "
                               "use another comparator or complete RDMs")
    out = np.full((len(va), len(vb)), np.nan)
    for ma, ra in _mask_groups(fa):
        for mb, rb in _mask_groups(fb):
            joint = ma & mb
            if joint.sum() < 2:
                continue
            sub = _block(va[np.ix_(ra, joint)], vb[np.ix_(rb, joint)], method,
                         None if joint.all() else joint)
            out[np.ix_(ra, rb)] = sub
    return out


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float | np.ndarray:
    """Similarity of RDMs (condensed vectors, square matrices, stacks or :class:`RDMs`).

    Comparators (as rsatoolbox ``compare``, equal to it to 1e-10):

    * ``pearson`` (``corr``), ``cosine`` (a·b/(‖a‖‖b‖));
    * ``spearman`` (Pearson of average ranks), ``rho-a`` (12 Σ r̃_a r̃_b / (m³ - m), ranks
      centred), ``kendall`` (Kendall's τ_a = (C - D)/(m(m-1)/2), no tie correction; also
      ``tau-a``);
    * ``corr_cov`` / ``cosine_cov``: Pearson / cosine after whitening by the covariance V of
      the dissimilarity estimates, aᵀV⁻¹b / √(aᵀV⁻¹a · bᵀV⁻¹b) (``corr_cov`` centres the
      vectors first); Diedrichsen et al. (2021), rsatoolbox ``compare_cosine_cov_weighted`` /
      ``compare_correlation_cov_weighted`` with ``sigma_k=None``, computed exactly through
      :func:`whiten`;
    * ``bures``: tr((A^½ B A^½)^½)/√(tr A tr B) of the double-centred kernels A = H(-D_a/2)H
      (rsatoolbox ``compare_bures_similarity``).

    Missing (NaN) dissimilarities are skipped pairwise: RDMs a_i and b_j are compared on the
    pairs finite in both (rsatoolbox drops the NaN pairs of both sides the same way; ``bures``
    needs complete RDMs). Returns a float for two single RDMs, else the (k_a, k_b) matrix.
    Vectors with zero (centred) norm give similarity 0.
    """
    method = _method(method)
    ra, rb = as_rdm_stack(a), as_rdm_stack(b)
    va, vb = ra.dissimilarities, rb.dissimilarities
    if va.shape[1] != vb.shape[1]:
        raise NeuronscopeError(
            f"RDMs over {ra.n_stimuli} and {rb.n_stimuli} stimuli; compare RDMs of the same stimuli"
        )
    out = _compare_matrix(va, vb, method)
    return float(out[0, 0]) if out.shape == (1, 1) else out


def _to_rdms(X: Any, rdm_method: str) -> RDMs:
    if isinstance(X, RDMs):
        return X
    if np.ndim(X) == 1:
        return RDMs(np.asarray(X, dtype=np.float64)[None])
    stim = None
    if isinstance(X, xr.DataArray) and id_coord(X):
        X = average_repeats(X) if "repeat" in X.coords else X
        stim = np.asarray(X.coords[id_coord(X)].values)
    require_variance(to_matrix(X), "a population")
    # RSA scores do not depend on the RDM's scale: the scaled RDM never overflows
    return RDMs(_rdm_scaled(X, rdm_method)[0][None], stimulus=stim, measure=rdm_method)


def _pair_rdms(X: Any, Y: Any, rdm_method: str) -> tuple[RDMs, RDMs]:
    if isinstance(X, xr.DataArray) and isinstance(Y, xr.DataArray):
        X, Y = align(X, Y)
    a, b = _to_rdms(X, rdm_method), _to_rdms(Y, rdm_method)
    if a.stimulus is not None and b.stimulus is not None and not np.array_equal(a.stimulus, b.stimulus):
        b = b.reorder(a.stimulus)
    if a.dissimilarities.shape[1] != b.dissimilarities.shape[1]:
        raise NeuronscopeError(
            f"X covers {a.n_stimuli} stimuli and Y {b.n_stimuli}; give the same stimuli"
        )
    return a, b


def rsa(X: Any, Y: Any, rdm_method: str = "correlation", compare: str = "spearman") -> float:
    """RSA score: the ``compare`` similarity of the RDMs of ``X`` and ``Y``.

    Each side is a population (n, p) (RDM by ``rdm_method``, see :func:`rdm`), a condensed
    RDM (1-D) or :class:`RDMs` (e.g. per-subject RDMs from :func:`load_rdms`; the score is then
    averaged over all pairs). DataArrays and RDMs with stimulus ids are aligned by id.
    """
    a, b = _pair_rdms(X, Y, rdm_method)
    return float(np.nanmean(compare_rdms(a, b, compare)))


# --------------------------------------------------------------------------- noise ceiling


def _nan_rank(v: np.ndarray) -> np.ndarray:
    """Average ranks of each row's finite entries (NaN stays NaN)."""
    fin = np.isfinite(v)
    if fin.all():
        return scipy.stats.rankdata(v, axis=1)
    out = np.full(v.shape, np.nan)
    for i in range(len(v)):
        out[i, fin[i]] = scipy.stats.rankdata(v[i, fin[i]])
    return out


def pool_terms(v: np.ndarray, method: str) -> np.ndarray:
    """Each RDM normalised for pooling under ``method``, as rsatoolbox's ``pool_rdm`` that
    ``boot_noise_ceiling`` uses (``rsatoolbox.util.inference_util``): the mean of these rows is
    the pooled RDM. ``cosine`` and ``cosine_cov``: d/√mean(d²); ``pearson`` and ``corr_cov``:
    z-scores; rank comparators: average ranks. Statistics use each RDM's finite entries."""
    method = _method(method)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method in ("cosine", "cosine_cov"):
            return v / np.sqrt(np.nanmean(v**2, axis=1, keepdims=True))
        if method in ("pearson", "corr_cov"):
            c = v - np.nanmean(v, axis=1, keepdims=True)
            return c / np.nanstd(c, axis=1, keepdims=True)
        if method in ("spearman", "rho-a", "kendall"):
            return _nan_rank(v)
    raise NeuronscopeError(f"no noise ceiling for comparator {method!r} (rsatoolbox defines no pooled "
                           "RDM for it); use pearson, spearman, cosine, rho-a, kendall, corr_cov or cosine_cov")


def _noise_ceiling(v: np.ndarray, method: str, counts: np.ndarray | None = None) -> tuple[float, float]:
    """Noise ceiling of RDM rows ``v`` where row i appears ``counts[i]`` times (a bootstrap
    sample of subjects): pooled over all copies, averaged over the distinct subjects left out
    (as rsatoolbox ``boot_noise_ceiling`` on a resampled RDMs object)."""
    method = _method(method)
    c = np.ones(len(v)) if counts is None else np.asarray(counts, dtype=np.float64)
    present = np.flatnonzero(c > 0)
    if len(present) < 2:
        raise NeuronscopeError("a noise ceiling needs at least 2 RDMs (subjects, sessions or repeats)")
    z = pool_terms(v, method)
    fin = np.isfinite(z)
    zc = np.where(fin, z, 0.0) * c[:, None]
    wc = fin * c[:, None]
    num, den = zc.sum(0), wc.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.where(den > 0, num / den, np.nan)
        rest = np.where(den[None] - wc[present] > 0, (num[None] - zc[present]) / (den[None] - wc[present]), np.nan)
    up = _compare_matrix(full[None], v[present], method)[0]
    lo = np.array([_compare_matrix(rest[j][None], v[i][None], method)[0, 0] for j, i in enumerate(present)])
    return float(np.mean(lo)), float(np.mean(up))


def noise_ceiling(data: Any, method: str = "spearman", rdm_method: str = "correlation") -> tuple[float, float]:
    """Lower and upper bound of the RSA noise ceiling (rsatoolbox ``boot_noise_ceiling``;
    Nili et al. 2014, "A toolbox for representational similarity analysis").

    ``data`` is several RDMs (one per subject / session: :class:`RDMs`, (k, m) or (k, n, n)),
    or a population with ``stimulus`` and ``repeat`` labels (one RDM per repeat). With P(S)
    the RDM pooled over subjects S for the comparator (the mean of :func:`pool_terms`: of
    normalised RDMs or of ranks): upper = mean_i compare(P(all), RDM_i),
    lower = mean_i compare(P(all \\ i), RDM_i). Missing (NaN) pairs are left out of each
    RDM's normalisation, of the pooled mean at that pair, and of each comparison (pairwise);
    with the same missing pairs in every RDM this is rsatoolbox's computation. ``bures`` has
    no pooled RDM.
    """
    if isinstance(data, xr.DataArray) and "repeat" in data.coords:
        stack = rdms_from_repeats(data, rdm_method)
    else:
        stack = as_rdm_stack(data)
    return _noise_ceiling(stack.dissimilarities, method)


# --------------------------------------------------------------------------- tRSA


TRANSFORMS = ("geotopological", "geodesic")


def _stack_of(d: Any) -> tuple[np.ndarray, bool]:
    v = d.dissimilarities if isinstance(d, RDMs) else np.asarray(d, dtype=np.float64)
    return np.atleast_2d(v), v.ndim == 1


def geotopological_transform(d: Any, low: float = 0.0, up: float = 1.0) -> np.ndarray:
    """Geo-topological transform of RDMs (Lin & Kriegeskorte 2023, "The topology and geometry
    of neural representations").

    With l, u the ``low`` and ``up`` quantiles of each RDM's own (finite) dissimilarities:
    GT(d) = 0 for d < l, (d - l)/(u - l) for l <= d <= u, 1 for d > u — the paper's formula,
    applied to the original values. ``low=0, up=1`` is the plain RDM rescaled to [0, 1] (an
    affine map, so RSA scores are unchanged). NaN (missing) pairs stay NaN.

    rsatoolbox 0.3.2's ``geotopological_transform`` differs in two ways: it takes the
    quantiles over the whole stack, and it applies ``d > u → 1`` after rescaling in place, so
    when u < 1 already-rescaled values above u are set to 1 as well (up to 0.9 off on real
    RDMs); the two agree for one RDM whose upper quantile is >= 1. Returns the same layout
    as given for a 1-D or (k, m) array; :class:`RDMs` give a (k, m) array.
    """
    if not 0.0 <= low < up <= 1.0:
        raise NeuronscopeError("quantile thresholds need 0 <= low < up <= 1")
    v, one = _stack_of(d)
    with np.errstate(invalid="ignore"):
        lo = np.nanquantile(v, low, axis=1, keepdims=True)
        hi = np.nanquantile(v, up, axis=1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        out = np.clip((v - lo) / span, 0.0, 1.0)
        out = np.where(v > hi, 1.0, out)
    out = np.where(np.isnan(v), np.nan, out)
    return out[0] if one else out


def geodesic_transform(d: Any, up: float = 1.0) -> np.ndarray:
    """Geodesic RDMs (Lin & Kriegeskorte 2023): shortest-path distances on the graph of the
    stimuli whose edges are the pairs below the ceiling of the geo-topological transform.

    Per RDM: the dissimilarities are min-max scaled to [0, 1]; the edges at the ceiling —
    GT(d) = 1, i.e. d >= the ``up`` quantile of that RDM (with ``up=1`` only the largest
    dissimilarities) — and missing (NaN) pairs are removed; the geodesic of a pair is the
    length of the shortest path over the remaining edges weighted by the scaled
    dissimilarity (Dijkstra, ``scipy.sparse.csgraph``; zero-weight edges are edges). Pairs
    in different connected components get the largest finite geodesic of that RDM.
    rsatoolbox 0.3.2's ``geodesic_transform`` is the ``up=1`` case, except that networkx
    drops its zero-weight edge (the scaled minimum), so paths through that pair are longer
    there. Returns the layout given (1-D or (k, m)); :class:`RDMs` give (k, m).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    if not 0.0 < up <= 1.0:
        raise NeuronscopeError("the geodesic ceiling quantile needs 0 < up <= 1")
    v, one = _stack_of(d)
    n = n_from_m(v.shape[1])
    iu = _pair_index(n)
    out = np.empty_like(v)
    for k, row in enumerate(v):
        fin = np.isfinite(row)
        if fin.sum() == 0:
            raise NeuronscopeError("an RDM has no finite dissimilarity; drop it")
        lo_, hi_ = np.nanmin(row), np.nanmax(row)
        scaled = (row - lo_) / (hi_ - lo_) if hi_ > lo_ else np.zeros_like(row)
        ceil = np.nanquantile(row, up)
        keep = fin & (row < ceil)
        g = csr_matrix((scaled[keep], (iu[0][keep], iu[1][keep])), shape=(n, n))
        sp = shortest_path(g, method="D", directed=False)
        geo = sp[iu]
        finite = np.isfinite(geo)
        geo[~finite] = geo[finite].max() if finite.any() else 1.0
        out[k] = geo
    return out[0] if one else out


def topological_rdms(d: Any, transform: str = "geotopological", low: float = 0.1, up: float = 0.9) -> np.ndarray:
    """``d`` transformed for tRSA: :func:`geotopological_transform` (quantiles ``low``, ``up``)
    or :func:`geodesic_transform` (ceiling quantile ``up``; ``low`` does not apply)."""
    if transform == "geotopological":
        return geotopological_transform(d, low, up)
    if transform == "geodesic":
        return geodesic_transform(d, up)
    raise NeuronscopeError(f"unknown tRSA transform {transform!r}; use one of {', '.join(TRANSFORMS)}")


def trsa(X: Any, Y: Any, low: float = 0.1, up: float = 0.9, rdm_method: str = "correlation",
         compare: str = "pearson", transform: str = "geotopological") -> float:
    """Topological RSA (Lin & Kriegeskorte 2023): RSA on transformed RDMs — the
    geo-topological transform (:func:`geotopological_transform`, quantiles ``low``, ``up`` per
    RDM) or the geodesic transform (:func:`geodesic_transform`, ceiling quantile ``up``)."""
    a, b = _pair_rdms(X, Y, rdm_method)
    ga = RDMs(topological_rdms(a, transform, low, up))
    gb = RDMs(topological_rdms(b, transform, low, up))
    return float(np.nanmean(compare_rdms(ga, gb, compare)))


# --------------------------------------------------------------------------- deconfounded RSA


def deconfounded_rsa(X: Any, Y: Any, inputs: Any, rdm_method: str = "correlation",
                     compare: str = "pearson") -> float:
    """Deconfounded RSA (Cui et al. 2022, "Deconfounded Representation Similarity for
    Comparison of Neural Networks").

    Each representation's RDM d is regressed on the input-space RDM d₀ (OLS with intercept,
    d = a + b d₀ + ε) and the residuals ε_X, ε_Y are compared with ``compare``. ``inputs`` is
    the stimuli's input representation (n, r) or its condensed RDM.
    """
    a, b = _pair_rdms(X, Y, rdm_method)
    if a.has_missing() or b.has_missing():
        raise NeuronscopeError("deconfounded RSA regresses whole RDMs; give RDMs without missing (NaN) pairs")
    z = _to_rdms(inputs, rdm_method).dissimilarities[0]
    if z.shape[0] != a.dissimilarities.shape[1]:
        raise NeuronscopeError("the input RDM covers different stimuli; give inputs for the same stimuli")
    zc = z - z.mean()
    zz = float(zc @ zc)
    if zz <= 0:
        raise NeuronscopeError("the input RDM is constant; give the stimuli's input features")

    def resid(v: np.ndarray) -> np.ndarray:
        vc = v - v.mean(axis=1, keepdims=True)
        return vc - np.outer(vc @ zc / zz, zc)

    ra, rb = resid(a.dissimilarities), resid(b.dissimilarities)
    return float(np.mean(compare_rdms(RDMs(ra + 0.0), RDMs(rb + 0.0), compare)))


# --------------------------------------------------------------------------- many vs many


def rdm_factor(p: Any, rdm_method: str = "correlation", low: float | None = None,
               up: float | None = None, transform: str | None = None, **_: object) -> RDMs:
    """A population's RDM (computed once for many comparisons); with ``low``/``up`` or
    ``transform`` its topological transform (tRSA, see :func:`topological_rdms`)."""
    r = _to_rdms(p, rdm_method)
    if low is not None or up is not None or transform is not None:
        r = RDMs(topological_rdms(r, transform or "geotopological", 0.1 if low is None else low,
                                  0.9 if up is None else up), stimulus=r.stimulus, names=list(r.names))
    return r


def _rdm_pair(default: str):
    def pair(a: RDMs, b: RDMs, compare: str | None = None, **_: object) -> float:
        if a.stimulus is not None and b.stimulus is not None and not np.array_equal(a.stimulus, b.stimulus):
            b = b.reorder(a.stimulus)
        if a.dissimilarities.shape[1] != b.dissimilarities.shape[1]:
            raise NeuronscopeError(f"RDMs over {a.n_stimuli} and {b.n_stimuli} stimuli; give the same stimuli")
        return float(np.nanmean(compare_rdms(a, b, compare or default)))

    return pair


def _trsa_factor(p: Any, rdm_method: str = "correlation", low: float = 0.1, up: float = 0.9,
                 transform: str = "geotopological", **_: object) -> RDMs:
    return rdm_factor(p, rdm_method, low, up, transform)


RSA = Metric("rsa", rsa, True, options=("rdm_method", "compare"), factor=rdm_factor,
             pair=_rdm_pair("spearman"), factored_options=("rdm_method", "compare"), accepts_rdms=True)
TRSA = Metric("trsa", trsa, True, options=("low", "up", "rdm_method", "compare", "transform"),
              factor=_trsa_factor, pair=_rdm_pair("pearson"),
              factored_options=("low", "up", "rdm_method", "compare", "transform"), accepts_rdms=True)
DECONFOUNDED_RSA = Metric("deconfounded_rsa", deconfounded_rsa, True,
                          options=("inputs", "rdm_method", "compare"))
