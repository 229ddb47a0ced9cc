"""Locate: which neurons carry a language, a label or a concept.

Everything reads a run's streaming summaries — per-label firing (``labels.<field>``) and
per-label moments (``label_moments.<field>``, :class:`~neuronscope.summaries.groups.GroupMoments`)
— so it works on corpora whose activations were never stored; only the probe fits read
activations (the selected neurons' columns from the store, or a second pass of the model).
Every method returns a :class:`LocateResult` (``specific[site]``: units × label values).

* :func:`lape` — language activation probability entropy (Tang et al. 2024, "Language-Specific
  Neurons: The Key to Multilingual Capabilities in Large Language Models").
* :func:`label_statistics` — Welch t (one value vs the rest) or ANOVA F per neuron, with
  Benjamini–Hochberg FDR control (:func:`benjamini_hochberg`); relation-specific neurons
  by statistics (Liu et al. 2025).
* :func:`sparse_probe` — k-sparse probing, accuracy versus k (Gurnee et al. 2023, "Finding
  Neurons in a Haystack").
* :func:`diffmeans` — difference-in-means directions and their 1-d probe.
* :func:`vocab_projection` — what a neuron writes: ``W_U w_out``, top promoted / suppressed
  tokens, and weight families (prediction, suppression, entropy, token-frequency neurons;
  Gurnee et al. 2024, "Universal Neurons in GPT2 Language Models"; Stolfo et al. 2024).
* :func:`locate` — one of the four label methods by name (the CLI's ``--by``);
  :meth:`LocateResult.save` / :func:`stored_results` keep results in the run for the atlas.
* :func:`label_columns` — per neuron ``top_label``, its activation probability, LAPE
  entropy and ``lape_labels`` (the columns ``characterize`` adds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from neuronscope.analyses.locate._data import (
    ArrayActivations,
    LabelSummaries,
    ModelActivations,
    StoredActivations,
    label_summaries,
    replay_source,
    rest_moments,
)
from neuronscope.analyses.locate.diffmeans import diffmeans, pair_direction
from neuronscope.analyses.locate.lape import kth_value, lape, lape_entropy
from neuronscope.analyses.locate.probe import rank_scores, sparse_probe
from neuronscope.analyses.locate.result import METHODS, LocateResult, stored_results
from neuronscope.analyses.locate.stats import (
    anova_f,
    benjamini_hochberg,
    label_statistics,
    welch_one_vs_rest,
)
from neuronscope.analyses.locate.vocab import (
    VocabProjection,
    load_causal_lm,
    load_vocab_projection,
    neuron_logits,
    output_weights,
    save_vocab_projection,
    token_counts,
    unembedding,
    vocab_projection,
)
from neuronscope.errors import NeuronscopeError

__all__ = [
    "METHODS", "ArrayActivations", "LabelSummaries", "LocateResult", "ModelActivations", "StoredActivations",
    "VocabProjection", "anova_f", "benjamini_hochberg", "diffmeans", "kth_value", "label_columns",
    "label_statistics", "label_summaries", "lape", "lape_entropy", "load_causal_lm", "load_vocab_projection",
    "locate", "neuron_logits", "output_weights", "pair_direction", "rank_scores", "replay_source", "rest_moments",
    "save_vocab_projection", "sparse_probe", "stored_results", "token_counts", "unembedding", "vocab_projection",
    "welch_one_vs_rest",
]


def locate(run_or_summaries: Any, label: str = "lang", by: str = "lape", site: str | Sequence[str] | None = None,
           **options: Any) -> LocateResult:
    """Neurons specific to each value of ``label`` by the method ``by``: ``lape``
    (:func:`lape`), ``stats`` (:func:`label_statistics`), ``probe`` (:func:`sparse_probe`)
    or ``diffmeans`` (:func:`diffmeans`); ``options`` go to that function."""
    funcs = {"lape": lape, "stats": label_statistics, "probe": sparse_probe, "diffmeans": diffmeans}
    if by not in funcs:
        raise NeuronscopeError(f"unknown method {by!r}; use one of {', '.join(METHODS)}")
    return funcs[by](run_or_summaries, label, site, **options)


#: Columns :func:`label_columns` adds to the per-neuron table.
LABEL_COLUMNS = ["top_label", "top_label_prob", "lape_entropy", "lape_labels"]


def label_columns(run_or_summaries: Any, label: str | None = None, site: str | Sequence[str] | None = None,
                  **lape_options: Any) -> pd.DataFrame:
    """Per neuron (``site, unit``): ``top_label`` = the value of ``label`` with the highest
    activation probability ``P(a > 0 | value)`` and ``top_label_prob`` that probability,
    ``lape_entropy`` (:func:`lape_entropy`) and ``lape_labels`` = the comma-separated
    values :func:`lape` finds the neuron specific to (empty when none). ``label`` defaults
    to the run's only label field; a run without label fields gives an empty frame."""
    fields = _label_fields(run_or_summaries)
    if label is None:
        if not fields:
            return pd.DataFrame(columns=["site", "unit", *LABEL_COLUMNS])
        if len(fields) > 1:
            raise NeuronscopeError(f"the run has several label fields ({', '.join(fields)}); pass label=")
        label = fields[0]
    res = lape(run_or_summaries, label, site, **lape_options)
    frames = []
    for s in res.sites:
        p = res.score[s]
        best = np.argmax(p, axis=1)
        spec = res.specific[s]
        frames.append(pd.DataFrame({
            "site": s, "unit": np.arange(p.shape[0]),
            "top_label": np.asarray(res.labels, dtype=object)[best],
            "top_label_prob": p[np.arange(p.shape[0]), best],
            "lape_entropy": res.arrays[s]["entropy"],
            "lape_labels": [",".join(res.labels[j] for j in np.flatnonzero(row)) for row in spec],
        }))
    return pd.concat(frames, ignore_index=True)


def _label_fields(run_or_summaries: Any) -> list[str]:
    if callable(getattr(run_or_summaries, "summaries", None)):
        cats = getattr(run_or_summaries, "label_categories", None)
        if cats is not None:
            return sorted(cats)
        ss = next((run_or_summaries.summaries(s) for s in run_or_summaries.sites), None)
    else:
        ss = next(iter(run_or_summaries.values()), None)
    if ss is None:
        return []
    return sorted(k.split(".", 1)[1] for k in ss.parts if k.startswith("labels."))
