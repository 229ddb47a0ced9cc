"""Difference-in-means directions per label and label pair, and their projection as a 1-d probe
(the baseline of Marks & Tegmark 2023, "The Geometry of Truth"; Rimsky et al. 2023's CAA; and
Shafran et al. 2025's comparison of SNMF features with "a strong supervised baseline
(difference-in-means)")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuronscope.analyses.locate._data import (
    ActivationSource,
    LabelSummaries,
    check_categories,
    label_summaries,
    rest_moments,
    split_mask,
)
from neuronscope.analyses.locate.probe import resolve_activations, standardized_difference
from neuronscope.analyses.locate.result import LocateResult
from neuronscope.errors import NeuronscopeError


def directions(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """One-vs-rest difference-in-means directions ``d_l = m_l − m_rest`` (L, units), from
    per-label moments (the rest's mean is the count-weighted mean of the other labels)."""
    _, mean_r, _ = rest_moments(n, mean, var)
    return mean - mean_r


def pair_direction(ls: LabelSummaries, a: str, b: str) -> np.ndarray:
    """``d_ab = m_a − m_b`` over the site's units (per-label moments of the run)."""
    for v in (a, b):
        if v not in ls.labels:
            raise NeuronscopeError(f"label {ls.field!r} has no value {v!r} with samples; values: {', '.join(ls.labels)}")
    if ls.mean is None:
        raise NeuronscopeError(f"site {ls.site!r} has no per-label moments for {ls.field!r}")
    return ls.mean[ls.labels.index(a)] - ls.mean[ls.labels.index(b)]


def concentration(d: np.ndarray, mass: float) -> np.ndarray:
    """The smallest set of units carrying at least ``mass`` of ``‖d‖²`` (largest ``d_u²``
    first), as a boolean mask."""
    sq = np.asarray(d, dtype=np.float64) ** 2
    total = sq.sum()
    out = np.zeros(len(sq), dtype=bool)
    if total <= 0:
        return out
    order = np.argsort(-sq, kind="stable")
    need = int(np.searchsorted(np.cumsum(sq[order]) / total, mass - 1e-12)) + 1
    out[order[:need]] = True
    return out


def _evaluate(source: ActivationSource, parts: list[LabelSummaries], test_fraction: float, seed: int
              ) -> dict[str, dict[str, np.ndarray]]:
    """Held-out accuracy of the 1-d difference-in-means probes, in two streaming passes:
    per-label moments of the training documents (a ``GroupMoments`` summary), then the test
    samples' projections on the training directions, counted against the midpoint threshold."""
    from neuronscope.summaries.groups import GroupMoments

    ls0 = parts[0]
    check_categories(source, ls0)
    lookup = ls0.code_map()
    n_lab = len(ls0.labels)
    cols = {ls.site: None for ls in parts}
    moms = {ls.site: GroupMoments.by_label(ls.units, ls.field, ls0.labels) for ls in parts}
    for acts, codes, groups, ids in source.stream(cols):
        y = lookup[np.where(codes >= 0, codes, len(ls0.all_labels))]
        tr = (y >= 0) & ~split_mask(groups, test_fraction, seed)
        if tr.any():
            for s, a in acts.items():
                moms[s].update(a[tr], {"sample": ids[tr], ls0.field: y[tr]})
    pa, pb = np.triu_indices(n_lab, k=1)
    proj: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s, m in moms.items():
        r = m.result()
        if (r["n"] == 0).any():
            missing = [ls0.labels[i] for i in np.flatnonzero(r["n"] == 0)]
            raise NeuronscopeError(f"no training sample of {', '.join(missing)}; use more documents or another split")
        d_ovr = directions(r["n"], r["mean"], r["var"])
        _, mean_r, _ = rest_moments(r["n"], r["mean"], r["var"])
        d_pair = r["mean"][pa] - r["mean"][pb]
        dirs = np.concatenate([d_ovr, d_pair]).T  # (units, L + P)
        thr = np.concatenate([((r["mean"] + mean_r) * d_ovr).sum(1) / 2,
                              ((r["mean"][pa] + r["mean"][pb]) * d_pair).sum(1) / 2])
        proj[s] = (dirs.astype(np.float64), thr)
    above = {s: np.zeros((n_lab + len(pa), n_lab), dtype=np.int64) for s in moms}
    n_test = np.zeros(n_lab, dtype=np.int64)
    for acts, codes, groups, _ids in source.stream(cols):
        y = lookup[np.where(codes >= 0, codes, len(ls0.all_labels))]
        te = (y >= 0) & split_mask(groups, test_fraction, seed)
        if not te.any():
            continue
        n_test += np.bincount(y[te], minlength=n_lab)
        for s, a in acts.items():
            dirs, thr = proj[s]
            hit = (a[te].astype(np.float64) @ dirs) > thr  # (n_te, L + P)
            onehot = np.zeros((int(te.sum()), n_lab))
            onehot[np.arange(len(onehot)), y[te]] = 1
            above[s] += (hit.T.astype(np.float64) @ onehot).astype(np.int64)
    if (n_test == 0).any():
        missing = [ls0.labels[i] for i in np.flatnonzero(n_test == 0)]
        raise NeuronscopeError(f"no held-out sample of {', '.join(missing)}; use more documents or a larger test_fraction")
    out = {}
    for s, ab in above.items():
        ovr = ab[:n_lab]
        tpr = np.diag(ovr) / n_test
        neg = n_test.sum() - n_test
        tnr = (neg - (ovr.sum(1) - np.diag(ovr))) / np.maximum(neg, 1)
        pair = np.full((n_lab, n_lab), np.nan)
        pr = ab[n_lab:]
        acc_ab = (pr[np.arange(len(pa)), pa] / n_test[pa] + 1 - pr[np.arange(len(pa)), pb] / n_test[pb]) / 2
        pair[pa, pb] = acc_ab
        pair[pb, pa] = acc_ab
        out[s] = {"accuracy": (tpr + tnr) / 2, "pair_accuracy": pair}
    return out


def diffmeans(
    run_or_summaries: Any,
    label: str = "lang",
    site: str | Sequence[str] | None = None,
    *,
    evaluate: bool = True,
    activations: ActivationSource | None = None,
    model: Any = None,
    source: Any = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    mass: float = 0.5,
) -> LocateResult:
    """Difference-in-means directions of a label, from the streamed per-label moments.

    Per site and label value ``l``: ``d_l = m_l − m_rest`` (:func:`directions`), stored as
    ``arrays[site]["direction"]`` (labels, units); pair directions ``m_a − m_b`` with
    :func:`pair_direction`. As a 1-d probe, a sample ``x`` is called ``l`` when
    ``x·d > (m_l + m_rest)·d / 2`` (the midpoint of the two class means projected; pairs
    alike). With ``evaluate`` (needs activations: stored, ``activations``, or ``model`` +
    ``source``), directions and thresholds are re-estimated on the training documents and
    scored on the held-out ones: ``arrays[site]["accuracy"]`` (labels,) one-vs-rest balanced
    accuracy and ``["pair_accuracy"]`` (labels, labels) balanced accuracy of ``a`` vs ``b``.

    ``specific[site][u, l]``: ``u`` is among the fewest units carrying ``mass`` of
    ``‖d_l‖²`` (:func:`concentration`) and ``d_l[u] > 0``; ``score`` = Cohen's d one-vs-rest.
    """
    if not 0.0 < mass <= 1.0:
        raise NeuronscopeError(f"mass must be in (0, 1], not {mass}")
    parts = label_summaries(run_or_summaries, label, site)
    labels = parts[0].labels
    specific: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for ls in parts:
        d = directions(ls.n, ls.mean, ls.var)
        spec = np.zeros((ls.units, len(labels)), dtype=bool)
        for j in range(len(labels)):
            spec[:, j] = concentration(d[j], mass) & (d[j] > 0)
        specific[ls.site] = spec
        score[ls.site] = standardized_difference(ls)
        arrays[ls.site] = {"direction": d, "norm": np.linalg.norm(d, axis=1)}
    info: dict[str, Any] = {"mass": mass, "evaluated": False, "samples": int(parts[0].n.sum())}
    if evaluate:
        src = resolve_activations(run_or_summaries, label, activations, model, source)
        for s, res in _evaluate(src, parts, test_fraction, seed).items():
            arrays[s].update(res)
        info.update({"evaluated": True, "test_fraction": test_fraction, "seed": seed,
                     "accuracy": {s: dict(zip(labels, arrays[s]["accuracy"].tolist(), strict=True)) for s in arrays},
                     "metric": "held-out balanced accuracy of the 1-d projection"})
    return LocateResult("diffmeans", label, list(labels), [ls.site for ls in parts], specific, score, arrays, info)
