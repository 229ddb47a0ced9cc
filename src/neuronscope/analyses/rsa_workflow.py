"""The RSA model-comparison workflow in one call: models × subjects scores, bootstrap
confidence intervals over subjects and/or stimuli, pairwise model tests, the noise ceiling
and the standard bar figure.

Nili et al. (2014), "A toolbox for representational similarity analysis", and Schütt et al.
(2023), "Statistical inference on representational geometries" (rsatoolbox): each model RDM
is compared with each subject's data RDM; a model's score is the mean over subjects; its
sampling distribution comes from resampling subjects (rsatoolbox ``eval_bootstrap_rdm``),
stimuli (``eval_bootstrap_pattern``) or both (``eval_bootstrap``); the noise ceiling is
rsatoolbox's ``boot_noise_ceiling``.

Speed: the bootstrap is vectorised over samples. For the linear comparators (``pearson``,
``cosine``, ``corr_cov``, ``cosine_cov``) every subject-bootstrap quantity — model means and
both noise-ceiling bounds of every sample — follows from the (subjects × subjects) Gram
matrices of the pooled terms and the data and the (samples × subjects) count matrix, with no
per-sample RDM work. Stimulus resampling keeps each sampled stimulus with its multiplicity
(rsatoolbox's ``subsample_pattern``: pairs of distinct sampled stimuli i, j occur c_i·c_j
times, a stimulus paired with its own copy is left out), i.e. a weighted comparison over the
original pairs with weights c_i·c_j, ranks included (weighted average ranks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import xarray as xr

from neuronscope.analyses.rsa import (
    _compare_matrix,
    _method,
    _noise_ceiling,
    _to_rdms,
    pool_terms,
    whiten,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.rdms import RDMs, as_rdm_stack, n_from_m

__all__ = ["RSAResult", "rsa_models"]

BOOTSTRAPS = ("subjects", "stimuli", "both", "none")
_LINEAR = ("pearson", "cosine", "corr_cov", "cosine_cov")
_RANKS = ("spearman", "rho-a")


# --------------------------------------------------------------------------- result


def _json(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_json(v) for v in x.tolist()] if x.ndim else _json(x.item())
    if isinstance(x, list | tuple):
        return [_json(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class RSAResult:
    """Result of :func:`rsa_models`.

    * ``scores`` (models × subjects): compare(model, subject RDM);
    * ``mean``: each model's mean over subjects; ``ci_low``/``ci_high``: the percentile
      bootstrap interval (level ``ci``) of that mean; ``sem``: the bootstrap standard
      deviation; ``boot_means`` (n_boot × models), the bootstrap distribution;
    * ``noise_ceiling``: (lower, upper) on all data; ``boot_noise_ceiling`` (n_boot × 2);
    * ``p_zero``, ``p_noise``: bootstrap p-values of a model's score against 0 and against
      the lower bound ((#samples on the other side + 1)/n_boot, as rsatoolbox);
    * ``p_pairwise_bootstrap``: two-sided bootstrap test of each model difference
      (rsatoolbox ``bootstrap_pair_tests``); ``p_pairwise_ttest``: paired t-test over
      subjects, t = mean(d)/√(var(d, ddof=1)/k) with k - 1 degrees of freedom (rsatoolbox's
      ``eval_fixed`` variances through ``t_tests``);
      ``p_pairwise_wilcoxon``: Wilcoxon signed-rank test over subjects (``ranksum``).
    """

    models: list[str]
    subjects: list[str]
    method: str
    scores: np.ndarray
    noise_ceiling: tuple[float, float] | None
    bootstrap: str
    n_boot: int
    ci: float
    boot_means: np.ndarray
    boot_noise_ceiling: np.ndarray | None
    mean: np.ndarray = field(init=False)
    ci_low: np.ndarray = field(init=False)
    ci_high: np.ndarray = field(init=False)
    sem: np.ndarray = field(init=False)
    p_zero: np.ndarray = field(init=False)
    p_noise: np.ndarray = field(init=False)
    p_pairwise_bootstrap: np.ndarray = field(init=False)
    p_pairwise_ttest: np.ndarray = field(init=False)
    p_pairwise_wilcoxon: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        s = self.scores
        n_models, k = s.shape
        self.mean = np.nanmean(s, axis=1)
        boot = self.boot_means[np.isfinite(self.boot_means).all(axis=1)] if len(self.boot_means) else self.boot_means
        tail = (1.0 - self.ci) / 2.0
        if len(boot):
            self.ci_low = np.quantile(boot, tail, axis=0)
            self.ci_high = np.quantile(boot, 1.0 - tail, axis=0)
            self.sem = boot.std(axis=0, ddof=1) if len(boot) > 1 else np.full(n_models, np.nan)
            nb = len(boot)
            self.p_zero = ((boot <= 0).sum(axis=0) + 1) / nb
            if self.boot_noise_ceiling is not None:
                lo = self.boot_noise_ceiling[np.isfinite(self.boot_means).all(axis=1), 0]
                self.p_noise = (((lo[:, None] - boot) <= 0).sum(axis=0) + 1) / nb
            else:
                self.p_noise = np.full(n_models, np.nan)
            self.p_pairwise_bootstrap = _bootstrap_pair_tests(boot)
        else:
            nan = np.full(n_models, np.nan)
            self.ci_low = self.ci_high = self.sem = self.p_zero = self.p_noise = nan
            self.p_pairwise_bootstrap = np.full((n_models, n_models), np.nan)
        self.p_pairwise_ttest = _t_tests(s)
        self.p_pairwise_wilcoxon = _wilcoxon_tests(s)

    def to_frame(self) -> Any:
        """One row per model: mean, ci_low, ci_high, sem, p_zero, p_noise, then one column
        per subject's score (a pandas DataFrame indexed by model)."""
        import pandas as pd

        df = pd.DataFrame({"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                           "sem": self.sem, "p_zero": self.p_zero, "p_noise": self.p_noise},
                          index=pd.Index(self.models, name="model"))
        for j, subj in enumerate(self.subjects):
            df[f"score[{subj}]"] = self.scores[:, j]
        return df

    def pairwise_frame(self) -> Any:
        """One row per model pair (a, b): mean difference a - b and the three p-values."""
        import pandas as pd

        rows = []
        for a in range(len(self.models)):
            for b in range(a + 1, len(self.models)):
                rows.append({"a": self.models[a], "b": self.models[b], "difference": self.mean[a] - self.mean[b],
                             "p_bootstrap": self.p_pairwise_bootstrap[a, b], "p_ttest": self.p_pairwise_ttest[a, b],
                             "p_wilcoxon": self.p_pairwise_wilcoxon[a, b]})
        return pd.DataFrame(rows, columns=["a", "b", "difference", "p_bootstrap", "p_ttest", "p_wilcoxon"])

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready lists and floats (NaN as null)."""
        out = {
            "method": self.method, "bootstrap": self.bootstrap, "n_boot": self.n_boot, "ci": self.ci,
            "models": list(self.models), "subjects": list(self.subjects), "scores": self.scores,
            "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "sem": self.sem,
            "p_zero": self.p_zero, "p_noise": self.p_noise,
            "noise_ceiling": None if self.noise_ceiling is None else
            {"lower": self.noise_ceiling[0], "upper": self.noise_ceiling[1]},
            "p_pairwise_bootstrap": self.p_pairwise_bootstrap, "p_pairwise_ttest": self.p_pairwise_ttest,
            "p_pairwise_wilcoxon": self.p_pairwise_wilcoxon,
        }
        return {k: _json(v) for k, v in out.items()}

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    def save(self, run: Any, name: str = "rsa", title: str | None = None) -> str:
        """Store the result in a run as ``extras/<name>`` so its atlas shows it: the
        models × subjects ``scores`` as a heatmap, each model's ``mean``, ``ci_low``,
        ``ci_high`` (1-D) and the noise ceiling and comparator as notes. Returns ``name``."""
        from neuronscope.store import Run, open_run

        run = run if isinstance(run, Run) else open_run(Path(run))
        attrs: dict[str, Any] = {
            "title": title or f"RSA: {len(self.models)} models vs {len(self.subjects)} subjects ({self.method})",
            "method": self.method, "bootstrap": self.bootstrap, "n_boot": self.n_boot,
            "models": list(self.models), "subjects": list(self.subjects),
            "heatmaps": {"scores": {"title": f"RDM similarity ({self.method}) per model and subject",
                                    "rows": list(self.models), "cols": list(self.subjects),
                                    "vmin": float(min(0.0, np.nanmin(self.scores))) if np.isfinite(self.scores).any()
                                    else 0.0, "vmax": 1.0}},
        }
        if self.noise_ceiling is not None:
            attrs["noise_ceiling_lower"], attrs["noise_ceiling_upper"] = map(float, self.noise_ceiling)
        run.write_extras(name, {"scores": self.scores, "mean": self.mean, "ci_low": self.ci_low,
                                "ci_high": self.ci_high}, attrs)
        return name

    def plot(self, path: str | Path) -> Path:
        """The standard RSA bar figure: one bar per model (its mean), the bootstrap confidence
        interval as error bars and the noise ceiling (lower to upper) as a grey band. PNG or
        SVG by the suffix of ``path`` (matplotlib, no GUI backend)."""
        from matplotlib.figure import Figure

        p = Path(path)
        if p.suffix.lower() not in (".png", ".svg"):
            raise NeuronscopeError(f"plot writes .png or .svg, not {p.suffix!r}; change the file suffix")
        import matplotlib

        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig = Figure(figsize=(max(4.0, 0.7 * len(self.models) + 2.0), 4.0))
            ax = fig.add_subplot()
            x = np.arange(len(self.models))
            if self.noise_ceiling is not None:
                ax.axhspan(self.noise_ceiling[0], self.noise_ceiling[1], color="#cccccc", zorder=0,
                           label="noise ceiling", gid="noise_ceiling")
            yerr = None
            if np.isfinite(self.ci_low).all():
                yerr = np.vstack([self.mean - self.ci_low, self.ci_high - self.mean])
            ax.bar(x, self.mean, yerr=yerr, capsize=3, color="#4477aa", zorder=2)
            ax.set_xticks(x, self.models, rotation=45, ha="right")
            ax.set_ylabel(f"RDM similarity ({self.method})")
            ax.axhline(0, color="black", linewidth=0.8)
            ci_txt = f"{round(100 * self.ci)}% CI over {self.bootstrap}" if self.bootstrap != "none" else "no CI"
            ax.set_title(f"models vs {len(self.subjects)} subjects ({ci_txt})", fontsize=10)
            fig.tight_layout()
            fig.savefig(p)
        return p


def _bootstrap_pair_tests(boot: np.ndarray) -> np.ndarray:
    """rsatoolbox ``bootstrap_pair_tests``: 2 × the smaller proportion of samples on either
    side of 0, shrunk by (B - 1)/B and shifted by 1/B; 1 on the diagonal."""
    b, m = boot.shape
    less = (boot[:, :, None] < boot[:, None, :]).sum(0)
    eq = (boot[:, :, None] == boot[:, None, :]).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prop = less / (b - eq)
    prop = np.minimum(prop, 1 - prop) * 2
    prop = (b - 1) / b * prop + 1 / b
    iu = np.triu_indices(m, k=1)
    out = np.ones((m, m))
    out[iu] = prop[iu]
    out[iu[1], iu[0]] = prop[iu]
    return out


def _t_tests(s: np.ndarray) -> np.ndarray:
    """Paired t-tests over subjects as rsatoolbox (``eval_fixed`` variances + ``t_tests``)."""
    m, k = s.shape
    out = np.ones((m, m))
    if k < 2:
        return np.full((m, m), np.nan)
    for a in range(m):
        for b in range(a + 1, m):
            d = s[a] - s[b]
            var = np.var(d, ddof=1) / k  # rsatoolbox: cov(ddof=0)/k corrected by k/(k-1)
            t = np.mean(d) / np.sqrt(max(var, np.finfo(float).eps))
            out[a, b] = out[b, a] = 2 * (1 - scipy.stats.t.cdf(abs(t), k - 1))
    return out


def _wilcoxon_tests(s: np.ndarray) -> np.ndarray:
    m = len(s)
    out = np.ones((m, m))
    for a in range(m):
        for b in range(a + 1, m):
            d = s[a] - s[b]
            if np.all(d == 0) or len(d) < 2:
                p = 1.0
            else:
                p = float(scipy.stats.wilcoxon(s[a], s[b]).pvalue)
            out[a, b] = out[b, a] = p
    return out


# --------------------------------------------------------------------------- inputs


def _models_rdms(models: Any, data: RDMs, rdm_method: str) -> RDMs:
    """Models as one RDMs stack named by model, in the data's stimulus order."""
    def one(name: str, val: Any) -> RDMs:
        if isinstance(val, RDMs):
            r = val
            names = [name] if len(r) == 1 else [f"{name}:{x}" for x in r.names]
            return RDMs(r.dissimilarities, stimulus=r.stimulus, names=names, measure=r.measure)
        if isinstance(val, xr.DataArray):
            r = _to_rdms(val, rdm_method)
            return RDMs(r.dissimilarities, stimulus=r.stimulus, names=[name], measure=rdm_method)
        a = np.asarray(val, dtype=np.float64)
        is_square_rdm = a.ndim == 2 and a.shape[0] == a.shape[1] and np.allclose(np.diagonal(a), 0)
        if a.ndim == 2 and a.shape[0] == data.n_stimuli and not is_square_rdm:
            r = _to_rdms(a, rdm_method)  # a population (stimuli × units)
            return RDMs(r.dissimilarities, names=[name], measure=rdm_method)
        r = as_rdm_stack(a)
        names = [name] if len(r) == 1 else [f"{name}[{i}]" for i in range(len(r))]
        return RDMs(r.dissimilarities, names=names)

    if isinstance(models, RDMs):
        parts = [models]
    elif isinstance(models, Mapping):
        if not models:
            raise NeuronscopeError("no models given; pass a mapping name -> RDM or population")
        parts = [one(str(k), v) for k, v in models.items()]
    else:
        parts = [as_rdm_stack(models)]
    aligned = []
    for r in parts:
        if r.n_stimuli != data.n_stimuli:
            raise NeuronscopeError(
                f"model {r.names[0]!r} covers {r.n_stimuli} stimuli and the data {data.n_stimuli}; "
                "give model RDMs over the data's stimuli"
            )
        if r.stimulus is not None and data.stimulus is not None and not np.array_equal(r.stimulus, data.stimulus):
            r = r.reorder(data.stimulus)
        aligned.append(r)
    return RDMs(np.concatenate([r.dissimilarities for r in aligned]), stimulus=data.stimulus,
                names=[n for r in aligned for n in r.names])


# --------------------------------------------------------------------------- weighted comparisons


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of each row of ``x`` in the expanded vector where entry p occurs w_p
    times: (weight of smaller values) + (weight of its tie group + 1)/2."""
    r, m = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, 1)
    ws = w[order]
    before = np.cumsum(ws, axis=1) - ws
    new = np.ones_like(xs, dtype=bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    gid = (np.cumsum(new, axis=1) - 1) + (np.arange(r) * m)[:, None]
    gsum = np.bincount(gid.ravel(), weights=ws.ravel(), minlength=r * m)
    gbefore = np.zeros(r * m)
    gbefore[gid[new]] = before[new]
    ranks_sorted = gbefore[gid] + (gsum[gid] + 1.0) / 2.0
    out = np.empty_like(ranks_sorted)
    np.put_along_axis(out, order, ranks_sorted, 1)
    return out


def _wcompare(a: np.ndarray, b: np.ndarray, w: np.ndarray, method: str) -> np.ndarray:
    """(ka, kb) similarities of complete rows under pair weights ``w`` (the comparison of
    the expanded vectors in which pair p occurs w_p times)."""
    tot = w.sum()
    if method in _RANKS:
        a, b = _weighted_ranks(a, w), _weighted_ranks(b, w)
        if method == "rho-a":
            c = (tot + 1.0) / 2.0
            return ((a - c) * w) @ (b - c).T * 12.0 / (tot**3 - tot)
    if method in ("pearson", "spearman"):
        a = a - (a @ w / tot)[:, None]
        b = b - (b @ w / tot)[:, None]
    num = (a * w) @ b.T
    na, nb = np.sqrt((a * a) @ w), np.sqrt((b * b) @ w)
    den = np.outer(na, nb)
    return np.clip(num / np.where(den > 0, den, np.inf), -1.0, 1.0)


def _wpool_terms(v: np.ndarray, w: np.ndarray, method: str) -> np.ndarray:
    """:func:`pool_terms` of the expanded vectors (pair weights ``w``)."""
    tot = w.sum()
    if method == "cosine":
        return v / np.sqrt((v * v) @ w / tot)[:, None]
    if method == "pearson":
        c = v - (v @ w / tot)[:, None]
        return c / np.sqrt((c * c) @ w / tot)[:, None]
    return _weighted_ranks(v, w)


def _wsample(mv: np.ndarray, dv: np.ndarray, c: np.ndarray, w: np.ndarray, method: str,
             ceiling: bool) -> tuple[np.ndarray, float, float]:
    """One bootstrap sample for pearson/cosine/spearman/rho-a with subject counts ``c`` and
    pair weights ``w``: (model means, lower, upper)."""
    present = np.flatnonzero(c > 0)
    s = _wcompare(mv, dv[present], w, method)
    means = s @ c[present] / c[present].sum()
    if not ceiling or len(present) < 2:
        return means, np.nan, np.nan
    z = _wpool_terms(dv[present], w, method)
    cz = z * c[present][:, None]
    tot = cz.sum(0)
    full = tot / c[present].sum()
    rest = (tot[None] - cz) / (c[present].sum() - c[present])[:, None]
    up = _wcompare(full[None], dv[present], w, method)[0]
    if method in _RANKS:
        lo = np.array([_wcompare(rest[i][None], dv[present[i]][None], w, method)[0, 0] for i in range(len(present))])
    else:  # linear in the pooled vector: one product per left-out subject
        lo = np.diagonal(_wcompare(rest, dv[present], w, method)).copy()
    return means, float(lo.mean()), float(up.mean())


def _expand(v: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """rsatoolbox ``subsample_pattern``: the sub-matrix of the sorted sampled stimuli with
    repeats, a stimulus paired with its own copy NaN; condensed."""
    n = n_from_m(v.shape[1])
    s = np.sort(sample)
    sq = np.zeros((len(v), n, n))
    iu = np.triu_indices(n, k=1)
    sq[:, iu[0], iu[1]] = v
    sq[:, iu[1], iu[0]] = v
    sq[:, np.arange(n), np.arange(n)] = np.nan
    sub = sq[:, s][:, :, s]
    ju = np.triu_indices(len(s), k=1)
    return sub[:, ju[0], ju[1]]


# --------------------------------------------------------------------------- subject bootstrap, vectorised


def _gram_ceiling(dv: np.ndarray, counts: np.ndarray, method: str) -> np.ndarray:
    """(B, 2) lower/upper bounds for every subject-count vector (row of ``counts``) of a
    linear comparator, from (K × K) Gram matrices of pooled terms A and comparison targets T:
    compare(Σ_j c_j z_j, v_i) = (c·G_AT)_i / (√(cᵀG_AA c) ‖T_i‖)."""
    z = pool_terms(dv, method)
    if method in ("pearson", "corr_cov"):
        t = dv - dv.mean(axis=1, keepdims=True)
        z = z - z.mean(axis=1, keepdims=True)
    else:
        t = dv
    if method in ("corr_cov", "cosine_cov"):
        z, t = whiten(z), whiten(t)
    gat, gaa = z @ t.T, z @ z.T
    tn = np.sqrt(np.einsum("ij,ij->i", t, t))
    c = counts.astype(np.float64)
    cg = c @ gat  # (B, K): Σ_j c_j <a_j, t_i>
    ca = c @ gaa  # (B, K): Σ_j c_j <a_j, a_i>
    q = np.einsum("bk,bk->b", ca, c)  # cᵀ G_AA c
    dg_at, dg_aa = np.diagonal(gat), np.diagonal(gaa)
    present = c > 0
    npres = present.sum(1)

    def cos(num: np.ndarray, sq: np.ndarray) -> np.ndarray:
        den = np.sqrt(np.maximum(sq, 0.0)) * tn[None]
        return np.clip(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0), -1.0, 1.0)

    up = cos(cg, np.broadcast_to(q[:, None], cg.shape))
    lo = cos(cg - c * dg_at[None], q[:, None] - 2 * c * ca + c * c * dg_aa[None])
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = np.where(present, up, 0).sum(1) / npres
        lower = np.where(present, lo, 0).sum(1) / npres
    bad = npres < 2
    upper[bad] = lower[bad] = np.nan
    return np.column_stack([lower, upper])


def _rank_ceiling(dv: np.ndarray, counts: np.ndarray, method: str) -> np.ndarray:
    """(B, 2) bounds for spearman/rho-a: the pooled mean ranks re-ranked per sample."""
    r = scipy.stats.rankdata(dv, axis=1)
    m = dv.shape[1]
    rc = r - r.mean(axis=1, keepdims=True)
    rn = np.sqrt(np.einsum("ij,ij->i", rc, rc))
    out = np.full((len(counts), 2), np.nan)
    for b, c in enumerate(counts.astype(np.float64)):
        present = np.flatnonzero(c > 0)
        if len(present) < 2:
            continue
        tot = c[present] @ r[present]
        pools = np.vstack([tot[None], (tot[None] - c[present][:, None] * r[present])])
        pr = scipy.stats.rankdata(pools, axis=1)
        pr -= pr.mean(axis=1, keepdims=True)
        if method == "rho-a":
            up = pr[0] @ rc[present].T * 12.0 / (m**3 - m)
            lo = np.einsum("ij,ij->i", pr[1:], rc[present]) * 12.0 / (m**3 - m)
        else:
            pn = np.sqrt(np.einsum("ij,ij->i", pr, pr))
            up = (pr[0] @ rc[present].T) / (pn[0] * rn[present])
            lo = np.einsum("ij,ij->i", pr[1:], rc[present]) / (pn[1:] * rn[present])
        out[b] = lo.mean(), up.mean()
    return out


# --------------------------------------------------------------------------- the workflow


def rsa_models(
    models: RDMs | Mapping[str, Any],
    data: Any,
    method: str = "corr",
    bootstrap: str = "subjects",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    rdm_method: str = "correlation",
    boot_subjects: np.ndarray | None = None,
    boot_stimuli: np.ndarray | None = None,
) -> RSAResult:
    """Compare model RDMs with subjects' data RDMs: the standard RSA model comparison.

    ``models`` is an :class:`RDMs` stack (one row per model, named by ``names``) or a
    mapping name -> model, each an :class:`RDMs`, a condensed/square RDM, or a population
    (DataArray, e.g. a run site, or a stimuli × units array) whose RDM is :func:`rdm` with
    ``rdm_method``. ``data`` is the subjects' RDMs (:class:`RDMs`, e.g. from
    :func:`~neuronscope.sources.brain.load_rdms`, or a (k, m)/(k, n, n) array). Models with
    stimulus ids are put in the data's order. ``method`` is any comparator of
    :func:`compare_rdms` (default ``corr`` = Pearson); missing (NaN) pairs are skipped
    pairwise.

    ``bootstrap``: ``subjects`` (resample subjects: rsatoolbox ``eval_bootstrap_rdm``),
    ``stimuli`` (resample stimuli with repeats: ``eval_bootstrap_pattern``), ``both``
    (``eval_bootstrap``) or ``none``; ``n_boot`` samples from ``numpy.random.default_rng(seed)``,
    or the explicit samples ``boot_subjects`` (n_boot, n_subjects) / ``boot_stimuli``
    (n_boot, n_stimuli) of indices (e.g. to replay another tool's samples). A stimulus sample
    with fewer than 3 distinct stimuli is skipped (NaN, as rsatoolbox). Each sample gives the
    models' mean scores and the noise ceiling of the resampled data (rsatoolbox's
    ``boot_noise_ceiling``: pooled over every copy, averaged over the distinct subjects).
    ``ci`` sets the percentile interval. See :class:`RSAResult` for what is returned.
    """
    meth = _method(method)
    if bootstrap not in BOOTSTRAPS:
        raise NeuronscopeError(f"unknown bootstrap {bootstrap!r}; use one of {', '.join(BOOTSTRAPS)}")
    if not 0.0 < ci < 1.0:
        raise NeuronscopeError("ci is a level between 0 and 1, e.g. 0.95")
    d = data if isinstance(data, RDMs) else as_rdm_stack(data)
    mr = _models_rdms(models, d, rdm_method)
    dv, mv = d.dissimilarities, mr.dissimilarities
    k, n = len(dv), d.n_stimuli
    scores = _compare_matrix(mv, dv, meth)
    ceiling_ok = meth != "bures" and k >= 2
    nc = _noise_ceiling(dv, meth) if ceiling_ok else None

    rng = np.random.default_rng(seed)
    want_subj = bootstrap in ("subjects", "both")
    want_stim = bootstrap in ("stimuli", "both")
    if bootstrap == "none":
        n_boot = 0
    subj = stim = None
    if want_subj:
        subj = (np.asarray(boot_subjects, dtype=np.int64) if boot_subjects is not None
                else rng.integers(0, k, size=(n_boot, k)))
        if subj.ndim != 2 or subj.shape[1] != k or subj.min() < 0 or subj.max() >= k:
            raise NeuronscopeError(f"boot_subjects must be (n_boot, {k}) indices in [0, {k})")
        n_boot = len(subj)
    if want_stim:
        stim = (np.asarray(boot_stimuli, dtype=np.int64) if boot_stimuli is not None
                else rng.integers(0, n, size=(n_boot, n)))
        if stim.ndim != 2 or stim.shape[1] != n or stim.min() < 0 or stim.max() >= n:
            raise NeuronscopeError(f"boot_stimuli must be (n_boot, {n}) indices in [0, {n})")
        if subj is not None and len(subj) != len(stim):
            raise NeuronscopeError("boot_subjects and boot_stimuli need the same number of samples")
        n_boot = len(stim)
    counts = (np.stack([np.bincount(s, minlength=k) for s in subj]) if subj is not None
              else np.ones((n_boot, k), dtype=np.int64))
    complete = np.isfinite(dv).all() and np.isfinite(mv).all()

    boot = np.full((n_boot, len(mv)), np.nan)
    bnc = np.full((n_boot, 2), np.nan) if ceiling_ok and n_boot else None
    if n_boot and not want_stim:
        boot = counts @ scores.T / counts.sum(1, keepdims=True)  # per-subject scores are fixed
        if bnc is not None:
            if complete and meth in _LINEAR:
                bnc = _gram_ceiling(dv, counts, meth)
            elif complete and meth in _RANKS:
                bnc = _rank_ceiling(dv, counts, meth)
            else:
                for b, c in enumerate(counts):
                    if (c > 0).sum() >= 2:
                        bnc[b] = _noise_ceiling(dv, meth, c)
    elif n_boot:
        iu = np.triu_indices(n, k=1)
        for b in range(n_boot):
            sc = np.bincount(stim[b], minlength=n)
            if (sc > 0).sum() < 3:
                continue
            c = counts[b]
            if complete and meth in _LINEAR[:2] + _RANKS:
                w = (sc[iu[0]] * sc[iu[1]]).astype(np.float64)
                keep = w > 0
                boot[b], lo, up = _wsample(mv[:, keep], dv[:, keep], c.astype(np.float64), w[keep], meth,
                                           bnc is not None)
                if bnc is not None:
                    bnc[b] = lo, up
            else:
                ev, em = _expand(dv, stim[b]), _expand(mv, stim[b])
                present = np.flatnonzero(c > 0)
                s = _compare_matrix(em, ev[present], meth)
                boot[b] = s @ c[present] / c[present].sum()
                if bnc is not None and len(present) >= 2:
                    bnc[b] = _noise_ceiling(ev, meth, c)
    return RSAResult(models=list(mr.names), subjects=list(d.names), method=meth, scores=scores,
                     noise_ceiling=nc, bootstrap=bootstrap, n_boot=int(n_boot), ci=ci, boot_means=boot,
                     boot_noise_ceiling=bnc)
