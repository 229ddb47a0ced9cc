"""Representational similarity analysis (RSA), its noise ceiling, topological and
deconfounded RSA.

Kriegeskorte, Mur & Bandettini (2008), "Representational similarity analysis — connecting
the branches of systems neuroscience"; conventions follow rsatoolbox (Schütt et al. 2023):
RDMs are stored condensed (the upper triangle in scipy ``squareform`` order), the
``euclidean`` RDM is the squared Euclidean distance per channel, crossnobis is the
leave-one-repeat-out cross-validated squared distance, and the noise ceiling is
rsatoolbox's ``boot_noise_ceiling`` (leave-one-subject-out lower bound, all-subject upper
bound). Topological RSA follows Lin & Kriegeskorte (2023), "The topology and geometry of
neural representations".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats
import xarray as xr

from neuronscope.analyses._linalg import gram
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
from neuronscope.rdms import RDMs, as_rdm_stack, condense_square

RDM_METHODS = ("correlation", "euclidean", "cosine", "crossnobis")
COMPARATORS = ("pearson", "spearman", "kendall", "cosine", "rho-a")
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


def rdm(
    X: ArrayLike,
    method: str = "correlation",
    stimulus: Any = None,
    repeat: Any = None,
    noise: np.ndarray | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Representational dissimilarity matrix of a population, condensed (m = n(n-1)/2,).

    Rows of ``X`` (n, p) are stimuli (repeats of a ``stimulus`` id are averaged, except for
    crossnobis). Methods (as rsatoolbox ``calc_rdm``):

    * ``correlation``: d_ij = 1 - r(x_i, x_j) (Pearson across channels);
    * ``euclidean``: d_ij = ‖x_i - x_j‖² / p (squared Euclidean per channel);
    * ``cosine``: d_ij = 1 - x_i·x_j / (‖x_i‖‖x_j‖);
    * ``crossnobis``: d_ij = (1/R) Σ_r (a_i^{(-r)} - a_j^{(-r)})ᵀ Λ (b_i^{(r)} - b_j^{(r)}) / p, with
      b^{(r)} repeat r, a^{(-r)} the mean of the other repeats and Λ the noise precision
      ``noise`` (identity by default) — an unbiased estimate of the squared distance
      (Walther et al. 2016). Needs balanced ``stimulus``/``repeat`` labels.

    All products are one BLAS Gram matrix (blocked above 8192 stimuli). ``precision``:
    ``float64``, ``float32`` (the Gram product of the float64-normalised patterns in float32:
    ~2× faster, dissimilarities within ~1e-6) or ``auto`` (float32 for float32 input).
    """
    if precision not in ("auto", "float32", "float64"):
        raise NeuronscopeError("precision must be 'auto', 'float32' or 'float64'")
    if precision == "auto":
        is32 = (X.dtype if isinstance(X, xr.DataArray | np.ndarray) else np.float64) == np.float32
        precision = "float32" if is32 else "float64"
    gdt = np.float32 if precision == "float32" else np.float64
    x, stimulus, repeat = _stimulus_repeat(X, stimulus, repeat)
    if method == "crossnobis":
        reps, _ = split_repeats(x, stimulus, repeat)
        if noise is not None:
            reps = reps @ np.linalg.cholesky(np.asarray(noise, dtype=np.float64))
        r, n, p = reps.shape
        s = reps.sum(0)
        cat = np.transpose(reps, (1, 0, 2)).reshape(n, r * p)
        k = (gram(s) - gram(cat)) / (r - 1)  # Σ_r a^{(-r)} b^{(r)}ᵀ
        dg = np.diagonal(k)
        d = dg[:, None] + dg[None, :] - k - k.T
        return condense_square(d, overwrite=True) / (r * p)
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
        return np.maximum(condense_square(g, overwrite=True), 0.0) / x.shape[1]
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
    return condense_square(g, overwrite=True)


def rdms_from_repeats(X: ArrayLike, method: str = "correlation", stimulus: Any = None,
                      repeat: Any = None) -> RDMs:
    """One RDM per repeat index (for a noise ceiling from repeats)."""
    x, stimulus, repeat = _stimulus_repeat(X, stimulus, repeat)
    reps, us = split_repeats(x, stimulus, repeat)
    return RDMs(np.stack([rdm(r, method) for r in reps]), stimulus=us,
                names=[f"repeat{i}" for i in range(len(reps))], measure=method)


# --------------------------------------------------------------------------- comparators


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


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float | np.ndarray:
    """Similarity of RDMs (condensed vectors, square matrices, stacks or :class:`RDMs`).

    Comparators (as rsatoolbox ``compare``): ``pearson`` (``corr``), ``spearman`` (Pearson of
    average ranks), ``kendall`` (Kendall's τ_a: (C - D)/(m(m-1)/2), no tie correction;
    also ``tau-a``), ``cosine`` (a·b/(‖a‖‖b‖)), ``rho-a`` (12 Σ r̃_a r̃_b / (m³ - m)). Returns a
    float for two single RDMs, else the (k_a, k_b) matrix. Centered vectors with zero norm
    (a constant RDM) give similarity 0.
    """
    method = _ALIASES.get(method, method)
    if method not in COMPARATORS:
        raise NeuronscopeError(f"unknown RDM comparator {method!r}; use one of {', '.join(COMPARATORS)}")
    ra, rb = as_rdm_stack(a), as_rdm_stack(b)
    va, vb = ra.dissimilarities, rb.dissimilarities
    if va.shape[1] != vb.shape[1]:
        raise NeuronscopeError(
            f"RDMs over {ra.n_stimuli} and {rb.n_stimuli} stimuli; compare RDMs of the same stimuli"
        )
    if method == "kendall":
        out = np.array([[_tau_a(x, y) for y in vb] for x in va])
    elif method == "rho-a":
        m = va.shape[1]
        out = _prep(va, method) @ _prep(vb, method).T * 12.0 / (m**3 - m)
    else:
        pa, pb = _prep(va, method), _prep(vb, method)
        na, nb = np.linalg.norm(pa, axis=1), np.linalg.norm(pb, axis=1)
        out = (pa @ pb.T) / np.where(np.outer(na, nb) > 0, np.outer(na, nb), np.inf)
        out = np.clip(out, -1.0, 1.0)
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
    return RDMs(rdm(X, rdm_method)[None], stimulus=stim, measure=rdm_method)


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
    return float(np.mean(compare_rdms(a, b, compare)))


# --------------------------------------------------------------------------- noise ceiling


def _pool(v: np.ndarray, method: str) -> np.ndarray:
    """The RDM that best fits a stack under ``method`` (rsatoolbox ``pool_rdm``)."""
    if method == "cosine":
        v = v / np.sqrt(np.mean(v**2, axis=1, keepdims=True))
        return v.mean(0)
    if method == "pearson":
        v = v - v.mean(axis=1, keepdims=True)
        v = v / v.std(axis=1, keepdims=True)
        p = v.mean(0)
        return p - p.min()
    return scipy.stats.rankdata(v, axis=1).mean(0)  # spearman, rho-a, kendall: averaged ranks


def noise_ceiling(data: Any, method: str = "spearman", rdm_method: str = "correlation") -> tuple[float, float]:
    """Lower and upper bound of the RSA noise ceiling (rsatoolbox ``boot_noise_ceiling``;
    Nili et al. 2014, "A toolbox for representational similarity analysis").

    ``data`` is several RDMs (one per subject / session: :class:`RDMs`, (k, m) or (k, n, n)),
    or a population with ``stimulus`` and ``repeat`` labels (one RDM per repeat). With P(S)
    the RDM pooled over subjects S for the comparator (mean of normalised RDMs or of ranks):
    upper = mean_i compare(P(all), RDM_i), lower = mean_i compare(P(all \\ i), RDM_i).
    """
    method = _ALIASES.get(method, method)
    if isinstance(data, xr.DataArray) and "repeat" in data.coords:
        stack = rdms_from_repeats(data, rdm_method)
    else:
        stack = as_rdm_stack(data)
    v = stack.dissimilarities
    if len(v) < 2:
        raise NeuronscopeError("a noise ceiling needs at least 2 RDMs (subjects, sessions or repeats)")
    full = _pool(v, method)
    lo, up = [], []
    for i in range(len(v)):
        rest = np.delete(v, i, axis=0)
        lo.append(compare_rdms(_pool(rest, method), v[i], method))
        up.append(compare_rdms(full, v[i], method))
    return float(np.mean(lo)), float(np.mean(up))


# --------------------------------------------------------------------------- tRSA


def geotopological_transform(d: Any, low: float = 0.0, up: float = 1.0) -> np.ndarray:
    """Geo-topological transform of RDMs (Lin & Kriegeskorte 2023).

    With l, u the ``low`` and ``up`` quantiles of each RDM's dissimilarities:
    GT(d) = 0 for d < l, (d - l)/(u - l) for l <= d <= u, 1 for d > u. ``low=0, up=1`` is the
    plain RDM rescaled to [0, 1] (an affine map, so RSA scores are unchanged). Returns the
    same layout as given for a 1-D or (k, m) array; :class:`RDMs` give a (k, m) array.
    """
    if not 0.0 <= low < up <= 1.0:
        raise NeuronscopeError("quantile thresholds need 0 <= low < up <= 1")
    v = d.dissimilarities if isinstance(d, RDMs) else np.asarray(d, dtype=np.float64)
    one = v.ndim == 1
    v = np.atleast_2d(v)
    lo = np.quantile(v, low, axis=1, keepdims=True)
    hi = np.quantile(v, up, axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.clip((v - lo) / span, 0.0, 1.0)
    out = np.where(v > hi, 1.0, out)
    return out[0] if one else out


def trsa(X: Any, Y: Any, low: float = 0.1, up: float = 0.9, rdm_method: str = "correlation",
         compare: str = "pearson") -> float:
    """Topological RSA (Lin & Kriegeskorte 2023): RSA on geo-topologically transformed RDMs
    (:func:`geotopological_transform` with quantile thresholds ``low``, ``up``)."""
    a, b = _pair_rdms(X, Y, rdm_method)
    ga = RDMs(geotopological_transform(a, low, up))
    gb = RDMs(geotopological_transform(b, low, up))
    return float(np.mean(compare_rdms(ga, gb, compare)))


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
               up: float | None = None, **_: object) -> RDMs:
    """A population's RDM (computed once for many comparisons); with ``low``/``up`` its
    geo-topological transform (tRSA)."""
    r = _to_rdms(p, rdm_method)
    if low is not None or up is not None:
        r = RDMs(geotopological_transform(r, 0.1 if low is None else low, 0.9 if up is None else up),
                 stimulus=r.stimulus)
    return r


def _rdm_pair(default: str):
    def pair(a: RDMs, b: RDMs, compare: str | None = None, **_: object) -> float:
        if a.stimulus is not None and b.stimulus is not None and not np.array_equal(a.stimulus, b.stimulus):
            b = b.reorder(a.stimulus)
        if a.dissimilarities.shape[1] != b.dissimilarities.shape[1]:
            raise NeuronscopeError(f"RDMs over {a.n_stimuli} and {b.n_stimuli} stimuli; give the same stimuli")
        return float(np.mean(compare_rdms(a, b, compare or default)))

    return pair


def _trsa_factor(p: Any, rdm_method: str = "correlation", low: float = 0.1, up: float = 0.9,
                 **_: object) -> RDMs:
    return rdm_factor(p, rdm_method, low, up)


RSA = Metric("rsa", rsa, True, options=("rdm_method", "compare"), factor=rdm_factor,
             pair=_rdm_pair("spearman"), factored_options=("rdm_method", "compare"), accepts_rdms=True)
TRSA = Metric("trsa", trsa, True, options=("low", "up", "rdm_method", "compare"), factor=_trsa_factor,
              pair=_rdm_pair("pearson"), factored_options=("low", "up", "rdm_method", "compare"),
              accepts_rdms=True)
DECONFOUNDED_RSA = Metric("deconfounded_rsa", deconfounded_rsa, True,
                          options=("inputs", "rdm_method", "compare"))
