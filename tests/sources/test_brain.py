"""Brain populations: NWB spike counts (file written here with pynwb), response and RDM
files, alignment by stimulus id and bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import xarray as xr
from scipy.spatial.distance import squareform

from neuronscope.analyses.rsa import rdm, rsa
from neuronscope.errors import NeuronscopeError
from neuronscope.population import align, average_repeats, paired
from neuronscope.sources.brain import (
    load_rdms,
    load_responses,
    nwb_population,
    responses_population,
)


def _write_nwb(path: Path, spikes: list[np.ndarray], groups: list[str], trials: list[tuple[float, float, str]]) -> None:
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(session_description="test", identifier="neuronscope-test",
                  session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    dev = nwb.create_device(name="probe")
    made = {g: nwb.create_electrode_group(name=g, description=g, location=g.upper(), device=dev)
            for g in dict.fromkeys(groups)}
    for st, g in zip(spikes, groups, strict=True):
        nwb.add_unit(spike_times=st, electrode_group=made[g])
    nwb.add_trial_column(name="stimulus", description="image id")
    for a, b, s in trials:
        nwb.add_trial(start_time=a, stop_time=b, stimulus=s)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


@pytest.fixture(scope="module")
def nwb_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], list[tuple]]:
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0, 20, size=k)) for k in (150, 40, 0, 300)]
    spikes[1] = rng.permutation(np.append(spikes[1], [2.0, 2.5]))  # unsorted, spikes on edges
    trials = [(2.0 * i, 2.0 * i + 1.5, ["cat", "dog", "car"][i % 3]) for i in range(9)]
    path = tmp_path_factory.mktemp("nwb") / "session.nwb"
    _write_nwb(path, spikes, ["shank0", "shank0", "shank1", "shank1"], trials)
    return path, spikes, trials


def test_nwb_trial_counts_are_exact(nwb_file: tuple) -> None:
    path, spikes, trials = nwb_file
    pop = nwb_population(path)
    expect = np.array([[np.sum((st >= a) & (st < b)) for st in spikes] for a, b, _ in trials])
    np.testing.assert_array_equal(pop.values, expect)
    assert list(pop.stimulus.values) == [t[2] for t in trials]
    assert list(pop.repeat.values) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(pop.site.values) == ["shank0", "shank0", "shank1", "shank1"]
    assert list(pop.unit.values) == [0, 1, 2, 3]
    avg = average_repeats(pop)
    assert list(avg.stimulus.values) == ["cat", "dog", "car"]
    np.testing.assert_allclose(avg.values[0], expect[[0, 3, 6]].mean(0))


def test_nwb_time_bins_intervals_and_rates(nwb_file: tuple) -> None:
    path, spikes, trials = nwb_file
    edges = np.array([0.0, 0.5, 1.0, 1.5])
    pop = nwb_population(path, bins=edges)
    assert pop.shape == (len(trials) * 3, 4)
    for i, (a, _, _) in enumerate(trials):
        for k in range(3):
            lo, hi = a + edges[k], a + edges[k + 1]
            row = pop.values[i * 3 + k]
            np.testing.assert_array_equal(row, [np.sum((st >= lo) & (st < hi)) for st in spikes])
    np.testing.assert_allclose(pop.time.values[:3], edges[:-1])
    iv = np.array([[0.0, 10.0], [10.0, 20.0], [5.0, 5.5]])
    rates = nwb_population(path, intervals=iv, stimulus=["a", "b", "c"], rate=True)
    expect = np.array([[np.sum((st >= a) & (st < b)) / (b - a) for st in spikes] for a, b in iv])
    np.testing.assert_allclose(rates.values, expect, rtol=1e-6)
    with pytest.raises(NeuronscopeError, match="time bin"):
        average_repeats(pop)


def test_response_files_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(6, 3, 5))  # stimuli, repeats, voxels
    np.save(tmp_path / "v1.npy", data)
    pop = load_responses(tmp_path / "v1.npy")
    assert pop.shape == (18, 5) and list(pop.repeat.values[:4]) == [0, 1, 2, 0]
    assert pop.site.values[0] == "v1"
    flat = data.reshape(18, 5)
    stim = np.repeat(np.array([f"s{i}" for i in range(6)]), 3)
    np.savez(tmp_path / "it.npz", responses=flat, stimulus=stim)
    npz = load_responses(tmp_path / "it.npz")
    np.testing.assert_array_equal(npz.values, flat)
    assert list(npz.repeat.values[:3]) == [0, 1, 2]  # repeats inferred from duplicate ids
    import h5py

    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["responses"] = flat
        f["stimulus"] = stim.astype("S")
        f["repeat"] = np.tile(np.arange(3), 6)
    h5 = load_responses(tmp_path / "r.h5")
    assert list(h5.stimulus.values[:2]) == ["s0", "s0"]
    import pandas as pd

    df = pd.DataFrame(flat, columns=[f"vox{i}" for i in range(5)])
    df.insert(0, "stimulus", stim)
    df.to_csv(tmp_path / "r.csv", index=False)
    csv = load_responses(tmp_path / "r.csv")
    np.testing.assert_allclose(csv.values, flat)
    for other in (npz, h5, csv):
        np.testing.assert_allclose(average_repeats(other).values, data.mean(1))
    with pytest.raises(NeuronscopeError, match="unknown response file type"):
        (tmp_path / "r.txt").write_text("x")
        load_responses(tmp_path / "r.txt")


def test_rdm_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pops = [rng.normal(size=(7, 20)) for _ in range(3)]
    cond = np.stack([rdm(p) for p in pops])
    np.save(tmp_path / "square.npy", squareform(cond[0]))
    np.save(tmp_path / "stack.npy", np.stack([squareform(c) for c in cond]))
    np.save(tmp_path / "cond.npy", cond)
    ids = np.array([f"im{i}" for i in range(7)])
    np.savez(tmp_path / "subj.npz", rdms=cond, stimulus=ids)
    scipy.io.savemat(tmp_path / "subj.mat", {"RDMs": np.stack([squareform(c) for c in cond]),
                                             "stimulus": ids})
    assert len(load_rdms(tmp_path / "square.npy")) == 1
    for name in ("stack.npy", "cond.npy", "subj.npz", "subj.mat"):
        r = load_rdms(tmp_path / name)
        np.testing.assert_allclose(r.dissimilarities, cond, atol=1e-12)
    mat = load_rdms(tmp_path / "subj.mat")
    assert list(mat.stimulus) == list(ids)
    model = xr.DataArray(pops[0][::-1], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids[::-1])})
    expect = np.mean([rsa(pops[0], p) for p in pops])
    assert rsa(model, mat) == pytest.approx(expect, abs=1e-12)


def test_alignment_rules() -> None:
    rng = np.random.default_rng(3)
    x = responses_population(rng.normal(size=(5, 2, 3)), stimulus=list("abcde"))
    y = responses_population(rng.normal(size=(5, 4)), stimulus=list("edcba"))
    ax, ay = align(x, y)
    assert list(ax.stimulus.values) == list("abcde") and list(ay.stimulus.values) == list("abcde")
    np.testing.assert_allclose(ay.values, y.values[::-1])
    assert ax.shape == (5, 3)
    z = responses_population(rng.normal(size=(5, 4)), stimulus=list("abcdf"))
    with pytest.raises(NeuronscopeError, match="different stimulus ids"):
        align(x, z)
    dup = xr.DataArray(rng.normal(size=(5, 2)), dims=("sample", "neuron"),
                       coords={"stimulus": ("sample", list("aabcd"))})
    with pytest.raises(NeuronscopeError, match="duplicate"):
        align(dup, y)
    with pytest.raises(NeuronscopeError, match="at least 3"):
        paired(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(NeuronscopeError, match="NaN"):
        paired(np.array([[1.0], [np.nan], [2.0]]), np.ones((3, 1)))
