"""k-sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack: Case Studies with Sparse
Probing"): rank neurons from the streamed per-label moments, fit logistic probes on the top k."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from neuronscope.analyses.locate._data import (
    ActivationSource,
    LabelSummaries,
    ModelActivations,
    StoredActivations,
    collect,
    label_summaries,
    rest_moments,
)
from neuronscope.analyses.locate.result import LocateResult
from neuronscope.errors import NeuronscopeError

#: Default probe sizes: 1, 2, 4, … 256 (capped at the site's units).
DEFAULT_KS = tuple(2**i for i in range(9))
RANKINGS = ("meandiff", "f")
TASKS = ("one_vs_rest", "multiclass")


def rank_scores(ls: LabelSummaries, target: int | None, by: str = "meandiff") -> np.ndarray:
    """Per-neuron ranking score from the per-label moments (higher = ranked first).

    One label ``l`` against the rest (``target = l``):

    * ``meandiff``: ``|m_l − m_rest|`` — Gurnee et al.'s mean-difference ranking;
    * ``f``: the two-group ANOVA ``F = n_l n_r (m_l − m_r)² / N / ((M2_l + M2_r)/(N − 2))``
      (``f_classif`` on the binary target).

    All labels (``target=None``, multiclass): ``f`` = the one-way ANOVA F across labels
    (``sklearn.feature_selection.f_classif``); ``meandiff`` = ``max_l |m_l − m_rest,l|``.
    Constant neurons score 0.
    """
    from neuronscope.analyses.locate.stats import anova_f

    if by not in RANKINGS:
        raise NeuronscopeError(f"rank must be one of {', '.join(RANKINGS)}, not {by!r}")
    if ls.mean is None or ls.var is None:
        raise NeuronscopeError(f"site {ls.site!r} has no per-label moments for {ls.field!r}")
    n, mean, var = ls.n.astype(np.float64), ls.mean, ls.var
    if target is None:
        if by == "f":
            return np.nan_to_num(anova_f(n, mean, var).f, nan=0.0, posinf=np.finfo(np.float64).max)
        _, mean_r, _ = rest_moments(n, mean, var)
        return np.abs(mean - mean_r).max(axis=0)
    n_r, mean_r, var_r = rest_moments(n, mean, var)
    diff = mean[target] - mean_r[target]
    if by == "meandiff":
        return np.abs(diff)
    total = n.sum()
    ssw = n[target] * var[target] + n_r[target] * var_r[target]
    with np.errstate(invalid="ignore", divide="ignore"):
        f = n[target] * n_r[target] * diff**2 / total / (ssw / max(total - 2, 1))
    return np.nan_to_num(np.where(ssw > 0, f, np.where(diff != 0, np.inf, 0.0)), posinf=np.finfo(np.float64).max)


def top_neurons(score: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest-scoring units, best first (ties: smaller unit first)."""
    return np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[:k]


def _ks(ks: Sequence[int] | None, units: int, site: str) -> list[int]:
    if ks is None:
        return [k for k in DEFAULT_KS if k <= units] or [units]
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise NeuronscopeError(f"probe sizes k must be positive integers, got {list(ks)}")
    if out[-1] > units:
        raise NeuronscopeError(f"k={out[-1]} is larger than site {site!r} ({units} units); pass k ≤ {units}")
    return out


def standardized_difference(ls: LabelSummaries) -> np.ndarray:
    """Cohen's d of each label against the rest, (units, labels):
    ``(m_l − m_r) / √((var_l + var_r) / 2)`` (ddof 0; 0 for constant neurons)."""
    n_r, mean_r, var_r = rest_moments(ls.n, ls.mean, ls.var)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.sqrt((ls.var + var_r) / 2)
        d = np.where(s > 0, (ls.mean - mean_r) / s, 0.0)
    return d.T.copy()


def resolve_activations(run_or_summaries: Any, label: str, activations: ActivationSource | None,
                        model: Any, source: Any) -> ActivationSource:
    """Where the fits read activations: ``activations`` if given, else a second pass of
    ``model`` over ``source``, else the run's stored activations."""
    if activations is not None:
        return activations
    if model is not None or source is not None:
        if model is None or source is None:
            raise NeuronscopeError("a second pass needs both model= and source=")
        return ModelActivations(model, source, label)
    if getattr(run_or_summaries, "has_activations", False):
        return StoredActivations(run_or_summaries, label)
    raise NeuronscopeError(
        "the probe fits need activations: the run kept none (keep=summaries); pass model= and source= for a "
        "second pass over the corpus (or activations=)"
    )


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, c: float = 1.0,
              seed: int = 0) -> float:
    """Held-out balanced accuracy of an L2 logistic probe (scikit-learn ``LogisticRegression``,
    lbfgs, ``class_weight="balanced"``) on standardized features (train mean/std)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # a class absent from the held-out split
        clf.fit((x_train - mu) / sd, y_train)
        return float(balanced_accuracy_score(y_test, clf.predict((x_test - mu) / sd)))


def sparse_probe(
    run_or_summaries: Any,
    label: str = "lang",
    site: str | Sequence[str] | None = None,
    *,
    ks: Sequence[int] | None = None,
    rank: str = "meandiff",
    task: str = "one_vs_rest",
    values: Sequence[str] | None = None,
    activations: ActivationSource | None = None,
    model: Any = None,
    source: Any = None,
    per_label: int = 1000,
    test_fraction: float = 0.25,
    tolerance: float = 0.01,
    min_accuracy: float = 0.8,
    seed: int = 0,
    c: float = 1.0,
) -> LocateResult:
    """k-sparse probing (Gurnee et al. 2023): accuracy of the best-ranked ``k`` neurons.

    Per site, neurons are ranked from the streamed per-label moments (:func:`rank_scores`;
    no activation read), then logistic probes are fit on the top ``k`` for every ``k`` in
    ``ks`` (default 1, 2, 4, … 256, capped at the site's units) and scored by held-out
    balanced accuracy (:func:`fit_probe`; chance 0.5 one-vs-rest, ``1/L`` multiclass):
    the accuracy-vs-k curve. ``k = 1`` names a single neuron.

    * ``task="one_vs_rest"``: one probe per label value (``values``, default all) against
      the rest; ``"multiclass"``: one probe over all values (ranked by ANOVA F with ``rank="f"``).
    * Activations of only the selected neurons are read: from the run's store (column
      chunks), from ``activations``, or by a second pass of ``model`` over ``source``
      (``keep=summaries`` runs); a deterministic subsample of ≤ ~``per_label`` samples per
      label value, split into train / test by document (``test_fraction``, ``seed``).
    * The ranking uses all samples (the streamed moments), so the held-out accuracy is
      slightly optimistic for the selection of neurons (not for the probe weights).

    ``specific[site][u, l]``: ``u`` is among the top ``k*`` of label ``l``'s probe and is
    higher on ``l`` than on the rest (Cohen's d > 0; a probe also uses neurons that are
    silent on ``l``, which are not "specific" to it), ``k*``
    the smallest ``k`` whose accuracy is within ``tolerance`` of that probe's best, for
    probes whose best accuracy reaches ``min_accuracy`` (weaker probes name no neuron;
    multiclass: the neurons of the multiclass probe at ``k*``, each assigned to the label it
    is most above the rest on). ``score`` = Cohen's d one-vs-rest; ``info["curves"][site]
    [target]`` = ``{"k", "accuracy", "neurons", "k_star", "chance"}``; values with too few
    documents for both sides of the split are left out (``info["skipped"]``).
    """
    if task not in TASKS:
        raise NeuronscopeError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if not 0.0 < test_fraction < 1.0:
        raise NeuronscopeError(f"test_fraction must be in (0, 1), not {test_fraction}")
    if per_label < 2:
        raise NeuronscopeError(f"per_label must be at least 2, not {per_label}")
    parts = label_summaries(run_or_summaries, label, site)
    labels = parts[0].labels
    if values is None:
        targets: list[int | None] = list(range(len(labels))) if task == "one_vs_rest" else [None]
    else:
        unknown = [v for v in values if v not in labels]
        if unknown:
            raise NeuronscopeError(f"label {label!r} has no value {unknown[0]!r} with samples; values: {', '.join(labels)}")
        targets = [labels.index(v) for v in values] if task == "one_vs_rest" else [None]
    plan: dict[str, tuple[list[int], dict[int | None, np.ndarray]]] = {}
    for ls in parts:
        site_ks = _ks(ks, ls.units, ls.site)
        tops = {t: top_neurons(rank_scores(ls, t, rank), site_ks[-1]) for t in targets}
        plan[ls.site] = (site_ks, tops)
    columns = {s: np.unique(np.concatenate(list(tops.values()))) for s, (_, tops) in plan.items()}
    data = collect(resolve_activations(run_or_summaries, label, activations, model, source), columns, parts[0],
                   per_label=per_label, test_fraction=test_fraction, seed=seed)
    train, test = ~data.test, data.test
    if not train.any() or not test.any():
        raise NeuronscopeError("the train/test split left one side empty; use more documents or another test_fraction")
    curves: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    specific: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    for ls in parts:
        site_ks, tops = plan[ls.site]
        cols = columns[ls.site]
        x_all = data.acts[ls.site]
        d = standardized_difference(ls)
        spec = np.zeros((ls.units, len(labels)), dtype=bool)
        curves[ls.site] = {}
        for t in targets:
            order = tops[t]
            pos = np.searchsorted(cols, order)
            y = data.y if t is None else (data.y == t).astype(np.int64)
            name = "all" if t is None else labels[t]
            if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
                skipped.append(name)  # too few documents of this value for a held-out split
                continue
            acc = [fit_probe(x_all[train][:, pos[:k]], y[train], x_all[test][:, pos[:k]], y[test], c, seed)
                   for k in site_ks]
            best = max(acc)
            k_star = next(k for k, a in zip(site_ks, acc, strict=True) if a >= best - tolerance)
            support = order[:k_star] if best >= min_accuracy else order[:0]
            if t is None:
                best_label = np.argmax(d[support], axis=1)
                up = d[support, best_label] > 0
                spec[support[up], best_label[up]] = True
            else:
                spec[support[d[support, t] > 0], t] = True  # neurons that fire more on the value
            curves[ls.site][name] = {"k": site_ks, "accuracy": acc, "neurons": order.tolist(), "k_star": k_star,
                                     "chance": 0.5 if t is not None else 1.0 / len(labels)}
        specific[ls.site] = spec
        score[ls.site] = d
    info = {"task": task, "rank": rank, "per_label": per_label, "test_fraction": test_fraction, "seed": seed,
            "tolerance": tolerance, "min_accuracy": min_accuracy, "c": c, "train": int(train.sum()),
            "test": int(test.sum()), "curves": curves, "metric": "held-out balanced accuracy",
            "skipped": sorted(set(skipped))}
    return LocateResult("probe", label, list(labels), [ls.site for ls in parts], specific, score, {}, info)
