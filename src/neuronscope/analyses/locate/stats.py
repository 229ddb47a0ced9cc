"""Label-specific neurons by statistics on the streamed per-label moments: Welch's t (one label
against the rest) or one-way ANOVA F, with Benjamini–Hochberg false-discovery-rate control.

The statistics-based selection of relation-specific neurons (Liu et al. 2025, "On
Relation-Specific Neurons in Large Language Models") and of condition-specific units in
neuroscience, computed from ``label_moments.<field>`` alone: no activation is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuronscope.analyses.locate._data import LabelSummaries, label_summaries, rest_moments
from neuronscope.analyses.locate.result import LocateResult
from neuronscope.errors import NeuronscopeError


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of any-shaped ``p``::

        q_(i) = min_{j ≥ i} min(1, m p_(j) / j)

    over the ``m`` p-values sorted ascending; rejecting ``q ≤ α`` controls the false
    discovery rate at ``α`` for independent or positively dependent tests (Benjamini &
    Hochberg 1995). NaN p-values count as 1.
    """
    p = np.asarray(p, dtype=np.float64)
    flat = np.where(np.isnan(p.ravel()), 1.0, p.ravel())
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(ranked, 1.0)
    return q.reshape(p.shape)


@dataclass
class WelchT:
    """One-vs-rest Welch statistics per (label, neuron): ``t``, Welch–Satterthwaite ``df``,
    two-sided ``p``, and Cohen's ``d`` (difference over the root mean of the two variances)."""

    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    d: np.ndarray


def welch_one_vs_rest(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> WelchT:
    """Welch's t of each label against all other labels, from per-label moments
    (``n`` (L,), ``mean``/``var`` (L, units), var with ddof 0)::

        s²_x = M2_x / (n_x − 1)                 (x = the label l, or the rest r)
        t  = (m_l − m_r) / √(s²_l/n_l + s²_r/n_r)
        df = (s²_l/n_l + s²_r/n_r)² / [(s²_l/n_l)²/(n_l−1) + (s²_r/n_r)²/(n_r−1)]
        p  = 2 · P(T_df > |t|)                  d = (m_l − m_r) / √((s²_l + s²_r)/2)

    (equal to ``scipy.stats.ttest_ind(x_l, x_rest, equal_var=False)``). Constant neurons
    (zero variance on both sides) get ``t = d = 0``, ``p = 1``.
    """
    from scipy import stats

    n = np.asarray(n, dtype=np.float64)
    n_r, mean_r, var_r = rest_moments(n, mean, var)
    n_r = n_r.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        s2l = var * (n / np.maximum(n - 1, 1))[:, None]
        s2r = var_r * (n_r / np.maximum(n_r - 1, 1))[:, None]
        a, b = s2l / n[:, None], s2r / n_r[:, None]
        se2 = a + b
        diff = mean - mean_r
        t = np.where(se2 > 0, diff / np.sqrt(se2), 0.0)
        df = np.where(se2 > 0, se2**2 / (a**2 / np.maximum(n - 1, 1)[:, None] + b**2 / np.maximum(n_r - 1, 1)[:, None]), 1.0)
        pooled = np.sqrt((s2l + s2r) / 2)
        d = np.where(pooled > 0, diff / pooled, 0.0)
    ok = (n[:, None] > 1) & (n_r[:, None] > 1)
    t, d = np.where(ok, t, 0.0), np.where(ok, d, 0.0)
    p = np.where(ok & (se2 > 0), 2 * stats.t.sf(np.abs(t), np.where(df > 0, df, 1.0)), 1.0)
    return WelchT(t, df, p, d)


@dataclass
class AnovaF:
    """One-way ANOVA per neuron: ``F``, its ``p``, ``eta2 = SSB / SST``, ``df`` = (k−1, N−k)."""

    f: np.ndarray
    p: np.ndarray
    eta2: np.ndarray
    df: tuple[int, int]


def anova_f(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> AnovaF:
    """One-way ANOVA F of each neuron across the labels, from per-label moments::

        m = Σ n_l m_l / N;  SSB = Σ n_l (m_l − m)²;  SSW = Σ n_l var_l (= Σ M2_l)
        F = (SSB / (k − 1)) / (SSW / (N − k));  p = P(F_{k−1, N−k} > F);  η² = SSB / (SSB + SSW)

    (equal to ``scipy.stats.f_oneway`` and ``sklearn.feature_selection.f_classif`` on the
    activations). Constant neurons get ``F = 0``, ``p = 1``.
    """
    from scipy import stats

    n = np.asarray(n, dtype=np.float64)
    k, total = len(n), n.sum()
    grand = (n[:, None] * mean).sum(axis=0) / total
    ssb = (n[:, None] * (mean - grand) ** 2).sum(axis=0)
    ssw = (n[:, None] * var).sum(axis=0)
    dfb, dfw = k - 1, int(total) - k
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(ssw > 0, (ssb / dfb) / (ssw / max(dfw, 1)), np.where(ssb > 0, np.inf, 0.0))
        eta2 = np.where(ssb + ssw > 0, ssb / (ssb + ssw), 0.0)
    p = np.where(f > 0, stats.f.sf(f, dfb, max(dfw, 1)), 1.0) if dfw > 0 else np.ones_like(f)
    return AnovaF(f, p, eta2, (dfb, dfw))


def _need_moments(ls: LabelSummaries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ls.mean is None or ls.var is None:
        raise NeuronscopeError(f"site {ls.site!r} has no per-label moments for {ls.field!r}")
    return ls.n, ls.mean, ls.var


def label_statistics(
    run_or_summaries: Any,
    label: str = "lang",
    site: str | Sequence[str] | None = None,
    *,
    test: str = "t",
    alpha: float = 0.05,
    min_effect: float = 0.8,
) -> LocateResult:
    """Label-specific neurons by statistics on the streamed per-label moments, with
    Benjamini–Hochberg FDR control over every test of the selected sites.

    * ``test="t"``: per neuron and label, Welch's t of the label against the rest
      (:func:`welch_one_vs_rest`); neuron ``u`` is specific to label ``l`` when
      ``q[u, l] ≤ alpha`` (:func:`benjamini_hochberg` over all units × labels) and Cohen's
      ``d[u, l] ≥ min_effect`` (it is *higher* on ``l``; 0.8 = Cohen's "large").
    * ``test="f"``: per neuron, the one-way ANOVA F across labels (:func:`anova_f`), BH over
      all units; a significant neuron (``q ≤ alpha``) is specific to the labels whose mean
      exceeds the grand mean by ``min_effect`` within-label standard deviations.

    Tokens of one document are not independent, so the p-values are optimistic at token
    level; the effect-size bound is what keeps the selection meaningful on large corpora.
    Returns a :class:`LocateResult` (``method="stats"``; ``score`` = Welch t as (units,
    labels); ``arrays[site]``: ``p``, ``q``, ``d`` (units, labels) and ``f``, ``f_p``,
    ``f_q``, ``eta2`` (units,)).
    """
    if test not in ("t", "f"):
        raise NeuronscopeError(f"test must be 't' (Welch, one label vs the rest) or 'f' (ANOVA), not {test!r}")
    if not 0.0 < alpha < 1.0:
        raise NeuronscopeError(f"alpha must be in (0, 1), not {alpha}")
    parts = label_summaries(run_or_summaries, label, site)
    welch = [welch_one_vs_rest(*_need_moments(ls)) for ls in parts]
    anova = [anova_f(*_need_moments(ls)) for ls in parts]
    q_t = benjamini_hochberg(np.concatenate([w.p.ravel() for w in welch]))
    q_f = benjamini_hochberg(np.concatenate([a.p for a in anova]))
    specific: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    it = jf = 0
    for ls, w, a in zip(parts, welch, anova, strict=True):
        size = w.p.size
        qt = q_t[it : it + size].reshape(w.p.shape)
        it += size
        qf = q_f[jf : jf + ls.units]
        jf += ls.units
        if test == "t":
            spec = (qt <= alpha) & (w.d >= min_effect)
        else:
            n, mean, var = _need_moments(ls)
            grand = (n[:, None] * mean).sum(axis=0) / n.sum()
            within = np.sqrt((n[:, None] * var).sum(axis=0) / max(n.sum() - len(n), 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.where(within > 0, (mean - grand) / within, 0.0)
            spec = (qf <= alpha)[None, :] & (z >= min_effect)
        specific[ls.site] = spec.T.copy()
        score[ls.site] = w.t.T.copy()
        arrays[ls.site] = {"p": w.p.T.copy(), "q": qt.T.copy(), "d": w.d.T.copy(), "f": a.f, "f_p": a.p,
                           "f_q": qf, "eta2": a.eta2}
    info = {"test": test, "alpha": alpha, "min_effect": min_effect, "samples": int(parts[0].n.sum()),
            "unlabeled": int(parts[0].unlabeled), "tests": int(q_t.size if test == "t" else q_f.size),
            "label_counts": dict(zip(parts[0].labels, parts[0].n.tolist(), strict=True))}
    return LocateResult("stats", label, list(parts[0].labels), [ls.site for ls in parts], specific, score, arrays, info)
