"""Functional modules of a population: co-activation graphs and their communities, the dynamic
functional connectome, and Semi-NMF features.

* :func:`cofiring` — streamed co-firing counts (:class:`~neuronscope.summaries.CoFiring`, the
  binary-activity Gram ``B = 1[a > t]ᵀ 1[a > t]``) of a stored run, a population or an array,
  kept in two halves of the corpus (even / odd documents) so stability is measured on the same
  pass; :func:`cofiring_model` is the same pass over a model and a source (nothing stored).
* :func:`coactivation_graph` — ``B`` normalised into a weighted graph: co-firing probability,
  Jaccard, positive PMI or positive phi (correlation of the firing indicators).
* :func:`leiden` — communities of a weighted graph with ``leidenalg`` on ``igraph`` (Traag,
  Waltman & van Eck 2019, "From Louvain to Leiden"); :func:`find_modules` — the whole recipe
  per site with stability across seeds and across halves of the corpus (adjusted Rand index);
  :func:`save_modules` stores it in the run for the atlas.
* :func:`dynamic_connectome` — neuron-pair affinities in windows (documents or position blocks
  of a model run, time bins of a brain population) stacked into a pairs × windows × subjects
  tensor, factorised by non-negative PARAFAC (:func:`ntf`, ``tensorly``) and each component's
  pair loadings split into weighted communities (Dyballa et al. 2024, "Learning dynamic
  representations of the functional connectome in neurobiological networks").
* :func:`semi_nmf` — activations ≈ W·H with H ≥ 0 fitted by mini-batches over a stored run
  (Shafran, Geiger & Geva 2025, "Decomposing MLP Activations into Interpretable Features via
  Semi-NMF"; Ding, Li & Jordan 2010's multiplicative updates); :meth:`SemiNMF.save` stores the
  features and their top examples in the run.

Dead and isolated neurons: a neuron with no edge of positive weight (it never fires, always
fires for phi, or never co-fires with anyone) is not put in the graph; its module label is
``-1`` ("unassigned") and it is counted in ``Modules.n_unassigned``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.cofiring import CoFiring
from neuronscope.summaries.crossprod import CrossProducts

__all__ = [
    "NORMALIZE",
    "CoFiringSplit",
    "Connectome",
    "Modules",
    "SemiNMF",
    "coactivation_graph",
    "cofiring",
    "cofiring_counts",
    "cofiring_model",
    "dynamic_connectome",
    "find_modules",
    "leiden",
    "modules_from_cofiring",
    "ntf",
    "save_modules",
    "semi_nmf",
]

#: Normalisations of the co-firing counts into edge weights (see :func:`coactivation_graph`).
NORMALIZE = ("probability", "jaccard", "pmi", "phi")


# --------------------------------------------------------------------------- data access


def _is_run(obj: Any) -> bool:
    return callable(getattr(obj, "population", None)) and hasattr(obj, "sites")


def _run_sites(run: Any, site: str | None) -> list[str]:
    from neuronscope.population import select_sites

    return select_sites(run.sites, site, where=f"of run {getattr(run, 'path', '')}")


def _as_matrix_and_coords(data: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """(2-D array-like, sample coordinates) of a DataArray or an array."""
    import xarray as xr

    if isinstance(data, xr.DataArray):
        if data.ndim != 2:
            raise NeuronscopeError(f"a population must be 2-D (sample, neuron), got dims {data.dims}")
        if data.dims[0] != "sample" and "sample" in data.dims:
            data = data.transpose("sample", ...)
        coords = {k: np.asarray(v.values) for k, v in data.coords.items()
                  if v.dims == (data.dims[0],)}
        return data.data, coords
    arr = np.asarray(data) if not hasattr(data, "compute") else data
    if arr.ndim != 2:
        raise NeuronscopeError(f"activations must be 2-D (samples, neurons), got shape {arr.shape}")
    return arr, {}


def _batches(data: Any, site: str | None = None, rows: int = 8192,
             columns: np.ndarray | None = None) -> tuple[int, dict[str, np.ndarray], Iterator[tuple[int, np.ndarray]]]:
    """``(units, sample coordinates, iterator of (first_row, float32 block))`` over a run's
    stored activations (sites matched by ``site``, concatenated), a DataArray or an array,
    ``rows`` rows at a time (``columns`` selects neurons)."""
    if _is_run(data):
        if not data.has_activations:
            raise NeuronscopeError(f"run {data.path} kept no activations; re-record with keep='both'")
        names = _run_sites(data, site)
        pop = data.population(",".join(names))
        coords = {k: np.asarray(v.values) for k, v in pop.coords.items() if v.dims == ("sample",)}
        arr = pop.data
    else:
        arr, coords = _as_matrix_and_coords(data)
    n, units = arr.shape
    cols = None if columns is None else np.asarray(columns, dtype=np.int64)

    def gen() -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, n, rows):
            block = arr[r0 : r0 + rows]
            if cols is not None:
                block = block[:, cols]
            if hasattr(block, "compute"):
                block = block.compute()
            yield r0, np.ascontiguousarray(block, dtype=np.float32)

    return (units if cols is None else len(cols)), coords, gen()


def _half_of(coords: Mapping[str, np.ndarray], r0: int, n: int, split: str) -> np.ndarray:
    """0/1 half of each row: ``doc`` parity (even / odd documents), else sample parity."""
    if split not in ("doc", "sample"):
        raise NeuronscopeError(f"split must be 'doc' or 'sample', not {split!r}")
    key = "doc" if split == "doc" and "doc" in coords else None
    if key is not None:
        return (np.asarray(coords[key][r0 : r0 + n]).astype(np.int64) % 2).astype(np.int8)
    return (np.arange(r0, r0 + n) % 2).astype(np.int8)


# --------------------------------------------------------------------------- co-firing


@dataclass
class CoFiringSplit:
    """Co-firing counts of one population in two halves of the corpus; ``total`` is their
    exact merge. ``halves[0]`` holds even documents (or even samples), ``halves[1]`` odd."""

    halves: tuple[CoFiring, CoFiring]
    site: str = ""

    @property
    def total(self) -> CoFiring:
        a, b = self.halves
        t = CoFiring.from_state(*a.state())
        return t.merge(CoFiring.from_state(*b.state()))


def cofiring(data: Any, site: str | None = None, *, threshold: float = 0.0, absolute: bool = False,
             split: str = "doc", rows: int = 8192) -> CoFiringSplit:
    """Stream the co-firing counts of a population, in two halves of the corpus.

    ``data``: a :class:`~neuronscope.store.Run` with stored activations (the sites matched by
    ``site`` are concatenated, in run order), an ``xarray.DataArray`` (sample, neuron) or an
    array. Rows are read ``rows`` at a time; only the ``units²`` counts are held. Firing is
    ``a > threshold`` (or ``|a| > threshold`` with ``absolute``). Halves: documents of even /
    odd index (``split="doc"``; sample parity when there is no ``doc``) or ``split="sample"``.
    """
    units, coords, it = _batches(data, site, rows)
    halves = (CoFiring(units, threshold, absolute), CoFiring(units, threshold, absolute))
    for r0, block in it:
        half = _half_of(coords, r0, len(block), split)
        m = halves[0].fired(block)
        for h in (0, 1):
            sel = half == h
            if sel.all():
                halves[h].update_fired(m)
            elif sel.any():
                halves[h].update_fired(m[sel])
    return CoFiringSplit(halves, site or "")


def cofiring_counts(data: Any, site: str | None = None, *, threshold: float = 0.0, absolute: bool = False,
                    rows: int = 4096) -> CoFiring:
    """The co-firing counts of a population in one :class:`CoFiring` (no halves): as
    :func:`cofiring`, holding ``units²`` counts and one block of ``rows`` samples at a time."""
    units, _, it = _batches(data, site, rows)
    cf = CoFiring(units, threshold, absolute)
    for _, block in it:
        cf.update(block)
    return cf


def cofiring_model(model: Any, source: Any, sites: str, *, threshold: float = 0.0, absolute: bool = False,
                   split: str = "doc") -> dict[str, CoFiringSplit]:
    """Co-firing counts of ``model``'s ``sites`` over ``source`` in one forward pass (nothing
    stored): ``{site: CoFiringSplit}``, halves by document parity as in :func:`cofiring`."""
    from neuronscope.recording import forward_batches

    out: dict[str, CoFiringSplit] = {}
    for batch, acts in forward_batches(model, source, sites):
        for name, a in acts.items():
            if name not in out:
                out[name] = CoFiringSplit((CoFiring(a.shape[1], threshold, absolute),
                                           CoFiring(a.shape[1], threshold, absolute)), name)
            half = _half_of(batch.samples, 0, len(a), split)
            for h in (0, 1):
                sel = half == h
                if sel.any():
                    out[name].halves[h].update(a[sel])
    return out


def coactivation_graph(cf: CoFiring | tuple[np.ndarray, np.ndarray, int], normalize: str = "phi") -> np.ndarray:
    """Weighted co-activation graph (units × units, float64, zero diagonal, weights ≥ 0).

    With ``B_ij`` co-firing counts, ``c_i = B_ii`` firing counts and ``n`` samples:

    * ``probability`` — ``P(i and j) = B_ij / n``;
    * ``jaccard`` — ``B_ij / (c_i + c_j − B_ij)``;
    * ``pmi`` — positive pointwise mutual information ``max(0, log(n B_ij / (c_i c_j)))``
      (0 where ``B_ij = 0``);
    * ``phi`` — positive part of the phi coefficient (Pearson correlation of the firing
      indicators) ``(n B_ij − c_i c_j) / sqrt(c_i (n − c_i) c_j (n − c_j))``; 0 for a neuron
      that never or always fires.

    Negative associations are cut to 0 (community detection needs non-negative weights).
    ``cf`` is a :class:`CoFiring` or ``(B, c, n)``.
    """
    if isinstance(cf, CoFiring):
        b, c, n = cf.gram(), cf.counts().astype(np.float64), cf.n
    else:
        b, c, n = np.asarray(cf[0], dtype=np.float64), np.asarray(cf[1], dtype=np.float64), int(cf[2])
    if normalize not in NORMALIZE:
        raise NeuronscopeError(f"normalize must be one of {', '.join(NORMALIZE)}, not {normalize!r}")
    if n <= 0:
        raise NeuronscopeError("co-firing counts hold no samples; stream some activations first")
    with np.errstate(divide="ignore", invalid="ignore"):
        if normalize == "probability":
            w = b / n
        elif normalize == "jaccard":
            den = c[:, None] + c[None, :] - b
            w = np.where(den > 0, b / np.where(den > 0, den, 1), 0.0)
        elif normalize == "pmi":
            den = np.outer(c, c)
            w = np.where((b > 0) & (den > 0), np.log(np.where(b > 0, b, 1) * n / np.where(den > 0, den, 1)), 0.0)
        else:
            v = c * (n - c)
            den = np.sqrt(np.outer(v, v))
            w = np.where(den > 0, (n * b - np.outer(c, c)) / np.where(den > 0, den, 1), 0.0)
    w = np.maximum(w, 0.0)
    np.fill_diagonal(w, 0.0)
    return w


# --------------------------------------------------------------------------- communities


def leiden(weights: np.ndarray, resolution: float = 1.0, seed: int = 0, objective: str = "modularity",
           min_weight: float = 0.0) -> tuple[np.ndarray, float]:
    """Communities of a symmetric non-negative weighted graph with the Leiden algorithm.

    ``objective="modularity"``: maximise the generalised modularity
    ``Q = 1/2m Σ_ij (w_ij − γ k_i k_j / 2m) δ(c_i, c_j)`` with resolution ``γ``
    (``leidenalg.RBConfigurationVertexPartition``); ``"cpm"``: the constant Potts model
    ``Σ_ij (w_ij − γ) δ(c_i, c_j)``. Edges of weight ≤ ``min_weight`` are dropped. Nodes with
    no remaining edge get label ``-1``; the others ``0..M-1``, module 0 the largest (ties: the
    one holding the smallest node). Returns ``(labels, Q)`` with ``Q`` the weighted modularity
    (γ = 1) of the partition over the graph's edges.
    """
    import igraph as ig
    import leidenalg as la

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise NeuronscopeError(f"weights must be a square matrix, got shape {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise NeuronscopeError("weights must be finite and non-negative")
    if objective not in ("modularity", "cpm"):
        raise NeuronscopeError(f"objective must be 'modularity' or 'cpm', not {objective!r}")
    if not (np.isfinite(resolution) and resolution > 0):
        raise NeuronscopeError(f"the Leiden resolution must be a positive number, not {resolution}")
    n = len(w)
    i, j = np.triu_indices(n, 1)
    ww = w[i, j]
    keep = ww > min_weight
    i, j, ww = i[keep], j[keep], ww[keep]
    labels = np.full(n, -1, dtype=np.int64)
    nodes = np.unique(np.concatenate([i, j]))
    if len(nodes) == 0:
        return labels, 0.0
    local = np.full(n, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    edges = np.column_stack([local[i], local[j]])
    g = ig.Graph(n=len(nodes), edges=edges.tolist(), directed=False)
    g.es["weight"] = ww.tolist()
    kind = la.RBConfigurationVertexPartition if objective == "modularity" else la.CPMVertexPartition
    part = la.find_partition(g, kind, weights="weight", resolution_parameter=float(resolution),
                             seed=int(seed), n_iterations=-1)
    member = np.asarray(part.membership, dtype=np.int64)
    q = float(g.modularity(member.tolist(), weights="weight"))
    labels[nodes] = member
    return _relabel(labels), q


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Modules renumbered by size (largest first; ties by smallest member); -1 kept."""
    out = np.full_like(labels, -1)
    mods = [m for m in np.unique(labels) if m >= 0]
    keyed = sorted(mods, key=lambda m: (-int(np.sum(labels == m)), int(np.flatnonzero(labels == m)[0])))
    for new, m in enumerate(keyed):
        out[labels == m] = new
    return out


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings over the nodes assigned (≥ 0) in both."""
    from sklearn.metrics import adjusted_rand_score

    both = (a >= 0) & (b >= 0)
    if both.sum() < 2:
        return float("nan")
    return float(adjusted_rand_score(a[both], b[both]))


@dataclass
class Modules:
    """Communities of one site's co-activation graph.

    ``labels[u]`` is neuron ``u``'s module (``-1``: unassigned — dead or isolated), modules
    numbered by size; ``sizes`` the module sizes; ``modularity`` the weighted modularity (γ = 1)
    of the chosen partition (the best of the seeds by the Leiden objective); ``seed_ari`` the
    mean adjusted Rand index between the partitions of different seeds; ``half_ari`` the ARI
    between the partitions of the two corpus halves (each half's own graph, neurons assigned in
    both); ``weights`` the graph.
    """

    site: str
    labels: np.ndarray
    modularity: float
    seed_ari: float
    half_ari: float
    normalize: str
    resolution: float
    threshold: float
    n_samples: int
    weights: np.ndarray = field(repr=False)
    seeds: int = 1

    @property
    def n_modules(self) -> int:
        return int(self.labels.max() + 1) if (self.labels >= 0).any() else 0

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_modules)

    @property
    def n_unassigned(self) -> int:
        return int(np.sum(self.labels < 0))

    def members(self, module: int) -> np.ndarray:
        """Units of a module (``-1``: the unassigned ones)."""
        return np.flatnonzero(self.labels == module)

    def order(self) -> np.ndarray:
        """Units ordered by module (unassigned last), within a module by weighted degree."""
        deg = self.weights.sum(axis=1)
        key = np.where(self.labels >= 0, self.labels, self.n_modules)
        return np.lexsort((-deg, key))

    def module_weights(self) -> np.ndarray:
        """Mean edge weight within and between modules (M × M; diagonal: within)."""
        m = self.n_modules
        onehot = np.zeros((len(self.labels), m))
        ok = self.labels >= 0
        onehot[np.flatnonzero(ok), self.labels[ok]] = 1.0
        tot = onehot.T @ self.weights @ onehot
        sizes = onehot.sum(axis=0)
        pairs = np.outer(sizes, sizes) - np.diag(sizes)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, tot / np.where(pairs > 0, pairs, 1), 0.0)

    def to_dict(self, members: int = 0) -> dict[str, Any]:
        """JSON-able summary; ``members`` > 0 lists up to that many units per module."""
        d: dict[str, Any] = {
            "site": self.site, "n_modules": self.n_modules, "sizes": self.sizes.tolist(),
            "n_unassigned": self.n_unassigned, "modularity": self.modularity,
            "seed_ari": self.seed_ari, "half_ari": self.half_ari, "normalize": self.normalize,
            "resolution": self.resolution, "threshold": self.threshold, "samples": self.n_samples,
            "seeds": self.seeds,
        }
        if members:
            d["members"] = [self.members(m)[:members].tolist() for m in range(self.n_modules)]
        return d


def modules_from_cofiring(split: CoFiringSplit, *, normalize: str = "phi", resolution: float = 1.0,
                          seeds: int | Sequence[int] = 5, objective: str = "modularity",
                          min_weight: float = 0.0, site: str | None = None) -> Modules:
    """Leiden communities of the co-activation graph of ``split.total`` for several seeds (the
    partition with the best Leiden objective is kept, the mean pairwise ARI between seeds is
    ``seed_ari``), and of each half's graph with the first seed (``half_ari``)."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise NeuronscopeError("give at least one seed")
    total = split.total
    w = coactivation_graph(total, normalize)
    runs = [leiden(w, resolution, s, objective, min_weight) for s in seed_list]
    quals = [_objective(w, lab, resolution, objective) for lab, _ in runs]
    best = int(np.argmax(quals))
    labels, q = runs[best]
    aris = [_ari(runs[a][0], runs[b][0]) for a in range(len(runs)) for b in range(a + 1, len(runs))]
    seed_ari = float(np.nanmean(aris)) if aris else float("nan")
    halves = []
    for h in split.halves:
        if h.n == 0:
            halves.append(None)
            continue
        halves.append(leiden(coactivation_graph(h, normalize), resolution, seed_list[0], objective, min_weight)[0])
    half_ari = _ari(halves[0], halves[1]) if all(x is not None for x in halves) else float("nan")
    return Modules(site=site or split.site, labels=labels, modularity=q, seed_ari=seed_ari, half_ari=half_ari,
                   normalize=normalize, resolution=float(resolution), threshold=total.threshold,
                   n_samples=total.n, weights=w, seeds=len(seed_list))


def _objective(w: np.ndarray, labels: np.ndarray, resolution: float, objective: str) -> float:
    """The Leiden objective of a labeling (for choosing among seeds)."""
    ok = labels >= 0
    if not ok.any():
        return 0.0
    lab = labels[ok]
    ww = w[np.ix_(ok, ok)]
    m = lab.max() + 1
    onehot = np.zeros((len(lab), m))
    onehot[np.arange(len(lab)), lab] = 1.0
    within = np.trace(onehot.T @ ww @ onehot)
    if objective == "cpm":
        sizes = onehot.sum(axis=0)
        return float(within - resolution * np.sum(sizes * (sizes - 1)))
    k = ww.sum(axis=1)
    two_m = k.sum()
    kc = onehot.T @ k
    return float((within - resolution * np.sum(kc**2) / two_m) / two_m) if two_m > 0 else 0.0


def find_modules(data: Any, site: str | None = None, *, threshold: float = 0.0, absolute: bool = False,
                 normalize: str = "phi", resolution: float = 1.0, seeds: int | Sequence[int] = 5,
                 objective: str = "modularity", split: str = "doc", per_site: bool = True,
                 rows: int = 8192) -> dict[str, Modules]:
    """Functional modules of each site: stream co-firing counts (:func:`cofiring`), normalise
    (:func:`coactivation_graph`), run Leiden (:func:`leiden`) over ``seeds`` and on each half
    of the corpus. ``data`` is a run (sites matched by ``site``; one graph per site, or one
    over all of them with ``per_site=False``), a DataArray or an array (one graph).
    Returns ``{site: Modules}``."""
    if _is_run(data) and per_site:
        names = _run_sites(data, site)
        return {s: modules_from_cofiring(cofiring(data, s, threshold=threshold, absolute=absolute, split=split,
                                                  rows=rows),
                                         normalize=normalize, resolution=resolution, seeds=seeds,
                                         objective=objective, site=s)
                for s in names}
    name = site or "population"
    cf = cofiring(data, site, threshold=threshold, absolute=absolute, split=split, rows=rows)
    return {name: modules_from_cofiring(cf, normalize=normalize, resolution=resolution, seeds=seeds,
                                        objective=objective, site=name)}


def save_modules(run: Any, modules: Modules, name: str | None = None, heatmap_side: int = 512) -> str:
    """Store modules in ``run`` as ``extras/modules-<site>`` (or ``name``): the co-activation
    graph ordered by module (averaged into at most ``heatmap_side`` blocks per side, so large
    sites stay small), the module × module mean weights, the module sizes and every neuron's
    module (``labels``). The atlas shows the 2-D arrays as heatmaps and the scalars as notes.
    Returns the extras name."""
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    name = name or f"modules-{modules.site}"
    order = modules.order()
    w = modules.weights[np.ix_(order, order)]
    lab = modules.labels[order]
    tick = [f"m{m}:u{u}" if m >= 0 else f"-:u{u}" for m, u in zip(lab.tolist(), order.tolist(), strict=True)]
    if len(order) > heatmap_side:
        step = math.ceil(len(order) / heatmap_side)
        nb = math.ceil(len(order) / step)
        pad = nb * step - len(order)
        wp = np.pad(w, ((0, pad), (0, pad)))
        cnt = np.pad(np.ones_like(w), ((0, pad), (0, pad)))
        w = wp.reshape(nb, step, nb, step).sum(axis=(1, 3)) / cnt.reshape(nb, step, nb, step).sum(axis=(1, 3))
        tick = [tick[b * step] + "…" for b in range(nb)]
    sizes = modules.sizes
    mlabels = [f"m{m} ({s})" for m, s in enumerate(sizes.tolist())]
    attrs: dict[str, Any] = {
        "title": f"modules of {modules.site}",
        "site": modules.site,
        "n_modules": modules.n_modules,
        "n_unassigned": modules.n_unassigned,
        "modularity": round(modules.modularity, 6),
        "seed_ari": None if math.isnan(modules.seed_ari) else round(modules.seed_ari, 6),
        "half_ari": None if math.isnan(modules.half_ari) else round(modules.half_ari, 6),
        "normalize": modules.normalize,
        "resolution": modules.resolution,
        "threshold": modules.threshold,
        "samples": modules.n_samples,
        "members": [modules.members(m).tolist() for m in range(modules.n_modules)],
        "heatmaps": {
            "coactivation": {"title": f"co-activation ({modules.normalize}) ordered by module",
                             "rows": tick, "cols": tick, "vmin": 0.0},
            "module_weights": {"title": "mean weight within / between modules", "rows": mlabels,
                               "cols": mlabels, "vmin": 0.0},
            "sizes": {"title": "module sizes", "rows": ["neurons"], "cols": mlabels, "vmin": 0.0},
        },
    }
    for m in range(min(modules.n_modules, 16)):
        mem = modules.members(m)
        attrs[f"members m{m}"] = ", ".join(str(u) for u in mem[:40]) + (" …" if len(mem) > 40 else "")
    arrays = {"coactivation": w, "module_weights": modules.module_weights(),
              "sizes": sizes[None, :].astype(np.float64), "labels": modules.labels.astype(np.int64)}
    run.write_extras(name, arrays, attrs)
    return name


# --------------------------------------------------------------------------- NTF


def ntf(tensor: np.ndarray, rank: int, *, seed: int = 0, n_iter_max: int = 500, tol: float = 1e-8,
        init: str = "random") -> tuple[np.ndarray, list[np.ndarray]]:
    """Non-negative CP/PARAFAC decomposition ``T ≈ Σ_r λ_r a_r ∘ b_r ∘ c_r …`` with
    ``tensorly.decomposition.non_negative_parafac`` (multiplicative updates).

    Returns ``(weights, factors)``: every factor column scaled to unit L2 norm, ``λ_r`` the
    product of the norms taken out, components sorted by decreasing ``λ``.
    """
    import tensorly as tl
    from tensorly.decomposition import non_negative_parafac

    t = np.asarray(tensor, dtype=np.float64)
    if t.ndim < 2:
        raise NeuronscopeError(f"NTF needs a tensor of at least 2 modes, got shape {t.shape}")
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise NeuronscopeError("NTF needs a finite non-negative tensor")
    if rank < 1:
        raise NeuronscopeError("rank must be a positive integer")
    tl.set_backend("numpy")
    cp = non_negative_parafac(t, rank, n_iter_max=n_iter_max, init=init, tol=tol,
                              random_state=int(seed))
    factors = [np.asarray(f, dtype=np.float64).copy() for f in cp.factors]
    weights = np.asarray(cp.weights, dtype=np.float64).copy() * np.ones(rank)
    for f in factors:
        norms = np.linalg.norm(f, axis=0)
        ok = norms > 0
        f[:, ok] /= norms[ok]
        weights = weights * np.where(ok, norms, 0.0)
    order = np.argsort(-weights, kind="stable")
    return weights[order], [f[:, order] for f in factors]


@dataclass
class Connectome:
    """A dynamic functional connectome: NTF components of a pairs × windows × subjects
    affinity tensor.

    ``units`` are the neurons used (indices into the site); ``weights[r]`` the component
    weight; ``pairs[:, r]`` the loading of every neuron pair (upper triangle, ``i < j`` in
    ``np.triu_indices`` order), ``windows[:, r]`` when the component is active and
    ``subjects[:, r]`` for which population; ``communities[r]`` the weighted communities of the
    component's pair loadings as a graph (labels over ``units``, -1 unassigned);
    ``window_labels`` name the windows.
    """

    units: np.ndarray
    weights: np.ndarray
    pairs: np.ndarray = field(repr=False)
    windows: np.ndarray
    subjects: np.ndarray
    communities: list[np.ndarray]
    window_labels: list[str]
    affinity: str
    error: float

    @property
    def rank(self) -> int:
        return len(self.weights)

    def motif(self, r: int) -> np.ndarray:
        """Component ``r``'s pair loadings as a symmetric units × units matrix."""
        n = len(self.units)
        m = np.zeros((n, n))
        i, j = np.triu_indices(n, 1)
        m[i, j] = self.pairs[:, r]
        m[j, i] = self.pairs[:, r]
        return m

    def to_dict(self) -> dict[str, Any]:
        comps = []
        for r in range(self.rank):
            lab = self.communities[r]
            sizes = np.bincount(lab[lab >= 0]) if (lab >= 0).any() else np.zeros(0, dtype=int)
            peak = int(np.argmax(self.windows[:, r]))
            comps.append({"weight": float(self.weights[r]), "peak_window": self.window_labels[peak],
                          "window_loadings": self.windows[:, r].tolist(),
                          "subject_loadings": self.subjects[:, r].tolist(),
                          "community_sizes": sizes.tolist()})
        return {"units": self.units.tolist(), "affinity": self.affinity, "rank": self.rank,
                "relative_error": self.error, "windows": self.window_labels, "components": comps}

    def save(self, run: Any, name: str) -> str:
        """Store in ``run`` as ``extras/<name>``: window × component and component motif
        heatmaps (units ordered by community)."""
        from neuronscope.store import Run, open_run

        run = run if isinstance(run, Run) else open_run(run)
        comps = [f"c{r}" for r in range(self.rank)]
        arrays: dict[str, np.ndarray] = {"windows": self.windows, "pairs": self.pairs, "units": self.units}
        heat: dict[str, Any] = {"windows": {"title": "window loadings of each component",
                                            "rows": self.window_labels, "cols": comps, "vmin": 0.0}}
        for r in range(min(self.rank, 8)):
            lab = self.communities[r]
            order = np.lexsort((-self.motif(r).sum(1), np.where(lab >= 0, lab, lab.max() + 1)))
            arrays[f"motif{r}"] = self.motif(r)[np.ix_(order, order)]
            ticks = [f"k{lab[o]}:u{self.units[o]}" for o in order]
            heat[f"motif{r}"] = {"title": f"component {r}: pair loadings ordered by community",
                                 "rows": ticks, "cols": ticks, "vmin": 0.0}
        run.write_extras(name, arrays, {"title": f"dynamic functional connectome ({self.affinity})",
                                        "rank": self.rank, "affinity": self.affinity,
                                        "relative_error": round(self.error, 6), "heatmaps": heat})
        return name


#: Affinities of :func:`dynamic_connectome`.
AFFINITIES = ("correlation", "cofiring", "phi")


def _window_ids(coords: Mapping[str, np.ndarray], n: int, window: str, n_windows: int,
                window_size: float | None) -> tuple[np.ndarray, list[str]]:
    """Window index of every sample and the window names."""
    if window == "doc":
        if "doc" not in coords:
            raise NeuronscopeError("window='doc' needs a doc sample coordinate (a text run)")
        doc = np.asarray(coords["doc"], dtype=np.int64)
        d0, d1 = int(doc.min()), int(doc.max()) + 1
        size = int(window_size) if window_size else max(1, math.ceil((d1 - d0) / n_windows))
        ids = (doc - d0) // size
        labels = [f"docs {d0 + w * size}-{min(d1, d0 + (w + 1) * size) - 1}" for w in range(int(ids.max()) + 1)]
        return ids, labels
    if window == "pos":
        if "pos" not in coords:
            raise NeuronscopeError("window='pos' needs a pos sample coordinate (a text run)")
        pos = np.asarray(coords["pos"], dtype=np.int64)
        size = int(window_size) if window_size else 8
        ids = np.minimum(pos // size, n_windows - 1)
        labels = [f"pos {w * size}-{(w + 1) * size - 1}" if w < n_windows - 1 else f"pos ≥{w * size}"
                  for w in range(int(ids.max()) + 1)]
        return ids, labels
    if window == "time":
        if "time" not in coords:
            raise NeuronscopeError("window='time' needs a time sample coordinate (a brain population)")
        t = np.asarray(coords["time"], dtype=np.float64)
        t0, t1 = float(t.min()), float(t.max())
        if window_size:
            ids = np.floor((t - t0) / window_size).astype(np.int64)
            edges = [t0 + w * window_size for w in range(int(ids.max()) + 2)]
        else:
            width = (t1 - t0) / n_windows if t1 > t0 else 1.0
            ids = np.minimum(np.floor((t - t0) / width).astype(np.int64), n_windows - 1)
            edges = [t0 + w * width for w in range(n_windows + 1)]
        labels = [f"t {edges[w]:.4g}-{edges[w + 1]:.4g}" for w in range(int(ids.max()) + 1)]
        return ids, labels
    if window == "sample":
        size = int(window_size) if window_size else max(1, math.ceil(n / n_windows))
        ids = np.arange(n) // size
        return ids, [f"samples {w * size}-{min(n, (w + 1) * size) - 1}" for w in range(int(ids.max()) + 1)]
    raise NeuronscopeError(f"window must be doc, pos, time or sample, not {window!r}")


def _window_affinities(data: Any, site: str | None, units: np.ndarray, window: str, n_windows: int,
                       window_size: float | None, affinity: str, threshold: float,
                       rows: int) -> tuple[np.ndarray, list[str]]:
    """(windows × pairs) affinities of one population, streamed by row blocks: per window a
    CrossProducts (correlation) or CoFiring (cofiring, phi) of the chosen units."""
    nu, coords, it = _batches(data, site, rows, columns=units)
    n_rows = None
    for v in coords.values():
        n_rows = len(v)
        break
    if n_rows is None:
        shape = data.shape if not _is_run(data) else (data.n_rows, 0)
        n_rows = shape[0]
    ids, labels = _window_ids(coords, n_rows, window, n_windows, window_size)
    stats: dict[int, Any] = {}
    for r0, block in it:
        wid = ids[r0 : r0 + len(block)]
        for w in np.unique(wid):
            sel = block[wid == w]
            if w not in stats:
                stats[w] = (CrossProducts(nu, 1, gram="x") if affinity == "correlation"
                            else CoFiring(nu, threshold))
            if affinity == "correlation":
                stats[w].update_pair(sel, np.ones((len(sel), 1), dtype=np.float32))
            else:
                stats[w].update(sel)
    iu = np.triu_indices(nu, 1)
    out = np.zeros((len(labels), len(iu[0])))
    for w, s in stats.items():
        if affinity == "correlation":
            s.flush()
            if s.n < 2:
                continue
            r = np.nan_to_num(s.corr_xx(), nan=0.0)
            out[w] = np.maximum(r[iu], 0.0)
        else:
            out[w] = coactivation_graph(s, "probability" if affinity == "cofiring" else "phi")[iu]
    return out, labels


def dynamic_connectome(populations: Any, site: str | None = None, *, rank: int = 4, window: str | None = None,
                       n_windows: int = 16, window_size: float | None = None, units: Sequence[int] | None = None,
                       max_units: int = 128, affinity: str = "correlation", threshold: float = 0.0,
                       resolution: float = 1.0, seed: int = 0, n_iter_max: int = 500,
                       rows: int = 8192) -> Connectome:
    """The dynamic functional connectome (Dyballa et al. 2024) of one or several populations.

    1. Windows: ``window="doc"`` (blocks of consecutive documents), ``"pos"`` (position blocks
       of ``window_size`` tokens, the last block open-ended) for a model run; ``"time"``
       (``n_windows`` equal time bins, or bins of ``window_size``) for a brain population
       (a DataArray with a ``time`` sample coordinate); ``"sample"`` blocks of consecutive
       samples otherwise. Default: ``time`` when there is a time coordinate, else ``doc``.
    2. Affinities per window between the chosen ``units`` (default: the ``max_units`` neurons
       that fire most often, dead neurons excluded): ``correlation`` (positive part of the
       Pearson correlation), ``cofiring`` (probability both fire, ``a > threshold``) or
       ``phi`` (positive phi of the firing indicators); all streamed by row blocks.
    3. The tensor ``T[pair, window, subject]`` (one subject per population in
       ``populations``, a list or a single run / DataArray) is factorised by non-negative
       PARAFAC of ``rank`` components (:func:`ntf`).
    4. Each component's pair loadings, as a weighted graph on the units, are split into
       communities by Leiden (``resolution``, ``seed``).
    """
    pops = list(populations) if isinstance(populations, list | tuple) else [populations]
    if not pops:
        raise NeuronscopeError("give at least one population")
    if affinity not in AFFINITIES:
        raise NeuronscopeError(f"affinity must be one of {', '.join(AFFINITIES)}, not {affinity!r}")
    if window is None:
        _, c0, _ = _batches(pops[0], site, 1, columns=np.array([0]))
        window = "time" if "time" in c0 else ("doc" if "doc" in c0 else "sample")
    if units is None:
        cf = cofiring(pops[0], site, threshold=threshold, rows=rows).total
        freq = cf.counts() / max(cf.n, 1)
        alive = np.flatnonzero((freq > 0) & (freq < 1))
        chosen = alive[np.argsort(-freq[alive], kind="stable")[:max_units]]
        units_arr = np.sort(chosen)
    else:
        units_arr = np.asarray(units, dtype=np.int64)
    if len(units_arr) < 2:
        raise NeuronscopeError("the connectome needs at least two (alive) neurons")
    mats, labels = [], None
    for p in pops:
        m, lab = _window_affinities(p, site, units_arr, window, n_windows, window_size, affinity, threshold, rows)
        if labels is not None and len(lab) != len(labels):
            raise NeuronscopeError("populations give different numbers of windows; pass window_size or n_windows")
        labels = lab
        mats.append(m.T)
    tensor = np.stack(mats, axis=2)
    if not np.any(tensor > 0):
        raise NeuronscopeError("every affinity is zero; choose other units, windows or affinity")
    weights, factors = ntf(tensor, rank, seed=seed, n_iter_max=n_iter_max)
    recon = np.einsum("r,ir,jr,kr->ijk", weights, *factors)
    err = float(np.linalg.norm(tensor - recon) / np.linalg.norm(tensor))
    pairs, win, subj = factors
    n = len(units_arr)
    comms = []
    iu = np.triu_indices(n, 1)
    for r in range(len(weights)):
        m = np.zeros((n, n))
        m[iu] = pairs[:, r]
        m = m + m.T
        comms.append(leiden(m, resolution, seed)[0])
    return Connectome(units=units_arr, weights=weights, pairs=pairs, windows=win, subjects=subj,
                      communities=comms, window_labels=labels or [], affinity=affinity, error=err)


# --------------------------------------------------------------------------- Semi-NMF


def _pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _neg(x: np.ndarray) -> np.ndarray:
    return np.maximum(-x, 0.0)


@dataclass
class SemiNMF:
    """Semi-NMF of a population ``A`` (neurons × samples, each column one sample's activation
    vector): ``A ≈ W Hᵀ`` — in samples × neurons orientation ``X ≈ H Wᵀ`` — with

    * ``W`` (neurons × k) of any sign: column ``f`` is feature ``f``, a (sparse) combination of
      co-activated neurons (``features`` = ``Wᵀ``, k × neurons);
    * ``H`` (samples × k) **non-negative**: ``H[t, f]`` is how much feature ``f`` is present on
      sample ``t`` (``coefficients``).

    ``errors[e]`` is the relative reconstruction error ``‖A − W Hᵀ‖²_F / ‖A‖²_F`` after epoch
    ``e``; ``top_rows`` / ``top_values`` (k × m) the samples (row indices of the population,
    highest coefficient first) where each feature is strongest; ``samples`` their sample
    coordinates (``doc``, ``pos``, ``token``, …, each k × m).
    """

    features: np.ndarray
    coefficients: np.ndarray = field(repr=False)
    errors: list[float]
    top_rows: np.ndarray
    top_values: np.ndarray
    samples: dict[str, np.ndarray] = field(repr=False)
    keep: float | None = None

    @property
    def k(self) -> int:
        return self.features.shape[0]

    def top_neurons(self, f: int, n: int = 10) -> list[tuple[int, float]]:
        """The ``n`` neurons with the largest |weight| in feature ``f``: ``(unit, weight)``."""
        w = self.features[f]
        idx = np.argsort(-np.abs(w), kind="stable")[:n]
        return [(int(i), float(w[i])) for i in idx]

    def top_examples(self, f: int) -> list[dict[str, Any]]:
        """Feature ``f``'s top examples: row, coefficient and sample coordinates."""
        out = []
        for j in range(self.top_rows.shape[1]):
            if self.top_rows[f, j] < 0:
                continue
            ex = {"row": int(self.top_rows[f, j]), "value": float(self.top_values[f, j])}
            for k, v in self.samples.items():
                val = v[f, j]
                ex[k] = val.item() if isinstance(val, np.generic) else val
            out.append(ex)
        return out

    def save(self, run: Any, name: str) -> str:
        """Store in ``run`` as ``extras/<name>``: the features (k × neurons) and the top
        coefficients (k × m), rows labelled by each feature's top neurons and top tokens."""
        from neuronscope.store import Run, open_run

        run = run if isinstance(run, Run) else open_run(run)
        rows = []
        for f in range(self.k):
            toks = self.samples.get("token")
            tt = ""
            if toks is not None:
                tt = " " + " ".join(repr(str(t)) for t in toks[f, :5])
            rows.append(f"f{f} [{', '.join(str(u) for u, _ in self.top_neurons(f, 3))}]{tt}")
        arrays: dict[str, np.ndarray] = {"features": self.features, "top_values": self.top_values,
                                         "top_rows": self.top_rows.astype(np.int64),
                                         "errors": np.asarray(self.errors)}
        for k, v in self.samples.items():
            if np.asarray(v).dtype.kind in "iu":
                arrays[f"top_{k}"] = np.asarray(v, dtype=np.int64)
        attrs = {"title": f"Semi-NMF features ({self.k})", "k": self.k,
                 "relative_error": round(float(self.errors[-1]), 6) if self.errors else None,
                 "keep": self.keep,
                 "top_tokens": [[str(t) for t in row] for row in self.samples["token"].tolist()]
                 if "token" in self.samples else [],
                 "heatmaps": {
                     "features": {"title": "feature weights over neurons (W transposed)", "rows": rows},
                     "top_values": {"title": "top coefficients of each feature (H ≥ 0)", "rows": rows,
                                    "cols": [f"#{j + 1}" for j in range(self.top_rows.shape[1])], "vmin": 0.0},
                 }}
        run.write_extras(name, arrays, attrs)
        return name


def _h_step(a: np.ndarray, w: np.ndarray, h: np.ndarray, wtw: np.ndarray, iters: int) -> np.ndarray:
    """Ding et al.'s multiplicative update of the non-negative factor for fixed ``W``
    (rows of ``a`` are samples): ``H ← H ⊙ sqrt(([AW]⁺ + H[WᵀW]⁻) / ([AW]⁻ + H[WᵀW]⁺))``;
    each step does not increase ``‖A − H Wᵀ‖²``."""
    aw = a @ w
    awp, awn = _pos(aw), _neg(aw)
    qp, qn = _pos(wtw), _neg(wtw)
    for _ in range(iters):
        num = awp + h @ qn
        den = awn + h @ qp
        h = h * np.sqrt(num / np.maximum(den, 1e-12))
    return h


def _objective_from_stats(norm2: float, w: np.ndarray, ah: np.ndarray, hh: np.ndarray) -> float:
    """``‖A − W Hᵀ‖² = ‖A‖² − 2 tr(Wᵀ A H) + tr(Wᵀ W HᵀH)`` from streamed statistics."""
    return float(norm2 - 2.0 * np.sum(w * ah) + np.sum((w.T @ w) * hh))


def _w_step(ah: np.ndarray, hh: np.ndarray, keep: float | None, ridge: float) -> np.ndarray:
    """Least-squares ``W = (A H)(HᵀH)⁻¹``; with ``keep`` each feature keeps the ``⌈keep·d⌉``
    neurons of largest |weight| and every neuron's kept weights are refitted by least squares
    on that support (the objective separates over neurons)."""
    k = hh.shape[0]
    reg = ridge * max(float(np.trace(hh)) / k, 1e-12)
    w = np.linalg.solve(hh + reg * np.eye(k), ah.T).T
    if keep is None:
        return w
    d = w.shape[0]
    m = max(1, math.ceil(keep * d))
    thr = -np.sort(-np.abs(w), axis=0)[m - 1]
    mask = np.abs(w) >= thr[None, :]
    out = np.zeros_like(w)
    for i in range(d):
        s = np.flatnonzero(mask[i])
        if len(s):
            out[i, s] = np.linalg.solve(hh[np.ix_(s, s)] + reg * np.eye(len(s)), ah[i, s])
    return out


def semi_nmf(data: Any, site: str | None = None, *, k: int = 32, epochs: int = 30, rows: int = 4096,
             keep: float | None = None, inner: int = 5, seed: int = 0, init_rows: int = 8192,
             n_examples: int = 16, ridge: float = 1e-9, tol: float = 0.0) -> SemiNMF:
    """Semi-NMF ``A ≈ W Hᵀ`` with ``H ≥ 0`` (see :class:`SemiNMF`), fitted by mini-batches.

    ``data`` is a run with stored activations (the sites matched by ``site``), a DataArray or
    an array; only ``rows`` samples are read at a time. Initialisation: k-means (k-means++ on
    up to ``init_rows`` evenly spaced samples) gives ``W``'s columns, and
    ``H = max(0, A W (WᵀW)⁻¹) + 0.2`` (Ding et al. 2010). Each epoch streams the batches once:
    ``inner`` multiplicative updates of each batch's rows of ``H`` with ``W`` fixed (stored
    ``H`` is ``samples × k``, small beside ``A``), accumulating ``A H``, ``HᵀH``; then the exact
    least-squares ``W`` (with ``keep``, the winner-take-all sparsity of Shafran et al.: every
    feature keeps its ``⌈keep · neurons⌉`` largest weights, refitted). Both steps never increase
    the error (Ding et al.'s theorem for ``H``; least squares for ``W``); a sparse ``W`` that
    would is rejected and the previous ``W`` kept, so ``errors`` never increases. Stops after
    ``epochs`` or when the relative error improves by less than ``tol``.
    """
    if k < 1:
        raise NeuronscopeError("k must be a positive integer")
    if keep is not None and not 0.0 < keep <= 1.0:
        raise NeuronscopeError(f"keep must be in (0, 1], not {keep}")
    from sklearn.cluster import kmeans_plusplus

    d, coords, it = _batches(data, site, rows)
    blocks_meta: list[tuple[int, int]] = []
    n = 0
    norm2 = 0.0
    # initialisation sample: every s-th row
    init: list[np.ndarray] = []
    total_rows = len(next(iter(coords.values()))) if coords else None
    for r0, block in it:
        blocks_meta.append((r0, len(block)))
        n += len(block)
        norm2 += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
        init.append(block)
        if sum(len(b) for b in init) > 4 * init_rows:
            cat = np.concatenate(init)
            init = [cat[:: max(1, len(cat) // init_rows)]]
    if n == 0:
        raise NeuronscopeError("no samples to factorise")
    if k > n:
        raise NeuronscopeError(f"k={k} features from {n} samples; choose k <= samples")
    sample = np.concatenate(init).astype(np.float64)
    sample = sample[:: max(1, len(sample) // init_rows)]
    rng = np.random.default_rng(seed)
    centers, _ = kmeans_plusplus(sample, min(k, len(sample)), random_state=int(rng.integers(2**31)))
    for _ in range(10):  # Lloyd iterations on the sample
        dist = (sample**2).sum(1)[:, None] - 2 * sample @ centers.T + (centers**2).sum(1)[None, :]
        lab = dist.argmin(1)
        for c in range(len(centers)):
            if np.any(lab == c):
                centers[c] = sample[lab == c].mean(0)
    w = centers.T.copy()  # d × k
    if w.shape[1] < k:
        w = np.concatenate([w, rng.standard_normal((d, k - w.shape[1])) * 1e-3], axis=1)
    if keep is not None:  # start from a sparse W so every accepted W is sparse
        m_keep = max(1, math.ceil(keep * d))
        thr = -np.sort(-np.abs(w), axis=0)[m_keep - 1]
        w = np.where(np.abs(w) >= thr[None, :], w, 0.0)
    h = np.zeros((n, k), dtype=np.float64)
    wtw = w.T @ w
    winv = np.linalg.pinv(wtw)

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        return _batches(data, site, rows)[2]

    for r0, block in stream():
        h[r0 : r0 + len(block)] = _pos(block @ w @ winv) + 0.2
    errors: list[float] = []
    prev = math.inf
    for _ in range(epochs):
        ah = np.zeros((d, k))
        hh = np.zeros((k, k))
        wtw = w.T @ w
        for r0, block in stream():
            b = block.astype(np.float64)
            hb = _h_step(b, w, h[r0 : r0 + len(b)], wtw, inner)
            h[r0 : r0 + len(b)] = hb
            ah += b.T @ hb
            hh += hb.T @ hb
        old = _objective_from_stats(norm2, w, ah, hh)
        new_w = _w_step(ah, hh, keep, ridge)
        new = _objective_from_stats(norm2, new_w, ah, hh)
        if new <= old:
            w = new_w
        err = min(new, old) / norm2 if norm2 > 0 else 0.0
        errors.append(max(err, 0.0))
        if prev - err < tol * max(prev, 1e-300) and tol > 0:
            break
        prev = err
    m = min(n_examples, n)
    top = np.argsort(-h, axis=0, kind="stable")[:m].T  # k × m
    vals = np.take_along_axis(h.T, top, axis=1)
    samples: dict[str, np.ndarray] = {}
    for key in ("sample", "doc", "pos", "token_id", "token", "time", "item", "stimulus"):
        if key in coords and (total_rows is None or len(coords[key]) == n):
            samples[key] = np.asarray(coords[key])[top]
    return SemiNMF(features=w.T.copy(), coefficients=h.astype(np.float32), errors=errors,
                   top_rows=top.astype(np.int64), top_values=vals, samples=samples, keep=keep)
