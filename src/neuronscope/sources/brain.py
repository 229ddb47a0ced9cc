"""Brain data as populations: spike-sorted NWB files, response arrays and RDM files.

* :func:`nwb_population` — an NWB file's Units table (spike times) binned into trial or
  stimulus intervals (the trials table, or given intervals) and optional time bins. All
  spikes are read once as the flat ragged array and counted with one ``searchsorted``.
* :func:`load_responses` — response arrays (``.npy``, ``.npz``, HDF5, CSV): stimuli × units,
  optionally with repeats (e.g. fMRI voxel responses).
* :func:`load_rdms` — precomputed RDMs (square or condensed; ``.npy``, ``.npz``, MATLAB
  ``.mat``), one per subject or session.

A population is an ``xarray.DataArray`` with dims ``("sample", "neuron")``; brain
populations carry sample coords ``stimulus``, ``repeat`` (and ``time``) and neuron coords
``site`` and ``unit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.errors import NeuronscopeError
from neuronscope.rdms import RDMs

# --------------------------------------------------------------------------- response arrays


def responses_population(
    data: np.ndarray,
    stimulus: Sequence[Any] | None = None,
    repeat: Sequence[int] | None = None,
    site: str = "responses",
) -> xr.DataArray:
    """Build a brain population from a response array.

    ``data`` is (stimuli, units) — optionally with ``stimulus`` ids and ``repeat`` indices per
    row — or (stimuli, repeats, units), which is flattened stimulus-major with ``repeat``
    filled in. Neuron coords: ``site`` (one name) and ``unit`` (0..units-1).
    """
    a = np.asarray(data)
    if a.ndim == 3:
        ns, nr, nu = a.shape
        stim = np.arange(ns) if stimulus is None else np.asarray(stimulus)
        if len(stim) != ns:
            raise NeuronscopeError(f"{len(stim)} stimulus ids for {ns} stimuli; give one id per stimulus")
        a = a.reshape(ns * nr, nu)
        stimulus, repeat = np.repeat(stim, nr), np.tile(np.arange(nr), ns)
    if a.ndim != 2:
        raise NeuronscopeError(
            f"response array has shape {a.shape}; give (stimuli, units) or (stimuli, repeats, units)"
        )
    n = a.shape[0]
    stim = np.arange(n) if stimulus is None else np.asarray(stimulus)
    if len(stim) != n:
        raise NeuronscopeError(f"{len(stim)} stimulus ids for {n} rows; give one id per row")
    coords: dict[str, Any] = {
        "stimulus": ("sample", stim),
        "site": ("neuron", np.full(a.shape[1], site, dtype=object)),
        "unit": ("neuron", np.arange(a.shape[1], dtype=np.int64)),
    }
    if repeat is not None:
        rep = np.asarray(repeat, dtype=np.int64)
        if len(rep) != n:
            raise NeuronscopeError(f"{len(rep)} repeat indices for {n} rows; give one per row")
        coords["repeat"] = ("sample", rep)
    elif len(np.unique(stim)) < n:
        _, inv = np.unique(stim, return_inverse=True)
        rep = np.zeros(n, dtype=np.int64)
        seen: dict[int, int] = {}
        for i, g in enumerate(inv.tolist()):
            rep[i] = seen.get(g, 0)
            seen[g] = rep[i] + 1
        coords["repeat"] = ("sample", rep)
    dtype = np.float32 if a.dtype == np.float32 else np.float64
    return xr.DataArray(a.astype(dtype, copy=False), dims=("sample", "neuron"), coords=coords)


def _pick(arrays: dict[str, np.ndarray], key: str | None, prefer: Sequence[str], what: str) -> str:
    if key is not None:
        if key not in arrays:
            raise NeuronscopeError(f"no array {key!r} in the file (has {sorted(arrays)}); pick one of those")
        return key
    for k in prefer:
        if k in arrays:
            return k
    numeric = [k for k, v in arrays.items() if np.asarray(v).dtype.kind in "fiu" and np.ndim(v) >= 1
               and k not in ("stimulus", "repeat")]
    if not numeric:
        raise NeuronscopeError(f"no numeric {what} array in the file; pass key=<name>")
    return max(numeric, key=lambda k: np.size(arrays[k]))


def load_responses(path: str | Path, key: str | None = None, site: str | None = None) -> xr.DataArray:
    """Load a response file as a brain population (see :func:`responses_population`).

    * ``.npy``: (stimuli, units) or (stimuli, repeats, units).
    * ``.npz`` / ``.h5`` / ``.hdf5``: the array ``key`` (default ``responses``, ``data`` or the
      largest numeric array) plus optional ``stimulus`` and ``repeat`` arrays.
    * ``.csv``: a header row; a ``stimulus`` column, optional ``repeat``, all other columns units.
    """
    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"response file {p} does not exist; check the path")
    site = site or p.stem
    suf = p.suffix.lower()
    if suf == ".npy":
        return responses_population(np.load(p, allow_pickle=False), site=site)
    if suf in (".npz", ".h5", ".hdf5"):
        if suf == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            import h5py

            with h5py.File(p, "r") as f:
                arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        k = _pick(arrays, key, ("responses", "data"), "response")
        stim = arrays.get("stimulus")
        if stim is not None and stim.dtype.kind == "S":
            stim = stim.astype(str)
        return responses_population(arrays[k], stimulus=stim, repeat=arrays.get("repeat"), site=site)
    if suf == ".csv":
        import pandas as pd

        df = pd.read_csv(p)
        if "stimulus" not in df.columns:
            raise NeuronscopeError(f"{p} has no `stimulus` column; add one naming each row's stimulus")
        rep = df["repeat"].to_numpy() if "repeat" in df.columns else None
        units = df.drop(columns=[c for c in ("stimulus", "repeat") if c in df.columns])
        return responses_population(units.to_numpy(dtype=np.float64), df["stimulus"].to_numpy(), rep, site)
    raise NeuronscopeError(f"unknown response file type {suf!r}; use .npy, .npz, .h5/.hdf5 or .csv")


# --------------------------------------------------------------------------- RDM files


def load_rdms(path: str | Path, key: str | None = None) -> RDMs:
    """Load precomputed RDMs (one per subject / session) from ``.npy``, ``.npz`` or ``.mat``.

    Accepted layouts: a square (n, n) matrix, a stack (k, n, n), a condensed vector (m,) or a
    stack (k, m), with m = n(n-1)/2 (scipy ``squareform`` order). ``.npz`` / ``.mat`` files may
    hold ``stimulus`` ids next to the RDMs (array ``key``, default ``rdms``/``rdm`` or the largest
    numeric array). MATLAB files are read with ``scipy.io.loadmat`` (v5/v7; v7.3 is HDF5:
    re-save as .npz).
    """
    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"RDM file {p} does not exist; check the path")
    suf = p.suffix.lower()
    if suf == ".npy":
        arrays = {"rdms": np.load(p, allow_pickle=False)}
    elif suf == ".npz":
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    elif suf == ".mat":
        import scipy.io

        if scipy.io.matlab.matfile_version(p)[0] == 2:  # v7.3 is HDF5, which loadmat cannot read
            raise NeuronscopeError(f"{p} is a MATLAB v7.3 file; re-save it with -v7 or as .npz")
        m = scipy.io.loadmat(p)
        arrays = {k: np.asarray(v) for k, v in m.items() if not k.startswith("__")}
    else:
        raise NeuronscopeError(f"unknown RDM file type {suf!r}; use .npy, .npz or .mat")
    k = _pick(arrays, key, ("rdms", "rdm", "RDMs", "RDM"), "RDM")
    stim = arrays.get("stimulus")
    if stim is not None:
        stim = np.asarray(stim).ravel()
        if stim.dtype.kind in "SU" or stim.dtype == object:
            stim = np.array([str(np.asarray(s).ravel()[0]) if np.ndim(s) else str(s) for s in stim])
    return RDMs.from_array(np.asarray(arrays[k], dtype=np.float64), stimulus=stim, name=p.stem)


# --------------------------------------------------------------------------- NWB


def nwb_population(
    path: str | Path,
    intervals: np.ndarray | None = None,
    stimulus: Sequence[Any] | None = None,
    stimulus_column: str = "stimulus",
    bins: Sequence[float] | None = None,
    rate: bool = False,
) -> xr.DataArray:
    """Spike counts of an NWB file's Units table in trial intervals (and time bins).

    Intervals are ``intervals`` ((trials, 2) start/stop seconds) with ``stimulus`` ids, or the
    file's trials table (``start_time``, ``stop_time`` and the column ``stimulus_column``, or
    the trial index when that column is absent). ``bins`` are edges in seconds relative to
    each interval's start: each (trial, bin) is one sample with coord ``time`` (bin start);
    without ``bins`` a sample counts spikes in [start, stop). ``repeat`` numbers the
    occurrences of each stimulus. Neuron coords: ``site`` (the unit's electrode group name,
    else its ``location``, else ``"units"``) and ``unit`` (the Units table id). ``rate=True``
    divides counts by the bin length. Counts are exact: spike t counts in [a, b) iff a <= t < b.

    Vectorized: the flat ``spike_times`` array and its index are read once; spikes of unit u
    are shifted by ``u * span`` so that one ``searchsorted`` counts every unit × interval.
    """
    from pynwb import NWBHDF5IO

    p = Path(path)
    if not p.exists():
        raise NeuronscopeError(f"NWB file {p} does not exist; check the path")
    with NWBHDF5IO(str(p), "r") as io:
        nwb = io.read()
        if nwb.units is None or len(nwb.units) == 0:
            raise NeuronscopeError(f"{p} has no Units table; spike-sorted units are needed")
        units = nwb.units
        col = units["spike_times"]
        flat = np.asarray(col.target.data[:], dtype=np.float64)
        ends = np.asarray(units["spike_times_index"].data[:], dtype=np.int64)
        unit_ids = np.asarray(units.id.data[:], dtype=np.int64)
        names = set(units.colnames)
        if "electrode_group" in names:
            site = np.array([g.name for g in units["electrode_group"][:]], dtype=object)
        elif "location" in names:
            site = np.array([str(s) for s in units["location"][:]], dtype=object)
        else:
            site = np.full(len(unit_ids), "units", dtype=object)
        if intervals is None:
            if nwb.trials is None:
                raise NeuronscopeError(f"{p} has no trials table; pass intervals=(trials, 2) start/stop times")
            trials = nwb.trials
            iv = np.column_stack([trials["start_time"].data[:], trials["stop_time"].data[:]])
            if stimulus is None:
                stimulus = (np.asarray(trials[stimulus_column].data[:]) if stimulus_column in trials.colnames
                            else np.arange(len(iv)))
        else:
            iv = np.asarray(intervals, dtype=np.float64)
    if iv.ndim != 2 or iv.shape[1] != 2 or len(iv) == 0:
        raise NeuronscopeError("intervals must be a non-empty (trials, 2) array of start/stop seconds")
    if (iv[:, 1] < iv[:, 0]).any():
        raise NeuronscopeError("an interval ends before it starts; give start <= stop")
    stim = np.arange(len(iv)) if stimulus is None else np.asarray(stimulus)
    if stim.dtype.kind in "SO":
        stim = stim.astype(str)
    if len(stim) != len(iv):
        raise NeuronscopeError(f"{len(stim)} stimulus ids for {len(iv)} intervals; give one per interval")

    if bins is None:
        lo, hi = iv[:, :1], iv[:, 1:]
        t_rel = None
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
            raise NeuronscopeError("bins must be increasing edges (seconds from interval start)")
        lo = iv[:, :1] + edges[None, :-1]
        hi = iv[:, :1] + edges[None, 1:]
        t_rel = edges[:-1]
    lo, hi = lo.ravel(), hi.ravel()  # (samples,) in trial-major, bin-minor order

    n_units = len(unit_ids)
    starts = np.concatenate([[0], ends[:-1]])
    owner = np.repeat(np.arange(n_units), ends - starts)
    order = np.lexsort((flat, owner))  # sort spikes within each unit (NWB does not require it)
    flat, owner = flat[order], owner[order]
    tmin = min(flat.min() if len(flat) else 0.0, lo.min())
    span = max(flat.max() if len(flat) else 0.0, hi.max()) - tmin + 1.0
    shifted = (flat - tmin) + owner * span
    offs = (np.arange(n_units) * span)[None, :]
    a = np.searchsorted(shifted, (lo - tmin)[:, None] + offs, side="left")
    b = np.searchsorted(shifted, (hi - tmin)[:, None] + offs, side="left")
    counts = (b - a).astype(np.float64)
    if rate:
        counts /= (hi - lo)[:, None]

    n_bins = 1 if t_rel is None else len(t_rel)
    _, inv = np.unique(stim, return_inverse=True)
    rep_trial = np.zeros(len(stim), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inv.tolist()):
        rep_trial[i] = seen.get(g, 0)
        seen[g] = rep_trial[i] + 1
    coords: dict[str, Any] = {
        "stimulus": ("sample", np.repeat(stim, n_bins)),
        "repeat": ("sample", np.repeat(rep_trial, n_bins)),
        "trial": ("sample", np.repeat(np.arange(len(stim), dtype=np.int64), n_bins)),
        "site": ("neuron", site),
        "unit": ("neuron", unit_ids),
    }
    if t_rel is not None:
        coords["time"] = ("sample", np.tile(t_rel, len(stim)))
    return xr.DataArray(counts.astype(np.float32), dims=("sample", "neuron"), coords=coords)
