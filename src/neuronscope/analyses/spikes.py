"""Spike statistics of spiking networks and brain recordings, from a model pass, a run or a
population: firing rate, ISI coefficient of variation, Fano factor and synchrony per neuron
(:class:`~neuronscope.summaries.spikes.SpikeStats`, where the formulas are).

* :func:`spike_stats` — streamed from a run's stored activations (chunk by chunk) or from a
  population in memory (a DataArray with ``site`` coords, e.g. an NWB population).
* :class:`SpikeHook` — an ``on_batch`` hook that folds every recorded batch into
  ``SpikeStats`` per site; :func:`summarize_spikes` / :func:`record_spikes` run a model
  with it (in memory / into a run, stored as the run's ``extras/spikes``).
* :func:`spike_table` — one row per neuron: ``rate`` (spikes per bin; ``rate_hz`` with
  ``dt``), ``isi_cv``, ``fano``, ``mean_synchrony``, ``dead`` (never spiked).
* :func:`save_spike_stats` — store the statistics in a run (the atlas shows each site's
  synchrony matrix as a heatmap).

The sequence within which ISIs are measured and whose spike counts give the Fano factor is
the first sample coordinate of ``item`` (an image's time steps), ``trial`` (a brain trial's
time bins), ``doc`` unless ``sequence`` is given; steps are the ``step`` coordinate, else
the sample order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.spikes import SpikeStats

__all__ = ["SPIKE_COLUMNS", "SpikeHook", "load_spike_stats", "record_spikes", "save_spike_stats",
           "spike_site_summary", "spike_stats", "spike_table", "summarize_spikes"]

#: Sample coordinates that delimit a sequence, in order of preference.
SEQUENCE_COORDS = ("item", "trial", "doc")
SPIKE_COLUMNS = ["site", "unit", "rate", "rate_hz", "spikes", "isi_n", "isi_cv", "trials", "fano",
                 "mean_synchrony", "dead"]
EXTRAS_NAME = "spikes"


def _sequence_of(names: Any, sequence: str | None) -> str | None:
    if sequence is not None:
        return sequence or None
    return next((c for c in SEQUENCE_COORDS if c in names), None)


class SpikeHook:
    """``on_batch(site, acts, samples)`` hook for ``record`` / ``summarize_model``: folds every
    batch of the chosen sites (a glob; default all) into a :class:`SpikeStats` per site,
    created at its first batch. ``stats`` holds them."""

    def __init__(self, sites: str | None = None, sequence: str | None = None, step: str | None = "step",
                 synchrony: bool = True) -> None:
        self.pattern = sites
        self.sequence = sequence
        self.step = step
        self.synchrony = synchrony
        self.stats: dict[str, SpikeStats] = {}
        self._skip: set[str] = set()

    def __call__(self, site: str, acts: np.ndarray, samples: Mapping[str, np.ndarray]) -> None:
        if site in self._skip:
            return
        if site not in self.stats:
            globs = [g.strip() for g in (self.pattern or "").split(",") if g.strip()]
            if globs and not any(site == g or fnmatch.fnmatchcase(site, g) for g in globs):
                self._skip.add(site)
                return
            self.stats[site] = SpikeStats(acts.shape[1], _sequence_of(samples, self.sequence),
                                          self.step if self.step in samples else None, self.synchrony)
        self.stats[site].update(acts, samples)


def summarize_spikes(model: Any, source: Any, sites: str, *, spike_sites: str | None = None,
                     sequence: str | None = None, synchrony: bool = True, progress: bool = False,
                     **kw: Any) -> dict[str, SpikeStats]:
    """Spike statistics of ``model``'s ``sites`` over ``source`` in memory (the
    ``summarize_model`` pass with a :class:`SpikeHook` on ``spike_sites``, default all)."""
    from neuronscope.recording import summarize_model

    hook = SpikeHook(spike_sites, sequence, synchrony=synchrony)
    summarize_model(model, source, sites, on_batch=hook, progress=progress, **kw)
    return hook.stats


def record_spikes(model: Any, source: Any, sites: str, out: Any, *, spike_sites: str | None = None,
                  sequence: str | None = None, synchrony: bool = True, **kw: Any) -> Any:
    """``record`` a (spiking) model into a run and store the spike statistics of
    ``spike_sites`` (default all recorded sites) in it (:func:`save_spike_stats`). A resumed
    recording only sees the batches after its last commit, so its statistics are recomputed
    from the stored activations when it kept them. Returns the run."""
    from neuronscope.recording import record

    hook = SpikeHook(spike_sites, sequence, synchrony=synchrony)
    run = record(model, source, sites, out, on_batch=hook, **kw)
    stats = hook.stats
    if run.n_samples and (not stats or next(iter(stats.values())).bins != run.n_samples):
        if not run.has_activations:
            raise NeuronscopeError("the recording resumed without stored activations; spike statistics cover "
                                   "only part of it — record again with overwrite=True")
        stats = spike_stats(run, spike_sites, sequence=sequence, synchrony=synchrony)
    save_spike_stats(run, stats)
    return run


def spike_stats(data: Any, sites: str | None = None, *, sequence: str | None = None, step: str | None = "step",
                synchrony: bool = True, chunk_rows: int = 65536) -> dict[str, SpikeStats]:
    """:class:`SpikeStats` per site of a run's stored activations (streamed ``chunk_rows``
    rows at a time) or of a population (a DataArray with a ``site`` coordinate, or a mapping
    name -> population). ``sequence`` and ``step`` name the sample coordinates (see the module
    docstring)."""
    if isinstance(data, Mapping):
        out: dict[str, SpikeStats] = {}
        for name, pop in data.items():
            out.update({(name if k == "_" else k): v for k, v in
                        spike_stats(_one_site(pop), None, sequence=sequence, step=step, synchrony=synchrony,
                                    chunk_rows=chunk_rows).items()})
        return out
    if isinstance(data, xr.DataArray):
        return _from_population(data, sites, sequence, step, synchrony, chunk_rows)
    if hasattr(data, "population") and hasattr(data, "sites"):
        if not data.has_activations:
            raise NeuronscopeError(f"run {data.path} kept no activations; record with record_spikes or keep activations")
        return _from_population(data.population(sites), None, sequence, step, synchrony, chunk_rows)
    raise NeuronscopeError("spike_stats takes a Run, a population (DataArray) or a mapping of populations")


def _one_site(pop: Any) -> xr.DataArray:
    if isinstance(pop, xr.DataArray):
        if "site" not in pop.coords:
            pop = pop.assign_coords(site=("neuron", np.full(pop.sizes["neuron"], "_", dtype=object)))
        return pop
    a = np.asarray(pop)
    return xr.DataArray(a, dims=("sample", "neuron"), coords={"site": ("neuron", np.full(a.shape[1], "_", dtype=object))})


def _from_population(pop: xr.DataArray, sites: str | None, sequence: str | None, step: str | None,
                     synchrony: bool, chunk_rows: int) -> dict[str, SpikeStats]:
    from neuronscope.population import select_sites

    if pop.dims != ("sample", "neuron"):
        raise NeuronscopeError(f"a population has dims (sample, neuron), not {pop.dims}")
    site = np.asarray(pop.coords["site"].values) if "site" in pop.coords else np.full(pop.sizes["neuron"], "_")
    names = select_sites(list(dict.fromkeys(site.tolist())), sites)
    coords = {k: np.asarray(v.values) for k, v in pop.coords.items() if v.dims == ("sample",)}
    if "sample" not in coords:
        coords["sample"] = np.arange(pop.sizes["sample"], dtype=np.int64)
    seq = _sequence_of(coords, sequence)
    for k in (seq, step):
        if k and k in coords and coords[k].dtype.kind not in "biuf":
            _, coords[k] = np.unique(coords[k], return_inverse=True)
    stats = {str(s): SpikeStats(int((site == s).sum()), seq, step if step in coords else None, synchrony)
             for s in names}
    cols = {str(s): np.flatnonzero(site == s) for s in names}
    n = pop.sizes["sample"]
    for r0 in range(0, n, chunk_rows):
        block = np.asarray(pop.isel(sample=slice(r0, r0 + chunk_rows)).values, dtype=np.float32)
        smp = {k: v[r0 : r0 + chunk_rows] for k, v in coords.items() if v.dtype.kind in "biuf"}
        for s, st in stats.items():
            st.update(np.ascontiguousarray(block[:, cols[s]]), smp)
    return stats


def spike_table(stats: Any, dt: float | None = None) -> pd.DataFrame:
    """One row per neuron of ``stats`` ({site: SpikeStats}, or a run holding
    ``extras/spikes``): ``rate`` (spikes per bin) and ``rate_hz`` (``rate / dt`` for a bin of
    ``dt`` seconds, else NaN), ``spikes``, ``isi_n``, ``isi_cv``, ``trials`` (sequences),
    ``fano``, ``mean_synchrony`` and ``dead`` (no spike at all)."""
    results = load_spike_stats(stats) if hasattr(stats, "extras") else {s: v.result() for s, v in stats.items()}
    rows = []
    for site, r in results.items():
        rate = np.asarray(r["rate"], dtype=np.float64)
        n = len(rate)
        rows.append(pd.DataFrame({
            "site": site, "unit": np.arange(n), "rate": rate,
            "rate_hz": rate / dt if dt else np.full(n, np.nan),
            "spikes": np.asarray(r["count"], dtype=np.float64), "isi_n": np.asarray(r["isi_n"], dtype=np.int64),
            "isi_cv": r["isi_cv"], "trials": int(np.asarray(r["trials"])), "fano": r["fano"],
            "mean_synchrony": r.get("mean_synchrony", np.full(n, np.nan)),
            "dead": np.asarray(r["count"]) == 0,
        }, columns=SPIKE_COLUMNS))
    if not rows:
        return pd.DataFrame(columns=SPIKE_COLUMNS)
    return pd.concat(rows, ignore_index=True)


def spike_site_summary(stats: Any, dt: float | None = None) -> pd.DataFrame:
    """One row per site of :func:`spike_table`: ``units``, ``dead`` (neurons that never
    spiked), ``mean_rate``, ``median_isi_cv``, ``median_fano`` and ``mean_synchrony`` (over the
    neurons where each is defined; NaN when none is)."""
    t = spike_table(stats, dt)
    rows = []
    for site, g in t.groupby("site", sort=False):
        def med(c: str, g: pd.DataFrame = g) -> float:
            v = g[c].to_numpy(dtype=np.float64)
            return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")

        sync = g["mean_synchrony"].to_numpy(dtype=np.float64)
        rows.append({"site": site, "units": len(g), "dead": int(g["dead"].sum()),
                     "mean_rate": float(g["rate"].mean()), "median_isi_cv": med("isi_cv"),
                     "median_fano": med("fano"),
                     "mean_synchrony": float(np.mean(sync[np.isfinite(sync)])) if np.isfinite(sync).any()
                     else float("nan")})
    return pd.DataFrame(rows, columns=["site", "units", "dead", "mean_rate", "median_isi_cv", "median_fano",
                                       "mean_synchrony"])


_STORED = ("rate", "count", "isi_n", "isi_cv", "fano", "mean_synchrony", "synchrony")


def save_spike_stats(run: Any, stats: Mapping[str, SpikeStats], name: str = EXTRAS_NAME) -> str:
    """Store the results of ``stats`` in ``run`` as ``extras/<name>``: per site the arrays
    ``<site>.rate``, ``.count``, ``.isi_n``, ``.isi_cv``, ``.fano``, ``.mean_synchrony`` and
    ``.synchrony`` (a heatmap in the atlas), plus ``trials`` per site in the attrs."""
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    arrays: dict[str, np.ndarray] = {}
    heatmaps: dict[str, Any] = {}
    trials: dict[str, int] = {}
    for site, st in stats.items():
        r = st.result()
        trials[site] = int(r["trials"])
        for k in _STORED:
            if k in r:
                arrays[f"{site}.{k}"] = np.nan_to_num(np.asarray(r[k], dtype=np.float64), nan=np.nan)
        if "synchrony" in r:
            heatmaps[f"{site}.synchrony"] = {"title": f"{site}: spike-train correlation (synchrony)",
                                            "vmin": -1.0, "vmax": 1.0}
    run.write_extras(name, arrays, {"title": "spike statistics", "trials": trials, "heatmaps": heatmaps,
                                    "sites": list(stats)})
    return name


def load_spike_stats(run: Any, name: str = EXTRAS_NAME) -> dict[str, dict[str, np.ndarray]]:
    """The per-site results :func:`save_spike_stats` stored in ``run`` ({site: {key: array}})."""
    extra = run.extras(name)
    if extra is None:
        raise NeuronscopeError(f"run {run.path} holds no spike statistics; record with record_spikes "
                               "or call save_spike_stats(run, spike_stats(run))")
    arrays, attrs = extra["arrays"], extra["attrs"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for site in attrs.get("sites", []):
        r = {k: arrays[f"{site}.{k}"] for k in _STORED if f"{site}.{k}" in arrays}
        r["trials"] = np.int64(attrs.get("trials", {}).get(site, 0))
        out[site] = r
    return out
