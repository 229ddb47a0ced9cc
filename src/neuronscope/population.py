"""Populations: neurons observed on samples, and the helpers every analysis starts with.

A *population* is an ``xarray.DataArray`` with dims ``("sample", "neuron")``: neuron
coordinates ``site`` (module path or brain area) and ``unit``; sample coordinates such as
``doc``, ``pos``, ``token`` (text), ``item`` (images) or ``stimulus``, ``repeat``, ``time``
(brain recordings). Plain ``(samples, neurons)`` arrays are populations without labels.

* :func:`select_sites` — the one resolver of site globs (``"encoder.layer.*.intermediate"``,
  comma-separated lists) used by models, runs, lockstep recordings and analyses alike.
* :func:`id_coord` — the stimulus-id coordinate of a population (``stimulus`` or ``item``).
* :func:`to_matrix` — a population as a finite 2-D float array.
* :func:`average_repeats` / :func:`split_repeats` — repeats of a stimulus averaged, or
  stacked as ``(repeats, stimuli, neurons)``.
* :func:`order_by_ids` — positions that put one list of stimulus ids into another's order:
  the one alignment rule, used for populations (:func:`align`, :func:`align_all`) and RDMs.
* :func:`align`, :func:`align_all`, :func:`paired` — populations aligned by stimulus id
  (an xarray index on the id coordinate), repeats averaged, before any comparison.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.errors import NeuronscopeError

#: Anything a comparison accepts as one population: an ndarray, a DataArray (dask-backed or
#: not) with dims (sample, neuron), or a nested list of numbers.
ArrayLike = Any
#: Sample coordinates that identify a stimulus, in order of preference.
ID_COORDS = ("stimulus", "item")

__all__ = [
    "ID_COORDS", "ArrayLike", "align", "align_all", "average_repeats", "id_coord",
    "order_by_ids", "paired", "select_sites", "short_site_names", "split_repeats", "to_matrix",
]


# --------------------------------------------------------------------------- sites


def short_site_names(names: Sequence[str]) -> tuple[list[str], str]:
    """Site names without their common dotted prefix and suffix, and the glob they share
    (``encoder.layer.3.intermediate`` → ``layer.3`` under ``encoder.*.intermediate``)."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return list(names), ""
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) > pre + suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    if not pre and not suf:
        return list(names), ""
    short = [".".join(p[pre : len(p) - suf]) for p in parts]
    glob = ".".join([*parts[0][:pre], "*", *(parts[0][len(parts[0]) - suf :] if suf else [])])
    return short, glob


def select_sites(names: Iterable[str], pattern: str | Sequence[str] | None, where: str = "") -> list[str]:
    """The names among ``names`` matched by ``pattern``, in the order of ``names``.

    ``pattern`` is an ``fnmatch`` glob (``*`` matches within and across dots), a
    comma-separated list of globs, or a list of globs; ``None`` or ``""`` selects every name.
    A glob that matches no name raises :class:`~neuronscope.errors.NeuronscopeError` naming
    the closest names (``where`` says whose names they are, e.g. ``"of run x.zarr"``).
    """
    names = list(names)
    if pattern is None or (isinstance(pattern, str) and not pattern.strip()):
        return names
    globs = [p.strip() for p in (pattern.split(",") if isinstance(pattern, str) else pattern)]
    globs = [p for p in globs if p]
    if not globs:
        return names
    chosen: set[str] = set()
    for glob in globs:
        hits = [n for n in names if n == glob or fnmatch.fnmatchcase(n, glob)]
        if not hits:
            close = difflib.get_close_matches(glob, names, n=5, cutoff=0.3) or names[:5]
            where_ = f" {where}" if where else ""
            raise NeuronscopeError(
                f"site pattern {glob!r} matched no site{where_}; closest names: {', '.join(close)}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


# --------------------------------------------------------------------------- matrices


def id_coord(da: Any) -> str | None:
    """The stimulus-id sample coordinate of a DataArray (``stimulus``, else ``item``), or None."""
    if not isinstance(da, xr.DataArray):
        return None
    for c in ID_COORDS:
        if c in da.coords and da.coords[c].dims == ("sample",):
            return c
    return None


def to_matrix(x: ArrayLike, name: str = "X", min_samples: int = 3) -> np.ndarray:
    """Return ``x`` (ndarray, DataArray, dask-backed or not) as a finite 2-D float array.

    float32 stays float32 (the heavy products accumulate it in float64 blocks); every other
    real dtype becomes float64. Raises :class:`NeuronscopeError` on complex values, NaN/Inf,
    fewer than ``min_samples`` rows, or a shape that is not (samples, neurons).
    """
    a = x.values if isinstance(x, xr.DataArray) else np.asarray(x)
    if a.dtype.kind == "c":
        raise NeuronscopeError(f"{name} is complex-valued; give real responses (e.g. np.abs or .real first)")
    if a.dtype.kind not in "biuf":
        raise NeuronscopeError(f"{name} has dtype {a.dtype}; give numeric (samples, neurons) values")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise NeuronscopeError(
            f"{name} has shape {a.shape}; give a 2-D (samples, neurons) array "
            "(average repeats or reshape first)"
        )
    a = a.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False)
    if a.shape[0] < min_samples:
        raise NeuronscopeError(
            f"{name} has {a.shape[0]} samples; comparisons need at least {min_samples} stimuli"
        )
    if a.shape[1] < 1:
        raise NeuronscopeError(f"{name} has no neurons; select at least one unit")
    if not np.isfinite(a).all():
        raise NeuronscopeError(f"{name} contains NaN or Inf; drop or impute those values first")
    return a


def average_repeats(da: xr.DataArray, by: str | None = None) -> xr.DataArray:
    """Average a population over repeats of the same stimulus (one row per stimulus id).

    Rows are grouped by the ``stimulus`` (or ``item``) coordinate, in order of first
    appearance. A population without repeated ids is returned unchanged.
    """
    by = by or id_coord(da)
    if by is None:
        return da
    ids = np.asarray(da.coords[by].values)
    if "time" in da.coords and len(np.unique(np.asarray(da.coords["time"].values))) > 1:
        raise NeuronscopeError(
            "population has several time bins per stimulus; select one first, "
            "e.g. pop.isel(sample=pop.time == t)"
        )
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    if len(uniq) == len(ids):
        return da
    order = np.argsort(first)  # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[inverse.reshape(-1)]
    vals = np.asarray(da.values, dtype=np.float64)
    sums = np.zeros((len(uniq), vals.shape[1]))
    np.add.at(sums, group, vals)
    counts = np.bincount(group, minlength=len(uniq)).astype(np.float64)
    mean = sums / counts[:, None]
    neuron_coords = {k: v for k, v in da.coords.items() if v.dims == ("neuron",)}
    return xr.DataArray(
        mean,
        dims=("sample", "neuron"),
        coords={by: ("sample", uniq[order]), **neuron_coords},
        name=da.name,
    )


def split_repeats(x: np.ndarray, stimulus: Any, repeat: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(repeats, stimuli, neurons)`` array from rows labelled by ``stimulus`` and ``repeat``
    (balanced: every stimulus has each repeat exactly once), and the sorted stimulus ids."""
    if stimulus is None or repeat is None:
        raise NeuronscopeError("crossnobis and repeat noise ceilings need `stimulus` and `repeat` labels per row")
    stim, rep = np.asarray(stimulus), np.asarray(repeat)
    us, si = np.unique(stim, return_inverse=True)
    ur, ri = np.unique(rep, return_inverse=True)
    si, ri = si.reshape(-1), ri.reshape(-1)
    if len(ur) < 2:
        raise NeuronscopeError("only one repeat per stimulus; cross-validation needs at least 2 repeats")
    if len(stim) != len(us) * len(ur) or len(set(zip(si.tolist(), ri.tolist(), strict=True))) != len(stim):
        raise NeuronscopeError("repeats are unbalanced; every stimulus needs each repeat exactly once")
    out = np.empty((len(ur), len(us), x.shape[1]))
    out[ri, si] = x
    return out, us


# --------------------------------------------------------------------------- alignment


def order_by_ids(have: Any, want: Any, what: str = "stimulus", names: tuple[str, str] = ("X", "Y")) -> np.ndarray:
    """Positions ``idx`` with ``have[idx] == want``: the one alignment rule of neuronscope.

    Both id lists must hold the same ids, each once; otherwise a one-line error names a few
    ids present on one side only (``names`` say which side is which).
    """
    have_l, want_l = np.asarray(have).tolist(), np.asarray(want).tolist()
    pos = {v: i for i, v in enumerate(have_l)}
    if len(pos) != len(have_l) or len(set(want_l)) != len(want_l):
        raise NeuronscopeError(
            f"{what} ids are duplicated; give a `repeat` coordinate so repeats are averaged, "
            "or drop the duplicates"
        )
    if set(pos) != set(want_l):
        miss = sorted(map(str, set(pos) ^ set(want_l)))[:3]
        raise NeuronscopeError(
            f"{names[0]} and {names[1]} have different {what} ids (e.g. {miss}); "
            "select the common stimuli first"
        )
    return np.array([pos[v] for v in want_l], dtype=np.int64)


def _one_per_id(da: xr.DataArray, by: str, name: str) -> xr.DataArray:
    if "repeat" in da.coords:
        return average_repeats(da, by)
    ids = np.asarray(da.coords[by].values)
    u, c = np.unique(ids, return_counts=True)
    if (c > 1).any():
        raise NeuronscopeError(
            f"{name} has duplicate {by} ids (e.g. {u[c > 1][0]!r}); give a `repeat` coordinate "
            "so repeats are averaged, or drop the duplicates"
        )
    return da


def _reindex(da: xr.DataArray, by: str, want: np.ndarray, names: tuple[str, str]) -> xr.DataArray:
    """``da`` with its rows in the order of the ids ``want`` (an xarray index on ``by``)."""
    have = np.asarray(da.coords[by].values)
    if len(have) == len(want) and np.array_equal(have, want):
        return da
    order_by_ids(have, want, by, names)  # same ids, each once: else a one-line error
    return da.set_xindex(by).sel({by: want}).drop_indexes(by)


def align(x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("X", "Y")) -> tuple[Any, Any]:
    """Align two populations by stimulus id before a comparison.

    When both are DataArrays sharing a ``stimulus`` (or ``item``) sample coordinate, repeats
    are averaged (only if a ``repeat`` coordinate marks them) and ``y`` is put in ``x``'s
    order through an xarray index on that coordinate; ids missing on either side or
    duplicated without a ``repeat`` coordinate are an error. Otherwise rows are taken as
    already paired and must have equal counts.
    """
    bx, by = id_coord(x), id_coord(y)
    if bx is not None and bx == by:
        x, y = _one_per_id(x, bx, names[0]), _one_per_id(y, bx, names[1])
        return x, _reindex(y, bx, np.asarray(x.coords[bx].values), names)
    if bx is not None and "repeat" in x.coords:
        x = average_repeats(x)
    if by is not None and "repeat" in y.coords:
        y = average_repeats(y)
    nx, ny = np.shape(x)[0], np.shape(y)[0]
    if nx != ny:
        raise NeuronscopeError(
            f"{names[0]} has {nx} samples and {names[1]} has {ny}; give the same stimuli "
            "(or DataArrays with a `stimulus` coordinate to align by id)"
        )
    return x, y


def align_all(pops: Sequence[Any]) -> list[Any]:
    """:func:`align` for many populations: repeats averaged, every DataArray sharing the first
    id-bearing population's id coordinate put in that population's stimulus order."""
    out = [average_repeats(p) if isinstance(p, xr.DataArray) and "repeat" in p.coords else p for p in pops]
    ref = next((p for p in out if id_coord(p) is not None), None)
    if ref is None:
        return out
    by = id_coord(ref)
    ids = np.asarray(ref.coords[by].values)
    return [_reindex(_one_per_id(p, by, f"population {i}"), by, ids, ("population 0", f"population {i}"))
            if id_coord(p) == by else p for i, p in enumerate(out)]


def paired(x: ArrayLike, y: ArrayLike, min_samples: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`align` then :func:`to_matrix` both: two finite (n, p), (n, q) float arrays."""
    x, y = align(x, y)
    return to_matrix(x, "X", min_samples), to_matrix(y, "Y", min_samples)
