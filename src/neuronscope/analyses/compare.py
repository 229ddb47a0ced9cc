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
from neuronscope.analyses._progress import ProgressArg, progress_bar
from neuronscope.analyses._stream import (
    MAX_BYTES,
    centred_cross_products,
    check_shapes,
    count_blocks,
    is_lazy,
    width,
)
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


def compare(a: Any, b: Any, metric: str = "cka", *, progress: ProgressArg = True, **options: Any) -> float:
    """Similarity (or distance) of two populations under ``metric``.

    Metrics: ``cka`` (linear CKA), ``debiased_cka``, ``rbf_cka``, ``rsa``, ``trsa``, ``cca``
    (mean canonical correlation), ``svcca``, ``pwcca``, ``procrustes`` (distance),
    ``shape``/``angular`` (angular shape distance), ``stochastic_shape``, ``deconfounded_cka``
    and ``deconfounded_rsa`` (need ``inputs=``), ``encoding`` (mean held-out ridge r of b from a).
    Keyword arguments go to the metric function; one it does not take is an error.
    Dask-backed populations (``Run.population``) are streamed from their store when the
    metric allows it (see :func:`compare_all`), with a progress bar on stderr unless
    ``progress=False``.
    """
    m = globals()["metric"](metric)
    m.check_options(options)
    if (is_lazy(a) or is_lazy(b)) and m.streamed(options):
        mat = compare_all({"a": a}, metric, others={"b": b}, progress=progress, **options)
        return float(mat.values[0, 0])
    return float(m.fn(a, b, **options))


# --------------------------------------------------------------------------- many vs many


def _key(p: Any) -> tuple[Any, ...]:
    """Identity of a population's data: the dask graph name for lazy data (two DataArrays over
    the same stored site are one population), else the object."""
    data = p.data if isinstance(p, xr.DataArray) else p
    if is_lazy(data):
        return ("dask", data.name, tuple(data.shape))
    return ("object", id(p))


def _streamable(m: Metric, pops: Sequence[Any], options: Mapping[str, Any], max_bytes: int) -> bool:
    """Stream from the store when any population is lazy, the metric has a streamed form for
    these options, and no population is so wide that its ``XᵀX`` would not fit (then loading
    it, with the Gram form, is cheaper)."""
    if not m.streamed(options) or not any(is_lazy(p) for p in pops):
        return False
    if any(isinstance(p, RDMs) for p in pops):
        return False
    n = int(np.shape(pops[0])[0])
    return all(width(p) <= n or 8 * width(p) ** 2 <= max_bytes // 2 for p in pops)


def _compare_streamed(m: Metric, pa: list[Any], pb: list[Any], names_a: list[str], names_b: list[str],
                      options: Mapping[str, Any], progress: ProgressArg, max_bytes: int) -> np.ndarray:
    """The matrix from streamed centred cross-products: each distinct population's factor once
    (from its ``XᵀX``), each distinct pair once (from its ``XᵀY``), all read from the store in
    row blocks (:func:`neuronscope.analyses._stream.centred_cross_products`)."""
    unique: list[Any] = []
    unames: list[str] = []
    where: dict[tuple[Any, ...], int] = {}

    def index(p: Any, name: str) -> int:
        k = _key(p)
        if k not in where:
            where[k] = len(unique)
            unique.append(p)
            unames.append(name)
        return where[k]

    ia = [index(p, nm) for p, nm in zip(pa, names_a, strict=True)]
    ib = [index(p, nm) for p, nm in zip(pb, names_b, strict=True)]
    check_shapes(unique, unames)
    wanted: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, u in enumerate(ia):
        for c, v in enumerate(ib):
            wanted.setdefault((min(u, v), max(u, v)), []).append((r, c))
    pairs = list(wanted)
    total = count_blocks(unique, pairs, max_bytes)
    what = (f"{m.name}: {len(pa)} × {len(pb)} populations ({len(unique)} distinct, "
            f"{len(pairs)} pairs)")
    out = np.full((len(pa), len(pb)), np.nan)
    factors: dict[int, Any] = {}
    with progress_bar(what, total, progress, unit="row blocks") as advance:
        for n, cross in centred_cross_products(unique, pairs, max_bytes=max_bytes, advance=advance,
                                               names=unames, float64=m.stats_float64):
            for (i, j), c in cross.items():
                if i == j and i not in factors:
                    factors[i] = m.stats_factor(n, c, **options)
            for (i, j), c in cross.items():
                for r, col in wanted.get((i, j), []):
                    u, v = ia[r], ib[col]
                    out[r, col] = m.stats_pair(factors[u], factors[v], c if u == i else c.T, **options)
    return out


def compare_all(
    populations: Mapping[str, Any] | Sequence[Any],
    metric: str = "cka",
    others: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    progress: ProgressArg = True,
    max_bytes: int = MAX_BYTES,
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

    Populations that live in a run (dask-backed, e.g. ``{s: run.population(s) for s in
    run.sites}``) are never loaded whole for linear CKA, CCA/SVCCA/PWCCA and the Procrustes /
    angular shape metrics: each distinct population's factor comes from its centred ``XᵀX``
    and each distinct pair from its centred ``XᵀY``, accumulated from the store in row blocks
    that are read once per pass (one pass when the float64 cross-products fit in
    ``max_bytes``, default 2 GiB, which also bounds the blocks in flight); the values equal
    the in-memory computation. ``progress=True`` draws a bar on stderr while populations are
    read from a store (a callable gets ``(done, total, detail)``; ``False`` draws nothing).
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

    def result(values: np.ndarray) -> xr.DataArray:
        return xr.DataArray(values, dims=("a", "b"), coords={"a": names_a, "b": names_b},
                            name=metric, attrs={"metric": metric})

    if _streamable(m, allp, options, max_bytes):
        return result(_compare_streamed(m, pa, pb, names_a, names_b, options, progress, max_bytes))

    lazy = any(is_lazy(p) for p in allp)
    if m.factored(options):
        fa_: list[Any] = []
        fb_: list[Any] = []
        steps = len(pa) + (0 if square else len(pb))
        with progress_bar(f"{metric}: factors of {steps} populations", steps,
                          progress if lazy or callable(progress) else False) as advance:
            for p in pa:
                fa_.append(m.factor(p, **options))
                advance(len(fa_))
            if not square:
                for p in pb:
                    fb_.append(m.factor(p, **options))
                    advance(len(fa_) + len(fb_))
        fa, fb = fa_, (fa_ if square else fb_)

        def fn(a: Any, b: Any) -> float:
            return m.pair(a, b, **options)
    else:
        fa, fb = pa, pb

        def fn(a: Any, b: Any) -> float:
            return float(m.fn(a, b, **options))

    out = np.full((len(pa), len(pb)), np.nan)
    sym = square and m.symmetric
    todo = [(i, j) for i in range(len(pa)) for j in range(len(pb)) if not (sym and j < i)]
    with progress_bar(f"{metric}: {len(pa)} × {len(pb)} populations, {len(todo)} pairs", len(todo),
                      progress if lazy or callable(progress) else False, unit="pairs") as advance:
        for k, (i, j) in enumerate(todo):
            out[i, j] = fn(fa[i], fb[j])
            advance(k + 1)
    if sym:
        lower = np.tril_indices(len(pa), -1)
        out[lower] = out.T[lower]
    return result(out)


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
