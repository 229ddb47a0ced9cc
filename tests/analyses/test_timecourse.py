"""Analyses over time of a binned recording: windows, RDMs, (t)RSA and connectomes per window
equal the static analyses run window by window by hand."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from neuronscope.analyses.rsa import compare_rdms, rdm, topological_rdms
from neuronscope.analyses.timecourse import (
    connectivity_timecourse,
    rdm_timecourse,
    rsa_timecourse,
    time_windows,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.rdms import RDMs


def _binned(n_stim: int = 6, reps: int = 3, bins: int = 5, units: int = 4, seed: int = 0) -> tuple[xr.DataArray, np.ndarray]:
    """A (trial × bin, unit) population in nwb_population's layout, trials shuffled."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_stim) for _ in range(reps)])
    cube = rng.poisson(3.0, size=(len(order), bins, units)).astype(np.float64)
    rep = np.zeros(len(order), dtype=int)
    for i, s in enumerate(order):
        rep[i] = int((order[:i] == s).sum())
    pop = xr.DataArray(
        cube.reshape(-1, units), dims=("sample", "neuron"),
        coords={"stimulus": ("sample", np.repeat(order, bins)), "repeat": ("sample", np.repeat(rep, bins)),
                "trial": ("sample", np.repeat(np.arange(len(order)), bins)),
                "time": ("sample", np.tile(np.arange(bins) * 0.1, len(order))),
                "site": ("neuron", np.array(["A", "A", "B", "B"], dtype=object)),
                "unit": ("neuron", np.arange(units))})
    return pop, cube


def test_windows_rdms_and_rsa_over_time_equal_the_static_analyses() -> None:
    pop, cube = _binned()
    wins = time_windows(pop, width=2, stride=2)
    assert list(wins) == pytest.approx([0.0, 0.2])
    np.testing.assert_array_equal(wins[0.2].values, cube[:, 2:4].sum(1))
    assert list(wins[0.0].trial.values) == list(range(len(cube)))
    assert "time" not in wins[0.0].coords and list(wins[0.0].site.values) == ["A", "A", "B", "B"]
    r = rdm_timecourse(pop, "euclidean")
    assert r.names == [f"t={t:g}" for t in np.arange(5) * 0.1] and list(r.stimulus) == list(range(6))
    stim = pop.stimulus.values[::5]
    for b in range(5):
        means = np.stack([cube[stim == s, b].mean(0) for s in range(6)])  # sorted stimulus order
        np.testing.assert_allclose(r.dissimilarities[b], rdm(means, "euclidean"), rtol=1e-12)
    rng = np.random.default_rng(1)
    model = rng.normal(size=(6, 8))
    df = rsa_timecourse(pop, model, compare="spearman", rdm_method="euclidean")
    want = [compare_rdms(r.dissimilarities[b], rdm(model, "euclidean"), "spearman") for b in range(5)]
    np.testing.assert_allclose(df["score"], want, rtol=1e-12)
    # topological RSA over time: both RDMs geo-topologically transformed per RDM first
    mr = RDMs(rdm(model, "euclidean")[None], stimulus=np.arange(6)[::-1])  # ids: aligned by id
    df = rsa_timecourse(pop, mr, compare="pearson", rdm_method="euclidean", transform="geotopological")
    m_sorted = mr.reorder(np.arange(6)).dissimilarities
    want = [compare_rdms(topological_rdms(r.dissimilarities[b], "geotopological", 0.1, 0.9),
                         topological_rdms(m_sorted[0], "geotopological", 0.1, 0.9), "pearson") for b in range(5)]
    np.testing.assert_allclose(df["score"], want, rtol=1e-12)


def test_connectivity_per_window() -> None:
    pop, cube = _binned()
    conn = connectivity_timecourse(pop)
    assert conn.dims == ("time", "neuron", "neuron_b") and conn.shape == (5, 4, 4)
    np.testing.assert_allclose(conn.values[3], np.corrcoef(cube[:, 3].T), atol=1e-12)
    assert list(conn.site_b.values) == ["A", "A", "B", "B"]


def test_bad_time_populations() -> None:
    pop, _ = _binned()
    with pytest.raises(NeuronscopeError, match="`time` sample coordinate"):
        time_windows(pop.drop_vars("time"))
    with pytest.raises(NeuronscopeError, match="each time bin exactly once"):
        time_windows(pop.isel(sample=slice(1, None)))
    with pytest.raises(NeuronscopeError, match="more than the 5 time bins"):
        time_windows(pop, width=6)
    with pytest.raises(NeuronscopeError, match="covers 5 stimuli and the recording 6"):
        rsa_timecourse(pop, np.random.default_rng(0).normal(size=(5, 3)))
