"""LAPE: language activation probability entropy (Tang et al. 2024, "Language-Specific Neurons:
The Key to Multilingual Capabilities in Large Language Models")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuronscope.analyses.locate._data import label_summaries
from neuronscope.analyses.locate.result import LocateResult
from neuronscope.errors import NeuronscopeError


def lape_entropy(prob: np.ndarray) -> np.ndarray:
    """LAPE of each neuron from its activation probabilities ``prob`` (labels, units)::

        p'_l = p_l / Σ_k p_k            LAPE = −Σ_l p'_l ln p'_l      (0 ln 0 = 0)

    (natural log, as the paper's code). A neuron that never fires has ``p' = 0`` everywhere
    and entropy 0 — the paper's filtering removes it (no label reaches the threshold).
    """
    p = np.asarray(prob, dtype=np.float64)
    total = p.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(total > 0, p / np.where(total > 0, total, 1), 0.0)
        logq = np.where(q > 0, np.log(np.where(q > 0, q, 1)), 0.0)
    return -(q * logq).sum(axis=0)


def kth_value(values: np.ndarray, rate: float) -> float:
    """The paper's threshold: the ``k``-th smallest of ``values`` with ``k = round(len ·
    rate)`` (1-indexed; Python's round, as ``torch.kthvalue(round(N * rate))``)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    k = min(max(int(round(len(flat) * rate)), 1), len(flat))
    return float(np.partition(flat, k - 1)[k - 1])


def lape(
    run_or_summaries: Any,
    label: str = "lang",
    site: str | Sequence[str] | None = None,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
) -> LocateResult:
    """Label-specific neurons by LAPE (Tang et al. 2024), from the per-label firing summary.

    With ``p[u, l] = #{a_u > 0 | label l} / #{label l}`` (``labels.<label>`` of the run's
    summaries) over every neuron ``u`` of the selected sites (pooled, as the paper pools
    all layers) and every label value ``l``:

    1. ``LAPE_u`` = entropy of ``p[u, ·] / Σ_l p[u, l]`` (:func:`lape_entropy`);
    2. filter: a neuron is kept only if ``p[u, l] > τ`` for some ``l``, with ``τ`` the
       ``filter_rate`` (95 %) quantile of all ``p`` (:func:`kth_value`);
    3. select the ``round(top_rate · N)`` kept neurons of lowest LAPE (``N`` = all neurons;
       1 %), ties by site order then unit;
    4. a selected neuron is specific to every label with ``p[u, l] > β``, ``β`` the
       ``activation_bar_ratio`` (95 %) quantile of all ``p``.

    Works for any label field and from ``keep=summaries`` runs. Returns a
    :class:`LocateResult` (``method="lape"``; ``score`` = ``p`` as (units, labels);
    ``arrays[site]``: ``entropy`` (units,), ``selected`` (units,)); ``info`` holds ``τ``,
    ``β``, the entropy of the last selected neuron and the number selected.
    """
    for name, v in (("top_rate", top_rate), ("filter_rate", filter_rate), ("activation_bar_ratio", activation_bar_ratio)):
        if not 0.0 < v <= 1.0:
            raise NeuronscopeError(f"{name} must be in (0, 1], not {v}")
    parts = label_summaries(run_or_summaries, label, site, moments=False)
    labels = parts[0].labels
    probs = [ls.prob for ls in parts]
    allp = np.concatenate([p.ravel() for p in probs])
    tau = kth_value(allp, filter_rate)
    bar = kth_value(allp, activation_bar_ratio)
    ent = [lape_entropy(p) for p in probs]
    flat_ent = np.concatenate(ent)
    passes = np.concatenate([(p > tau).any(axis=0) for p in probs])
    n_sel = int(round(len(flat_ent) * top_rate))
    order = np.argsort(np.where(passes, flat_ent, np.inf), kind="stable")
    chosen = order[:n_sel]
    chosen = chosen[passes[chosen]]
    selected_flat = np.zeros(len(flat_ent), dtype=bool)
    selected_flat[chosen] = True
    specific: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    start = 0
    for ls, p, e in zip(parts, probs, ent, strict=True):
        sel = selected_flat[start : start + ls.units]
        start += ls.units
        specific[ls.site] = sel[:, None] & (p.T > bar)
        score[ls.site] = p.T.copy()
        arrays[ls.site] = {"entropy": e, "selected": sel}
    info = {
        "top_rate": top_rate, "filter_rate": filter_rate, "activation_bar_ratio": activation_bar_ratio,
        "prob_threshold": tau, "activation_bar": bar,
        "entropy_threshold": float(flat_ent[chosen].max()) if len(chosen) else None,
        "selected": int(len(chosen)), "neurons": int(len(flat_ent)),
        "samples": int(parts[0].n.sum()),
        "unlabeled": int(parts[0].unlabeled),
        "label_counts": dict(zip(labels, parts[0].n.tolist(), strict=True)),
    }
    return LocateResult("lape", label, list(labels), [ls.site for ls in parts], specific, score, arrays, info)
