"""Compare representations: one entry point over every metric, the many-vs-many matrix,
and the linear metrics from streamed sufficient statistics.

* :func:`compare` — ``compare(a, b, metric, **options)`` dispatches on :data:`METRICS`, the
  :class:`~neuronscope.analyses._metric.Metric` descriptions each metric module declares
  (:func:`linear_cka`, :func:`rsa`, :func:`trsa`, :func:`procrustes_distance`, …, re-exported
  here); every metric is ``f(X (n, p), Y (n, q), **options)`` and refuses options it does
  not take.
* :func:`compare_all` — the full matrix over many populations (models × layers × subjects);
  where a metric declares a factor (centred matrix and its norm, RDM, principal basis,
  whitened scores) each population's factor is computed once, so a pair costs one cross
  product.
* :class:`CrossStats` and ``*_from_stats`` — n, Σx, Σy, XᵀX, YᵀY, XᵀY accumulated in one pass
  over a corpus larger than memory (float64, mergeable; a layer over
  :class:`~neuronscope.summaries.crossprod.CrossProducts`, whose ``sufficient_stats()`` the
  functions accept too); linear CKA, CCA/SVCCA/PWCCA, Procrustes/angular shape distances and
  ridge regression from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.analyses._metric import Metric
from neuronscope.analyses.cca import (
    MEAN_CCA,
    PWCCA,
    SVCCA,
    canonical_correlations,
    cca,
    cca_from_stats,
    mean_cca,
    pwcca,
    pwcca_from_stats,
    svcca,
    svcca_from_stats,
)
from neuronscope.analyses.cka import (
    DEBIASED_CKA,
    DECONFOUNDED_CKA,
    LINEAR_CKA,
    RBF_CKA,
    debiased_cka,
    deconfounded_cka,
    linear_cka,
    linear_cka_from_stats,
    rbf_cka,
)
from neuronscope.analyses.encoding import (
    ENCODING,
    RidgeEncoder,
    encoding_ceiling,
    encoding_score,
    ncsnr,
    ridge_from_stats,
    split_half_reliability,
)
from neuronscope.analyses.rsa import (
    DECONFOUNDED_RSA,
    RSA,
    TRSA,
    compare_rdms,
    deconfounded_rsa,
    geotopological_transform,
    noise_ceiling,
    rdm,
    rsa,
    trsa,
)
from neuronscope.analyses.shape import (
    ANGULAR,
    PROCRUSTES,
    STOCHASTIC_SHAPE,
    angular_shape_distance,
    angular_shape_distance_from_stats,
    procrustes_distance,
    procrustes_distance_from_stats,
    stochastic_shape_distance,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.population import align_all
from neuronscope.rdms import RDMs
from neuronscope.summaries.crossprod import CrossProducts

__all__ = [
    "METRICS", "CrossStats", "RDMs", "RidgeEncoder", "angular_shape_distance",
    "angular_shape_distance_from_stats", "canonical_correlations", "cca", "cca_from_stats",
    "compare", "compare_all", "compare_rdms", "debiased_cka", "deconfounded_cka",
    "deconfounded_rsa", "encoding_ceiling", "encoding_score", "geotopological_transform",
    "linear_cka", "linear_cka_from_stats", "mean_cca", "ncsnr", "noise_ceiling",
    "procrustes_distance", "procrustes_distance_from_stats", "pwcca", "pwcca_from_stats",
    "rbf_cka", "rdm", "ridge_from_stats", "rsa", "split_half_reliability",
    "stochastic_shape_distance", "svcca", "svcca_from_stats", "trsa",
]

#: metric name -> its description (names and aliases users type).
METRICS: dict[str, Metric] = {
    "cka": LINEAR_CKA,
    "linear_cka": LINEAR_CKA,
    "debiased_cka": DEBIASED_CKA,
    "rbf_cka": RBF_CKA,
    "deconfounded_cka": DECONFOUNDED_CKA,
    "rsa": RSA,
    "trsa": TRSA,
    "deconfounded_rsa": DECONFOUNDED_RSA,
    "cca": MEAN_CCA,
    "svcca": SVCCA,
    "pwcca": PWCCA,
    "procrustes": PROCRUSTES,
    "shape": ANGULAR,
    "angular": ANGULAR,
    "stochastic_shape": STOCHASTIC_SHAPE,
    "encoding": ENCODING,
}


def metric(name: str) -> Metric:
    """The :class:`Metric` named ``name`` (one-line error listing the names otherwise)."""
    if name not in METRICS:
        raise NeuronscopeError(f"unknown metric {name!r}; use one of {', '.join(sorted(METRICS))}")
    return METRICS[name]


def compare(a: Any, b: Any, metric: str = "cka", **options: Any) -> float:
    """Similarity (or distance) of two populations under ``metric``.

    Metrics: ``cka`` (linear CKA), ``debiased_cka``, ``rbf_cka``, ``rsa``, ``trsa``, ``cca``
    (mean canonical correlation), ``svcca``, ``pwcca``, ``procrustes`` (distance),
    ``shape``/``angular`` (angular shape distance), ``stochastic_shape``, ``deconfounded_cka``
    and ``deconfounded_rsa`` (need ``inputs=``), ``encoding`` (mean held-out ridge r of b from a).
    Keyword arguments go to the metric function; one it does not take is an error.
    """
    m = globals()["metric"](metric)
    m.check_options(options)
    return float(m.fn(a, b, **options))


# --------------------------------------------------------------------------- many vs many


def compare_all(
    populations: Mapping[str, Any] | Sequence[Any],
    metric: str = "cka",
    others: Mapping[str, Any] | Sequence[Any] | None = None,
    **options: Any,
) -> xr.DataArray:
    """The matrix of ``metric`` between every pair of populations.

    ``populations`` (and optionally ``others`` for a rectangular rows × columns matrix) is a
    mapping name -> population (array, DataArray, or for RSA an :class:`RDMs`) or a sequence
    (named "0", "1", …). DataArrays are aligned by stimulus id first. Where the metric
    declares a factor (linear CKA: the centred matrix and ‖XᵀX‖_F, or the Gram matrix when
    neurons outnumber stimuli; RSA/tRSA: the (transformed) RDM; Procrustes/angular: the
    (partially whitened) principal scores; CCA/SVCCA/PWCCA: the principal basis) it is
    computed once per population; other metrics run pairwise. Returns an
    ``xarray.DataArray`` with dims ``("a", "b")``.
    """
    m = globals()["metric"](metric)
    m.check_options(options)

    def named(p: Mapping[str, Any] | Sequence[Any]) -> tuple[list[str], list[Any]]:
        if isinstance(p, Mapping):
            return [str(k) for k in p], list(p.values())
        return [str(i) for i in range(len(p))], list(p)

    names_a, pops_a = named(populations)
    square = others is None
    names_b, pops_b = (names_a, pops_a) if square else named(others)
    if not pops_a or not pops_b:
        raise NeuronscopeError("compare_all needs at least one population on each side")
    allp = align_all(pops_a + ([] if square else pops_b))
    pa, pb = allp[: len(pops_a)], (allp[: len(pops_a)] if square else allp[len(pops_a) :])
    if not m.accepts_rdms and any(isinstance(p, RDMs) for p in allp):
        raise NeuronscopeError(f"precomputed RDMs only support metric rsa or trsa, not {metric!r}")

    if m.factored(options):
        fa = [m.factor(p, **options) for p in pa]
        fb = fa if square else [m.factor(p, **options) for p in pb]

        def fn(a: Any, b: Any) -> float:
            return m.pair(a, b, **options)
    else:
        fa, fb = pa, pb

        def fn(a: Any, b: Any) -> float:
            return float(m.fn(a, b, **options))

    out = np.full((len(pa), len(pb)), np.nan)
    sym = square and m.symmetric
    for i in range(len(pa)):
        for j in range(len(pb)):
            if sym and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = fn(fa[i], fb[j])
    return xr.DataArray(out, dims=("a", "b"), coords={"a": names_a, "b": names_b},
                        name=metric, attrs={"metric": metric})


# --------------------------------------------------------------------------- streamed statistics


class CrossStats:
    """One-pass sufficient statistics of two populations seen in lockstep, in the form the
    ``*_from_stats`` functions take.

    n, Σx, Σy, XᵀX, YᵀY (or only its diagonal Σy², ``full_yty=False``, enough for ridge, so
    50k-voxel targets fit) and XᵀY, accumulated by
    :class:`neuronscope.summaries.crossprod.CrossProducts` (``gram=True``, or ``gram="x"``
    without the full YᵀY; available as :attr:`cross`): rows are shifted by the first batch's
    means before the products (the shifted-data algorithm) so float32 activations with large
    means keep their centered variance, float32 batches multiply in float32 and add in
    float64 (float64 batches multiply in float64), and :meth:`result` converts back to raw
    moments in float64. ``merge`` is exact and associative, so chunks can be reduced on Dask
    workers.
    """

    def __init__(self, p: int, q: int, full_yty: bool = True):
        self.full_yty = bool(full_yty)
        self.cross = CrossProducts(p, q, gram=True if self.full_yty else "x")

    @property
    def n(self) -> int:
        """Number of rows folded in so far."""
        self.cross.flush()
        return self.cross.n

    def update(self, x: np.ndarray, y: np.ndarray) -> CrossStats:
        """Fold in a batch of paired rows ``x`` (b, p), ``y`` (b, q); rejects NaN/Inf."""
        self.cross.update_pair(x, y)
        return self

    def merge(self, other: CrossStats) -> CrossStats:
        """Add another CrossStats of disjoint rows (in place)."""
        if other.full_yty != self.full_yty or (other.cross.nx, other.cross.ny) != (
            self.cross.nx, self.cross.ny
        ):
            raise NeuronscopeError(
                "cannot merge CrossStats of different shapes; build both with the same p, q, "
                "full_yty"
            )
        self.cross.merge(other.cross)
        return self

    def result(self) -> dict[str, Any]:
        """``dict(n, sum_x, sum_y, xtx, yty, xty)`` of the raw rows — the keyword arguments
        of the ``*_from_stats`` functions (``yty`` is the diagonal with ``full_yty=False``)."""
        return self.cross.sufficient_stats()

    sufficient_stats = result

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON attributes to rebuild this object (``from_state``); the state of
        the underlying ``CrossProducts``."""
        return self.cross.state()

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> CrossStats:
        """Rebuild from :meth:`state`."""
        cross = CrossProducts.from_state(arrays, attrs)
        if not cross.gram_x:
            raise NeuronscopeError("this state has no XᵀX; pass the state of a CrossStats")
        obj = cls.__new__(cls)
        obj.full_yty, obj.cross = cross.gram_y, cross
        return obj
