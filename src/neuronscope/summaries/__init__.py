"""Mergeable streaming summaries of a population, one batch at a time.

Every summary follows :class:`Summary`: ``update(acts, samples)`` folds in a float32
``(n, units)`` batch, ``merge(other)`` folds in a summary of disjoint samples (associative,
exact to float rounding), ``result()`` reports named arrays, and ``state()`` /
``from_state()`` store it as numpy arrays plus JSON attributes (no pickle). Per neuron ``u``
with activation ``a_u``:

* :class:`Moments` — ``n``, ``mean = Σa/n``, ``var = M2/n`` with ``M2 = Σ(a − mean)²``
  (Chan, Golub & LeVeque's pairwise merge), ``min``, ``max``, ``mean_abs = Σ|a|/n``.
* :class:`Firing` — ``pos_count = #{a > 0}``; ``abs_count[t] = #{|a| > t}`` (ReLU²);
  per sample the active share ``f = #{u: a_u > 0} / units`` as ``Σf`` and a histogram of ``f``.
* :class:`GroupFiring` — ``count[g] = #{samples in group g: a > 0}``, ``n[g] = #{samples in
  g}``; a :class:`Grouping` puts samples in groups: label categories (LAPE) or position
  buckets ``min(pos, max_pos − 1)`` (positional neurons).
* :class:`GroupMoments` — per group ``g`` (a label category): ``n[g]``, ``mean[g]`` and
  ``M2[g]`` (Chan et al.'s merge per group): per-label means and variances for label
  statistics, probe rankings and difference-in-means directions.
* :class:`Histogram` — ``counts[j] = #{e_j ≤ a < e_{j+1}}`` on bins shared by the site,
  plus under/overflow; quantiles within one bin width.
* :class:`TopK` — the ``k`` largest ``a`` (ties: smaller sample id) with ``sample``, ``doc``,
  ``pos``, ``token_id`` and the context ``a(pos − W … pos + W)`` in the same document.
* :class:`TokenMeans` — ``Σa`` and ``n`` per token id in a bounded number of slots: the mean
  activation per token id.
* :class:`CrossProducts` — ``n, Σx, Σy, Σx², Σy², ΣxᵀY`` (and ``ΣxᵀX, ΣyᵀY``) of two
  populations on the same samples: Pearson correlation, CKA, CCA without stored activations.
* :class:`SpikeStats` — spike trains (counts per bin): firing ``rate = Σa / bins``, the ISI
  coefficient of variation ``sd/mean`` within sequences (``item``/``trial``), the Fano factor
  ``var(N)/mean(N)`` of counts per sequence and the Pearson correlation of binned trains
  (synchrony); sequences cut by batches are carried at block edges, so merge is exact.
* :class:`CoFiring` — co-firing counts ``B_ij = #{a_i > t and a_j > t}`` (the binary-activity
  Gram, exact integers) for co-activation graphs.
* :class:`SiteSummaries` — the parts of one recorded site (``moments``, ``firing``,
  ``labels.<field>``, ``label_moments.<field>``, ``histogram``, ``topk``, ``position``, ``tokens``) under one
  :class:`SummaryConfig`.

Helpers: :func:`summary_from_state` rebuilds a stored summary by its ``kind`` (every class
above is registered here; :func:`register` adds one of your own); :func:`tree_merge` merges
summaries in a balanced tree (:func:`tree_reduce`, the same reduction Dask runs across workers).
"""

from neuronscope.summaries.base import (
    Samples,
    State,
    Summary,
    merge_pair,
    register,
    summary_from_state,
    tree_merge,
    tree_reduce,
)
from neuronscope.summaries.cofiring import CoFiring
from neuronscope.summaries.crossprod import CrossProducts
from neuronscope.summaries.firing import Firing
from neuronscope.summaries.groups import GroupFiring, Grouping, GroupMoments
from neuronscope.summaries.histogram import Histogram
from neuronscope.summaries.moments import Moments
from neuronscope.summaries.site import SiteSummaries, SummaryConfig
from neuronscope.summaries.spikes import SpikeStats
from neuronscope.summaries.tokens import TokenMeans
from neuronscope.summaries.topk import TopK

#: The built-in summary kinds, registered for :func:`summary_from_state`.
KINDS: tuple[type[Summary], ...] = (
    Moments, Firing, GroupFiring, GroupMoments, Histogram, TopK, TokenMeans, CrossProducts, SiteSummaries,
    SpikeStats, CoFiring,
)
for _kind in KINDS:
    register(_kind)

__all__ = [
    "KINDS", "CoFiring", "CrossProducts", "Firing", "GroupFiring", "GroupMoments", "Grouping", "Histogram", "Moments",
    "Samples", "SiteSummaries", "SpikeStats", "State", "Summary", "SummaryConfig", "TokenMeans", "TopK",
    "merge_pair", "register", "summary_from_state", "tree_merge", "tree_reduce",
]
