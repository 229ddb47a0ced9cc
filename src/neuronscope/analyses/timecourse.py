"""Analyses over time of a population with a ``time`` sample coordinate (brain recordings
binned per trial and time bin, e.g. :func:`~neuronscope.sources.brain.nwb_population` with
``bins=``; or any population whose samples carry ``time``).

* :func:`time_windows` — one population per time window (``width`` consecutive bins summed,
  windows every ``stride`` bins), samples = trials (coords ``stimulus``, ``repeat``,
  ``trial``) — what every static analysis (RDMs, CKA, …) takes.
* :func:`rdm_timecourse` — the RDM of each window (repeats averaged), as :class:`RDMs` named
  by the window's start time: the input of RSA or tRSA over time.
* :func:`rsa_timecourse` — RSA (or topological RSA, Lin & Kriegeskorte 2023, with
  ``transform``) of each window's RDM against a model RDM or population.
* :func:`connectivity_timecourse` — the functional connectome of each window: the Pearson
  correlation between neurons of their per-trial spike counts (the pairwise affinities a
  dynamic-connectome analysis, e.g. Dyballa et al., "Learning dynamic representations of the
  functional connectome in neurobiological networks", factorizes over time), as a
  (time, neuron, neuron_b) DataArray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neuronscope.analyses.rsa import (
    _to_rdms,
    compare_rdms,
    rdm,
    topological_rdms,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.population import average_repeats
from neuronscope.rdms import RDMs

__all__ = ["connectivity_timecourse", "rdm_timecourse", "rsa_timecourse", "time_windows"]


def time_windows(pop: xr.DataArray, width: int = 1, stride: int = 1) -> dict[float, xr.DataArray]:
    """``{window start time: population}`` of a population with a ``time`` sample coordinate.

    Window w sums the ``width`` consecutive time bins starting at bin ``w * stride`` (sorted
    by time), per trial: samples are the trials (the ``trial`` coordinate, else the distinct
    (``stimulus``, ``repeat``) pairs) in their order, with the other per-trial sample coords
    kept. Every trial must have every bin.
    """
    if not isinstance(pop, xr.DataArray) or "time" not in pop.coords:
        raise NeuronscopeError("time windows need a population with a `time` sample coordinate "
                               "(e.g. nwb_population(..., bins=edges))")
    if width < 1 or stride < 1:
        raise NeuronscopeError("width and stride are positive numbers of time bins")
    t = np.asarray(pop.coords["time"].values)
    times, ti = np.unique(t, return_inverse=True)
    if "trial" in pop.coords:
        key = np.asarray(pop.coords["trial"].values)
    elif "stimulus" in pop.coords and "repeat" in pop.coords:
        key = np.array([f"{s}\0{r}" for s, r in zip(pop.coords["stimulus"].values, pop.coords["repeat"].values,
                                                      strict=True)])
    else:
        raise NeuronscopeError("time windows need a `trial` (or `stimulus` and `repeat`) sample coordinate")
    trials, first, ri = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)  # trials in order of appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    row = rank[ri.reshape(-1)]
    nt, nb = len(trials), len(times)
    if len(t) != nt * nb or len(set(zip(row.tolist(), ti.reshape(-1).tolist(), strict=True))) != len(t):
        raise NeuronscopeError("every trial needs each time bin exactly once; select complete trials first")
    if width > nb:
        raise NeuronscopeError(f"width {width} is more than the {nb} time bins")
    vals = np.asarray(pop.values, dtype=np.float64)
    cube = np.zeros((nt, nb, vals.shape[1]))
    cube[row, ti.reshape(-1)] = vals
    firsts = np.flatnonzero(ti.reshape(-1) == 0)
    first_rows = firsts[np.argsort(row[firsts])]
    coords: dict[str, Any] = {k: ("sample", np.asarray(v.values)[first_rows]) for k, v in pop.coords.items()
                              if v.dims == ("sample",) and k != "time"}
    coords.update({k: v for k, v in pop.coords.items() if v.dims == ("neuron",)})
    out: dict[float, xr.DataArray] = {}
    for start in range(0, nb - width + 1, stride):
        out[float(times[start])] = xr.DataArray(cube[:, start : start + width].sum(1), dims=("sample", "neuron"),
                                                coords=coords, name=pop.name)
    return out


def rdm_timecourse(pop: xr.DataArray, rdm_method: str = "correlation", width: int = 1, stride: int = 1) -> RDMs:
    """The RDM (:func:`~neuronscope.analyses.rsa.rdm`, repeats of a stimulus averaged) of each
    time window of :func:`time_windows`, one row per window named ``t=<start>``, over the
    stimuli in sorted id order (their ids kept). A window in which a stimulus has a constant response pattern (e.g. no
    spikes) has an undefined correlation distance: use ``rdm_method="euclidean"`` then."""
    wins = time_windows(pop, width, stride)
    rows, stim = [], None
    for _t, w in wins.items():
        a = average_repeats(w) if "repeat" in w.coords else w
        if "stimulus" in a.coords:  # stimuli in sorted id order (row i of a model RDM = id i)
            order = np.argsort(np.asarray(a.coords["stimulus"].values), kind="stable")
            a = a.isel(sample=order)
            stim = np.asarray(a.coords["stimulus"].values)
        rows.append(rdm(a, rdm_method))
    return RDMs(np.stack(rows), stimulus=stim, names=[f"t={t:g}" for t in wins], measure=rdm_method)


def rsa_timecourse(pop: xr.DataArray, model: Any, compare: str = "spearman", rdm_method: str = "correlation",
                   width: int = 1, stride: int = 1, transform: str | None = None, low: float = 0.1,
                   up: float = 0.9) -> pd.DataFrame:
    """RSA of each time window against ``model`` (an RDM, :class:`RDMs` of one model, or a
    population over the same stimuli): columns ``time`` (window start) and ``score``. A model
    with stimulus ids is aligned by id; one without is taken in sorted stimulus-id order.
    ``transform`` (``"geotopological"`` with quantiles ``low``/``up``, or ``"geodesic"``)
    makes it topological RSA over time (both RDMs transformed per RDM before comparing)."""
    brain = rdm_timecourse(pop, rdm_method, width, stride)
    m = _to_rdms(model, rdm_method) if not isinstance(model, RDMs) else model
    if len(m) != 1:
        raise NeuronscopeError(f"give one model RDM, not {len(m)}; loop over models")
    if m.stimulus is not None and brain.stimulus is not None:
        m = m.reorder(brain.stimulus)
    if m.n_stimuli != brain.n_stimuli:
        raise NeuronscopeError(f"the model covers {m.n_stimuli} stimuli and the recording {brain.n_stimuli}; "
                               "give the same stimuli")
    bv, mv = brain.dissimilarities, m.dissimilarities
    if transform is not None:
        bv, mv = topological_rdms(bv, transform, low, up), topological_rdms(mv, transform, low, up)
    scores = np.asarray(compare_rdms(RDMs(bv), RDMs(mv), compare), dtype=np.float64).reshape(-1)
    times = [float(n[2:]) for n in brain.names]
    return pd.DataFrame({"time": times, "score": scores})


def connectivity_timecourse(pop: xr.DataArray, width: int = 1, stride: int = 1) -> xr.DataArray:
    """Per time window, the Pearson correlation between neurons of their spike counts across
    trials — dims (``time``, ``neuron``, ``neuron_b``); NaN for a neuron that does not vary
    within the window."""
    wins = time_windows(pop, width, stride)
    mats = []
    for w in wins.values():
        x = np.asarray(w.values, dtype=np.float64)
        x = x - x.mean(0)
        sd = np.sqrt((x * x).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (x.T @ x) / np.outer(sd, sd)
        r[sd == 0, :] = np.nan
        r[:, sd == 0] = np.nan
        mats.append(np.clip(r, -1.0, 1.0))
    n = pop.sizes["neuron"]
    coords: dict[str, Any] = {"time": np.array(list(wins), dtype=np.float64)}
    for k in ("site", "unit"):
        if k in pop.coords:
            coords[k] = ("neuron", np.asarray(pop.coords[k].values))
            coords[f"{k}_b"] = ("neuron_b", np.asarray(pop.coords[k].values))
    return xr.DataArray(np.stack(mats) if mats else np.zeros((0, n, n)), dims=("time", "neuron", "neuron_b"),
                        coords=coords)
