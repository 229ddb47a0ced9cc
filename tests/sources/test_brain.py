"""Brain populations: NWB spike counts (file written here with pynwb), response and RDM
files, alignment by stimulus id and bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    pop = nwb_population(path, site="group")
    expect = np.array([[np.sum((st >= a) & (st < b)) for st in spikes] for a, b, _ in trials])
    np.testing.assert_array_equal(pop.values, expect)
    assert list(pop.stimulus.values) == [t[2] for t in trials]
    assert list(pop.repeat.values) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(pop.site.values) == ["shank0", "shank0", "shank1", "shank1"]
    # without an electrodes table the area is the electrode group's location
    assert list(nwb_population(path).site.values) == ["SHANK0", "SHANK0", "SHANK1", "SHANK1"]
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


def _write_dandi_like(path: Path, spikes: list[np.ndarray], areas: list[str],
                      presentations: list[tuple[float, float, int]]) -> None:
    """A DANDI-style file: an electrodes table with brain areas (location), units pointing at
    their electrode, stimulus presentations in an intervals table and an epochs table."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals

    nwb = NWBFile(session_description="dandi-like", identifier="neuronscope-dandi",
                  session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    dev = nwb.create_device(name="neuropixels")
    group = nwb.create_electrode_group(name="probeA", description="one probe", location="several", device=dev)
    for area in areas:
        nwb.add_electrode(group=group, location=area)
    for i, st in enumerate(spikes):
        nwb.add_unit(spike_times=st, electrodes=[i], electrode_group=group)
    pres = TimeIntervals(name="flashes_presentations", description="image flashes")
    pres.add_column(name="image", description="image id")
    for a, b, img in presentations:
        pres.add_row(start_time=a, stop_time=b, image=img)
    nwb.add_time_intervals(pres)
    nwb.add_epoch(start_time=0.0, stop_time=10.0, tags=["block1"])
    nwb.add_epoch(start_time=10.0, stop_time=20.0, tags=["block2"])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def test_nwb_areas_as_sites_time_bins_and_interval_tables(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    spikes = [np.sort(rng.uniform(0, 20, size=k)) for k in (200, 90, 0, 310, 55)]
    spikes[1] = np.append(spikes[1], [3.0, 3.25, 3.5])  # spikes exactly on bin edges
    areas = ["VISp", "VISp", "CA1", "CA1", "LGd"]
    pres = [(1.0 * i + 0.5 * (i % 2), 1.0 * i + 0.5 * (i % 2) + 0.75, i % 4) for i in range(16)]
    path = tmp_path / "dandi.nwb"
    _write_dandi_like(path, spikes, areas, pres)
    edges = np.array([0.0, 0.25, 0.5, 0.75])
    pop = nwb_population(path, table="flashes_presentations", stimulus_column="image", bins=edges)
    assert pop.dims == ("sample", "neuron") and pop.shape == (16 * 3, 5)
    assert list(pop.site.values) == areas  # brain areas from the electrodes table
    for i, (a, _, img) in enumerate(pres):
        for k in range(3):
            row = pop.values[i * 3 + k]
            lo, hi = a + edges[k], a + edges[k + 1]
            np.testing.assert_array_equal(row, [np.sum((st >= lo) & (st < hi)) for st in spikes])
            assert pop.stimulus.values[i * 3 + k] == img and pop.trial.values[i * 3 + k] == i
    np.testing.assert_array_equal(pop.time.values, np.tile(edges[:-1], 16))
    np.testing.assert_array_equal(pop.repeat.values[::3], [i // 4 for i in range(16)])
    whole = nwb_population(path, table="flashes_presentations", stimulus_column="image", bins=edges,
                           keep_time=False)
    assert "time" not in whole.coords and whole.shape == (16, 5)
    np.testing.assert_array_equal(whole.values, pop.values.reshape(16, 3, 5).sum(1))
    epochs = nwb_population(path, table="epochs")
    np.testing.assert_array_equal(epochs.values, [[np.sum((st >= a) & (st < b)) for st in spikes]
                                                  for a, b in ((0, 10), (10, 20))])
    assert list(nwb_population(path, table="epochs", site="group").site.values) == ["probeA"] * 5
    with pytest.raises(NeuronscopeError, match="no 'trials' intervals table .*flashes_presentations"):
        nwb_population(path)
    with pytest.raises(NeuronscopeError, match="neither 'area', 'group' nor a Units column"):
        nwb_population(path, table="epochs", site="region")


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


# --------------------------------------------------------------------------- RDM files as people have them


def _struct(rdms: list[list[np.ndarray]], names: list[list[str]]) -> np.ndarray:
    """An RSA-toolbox struct array (rows × columns) with fields RDM, name, color."""
    rec = np.empty((len(rdms), len(rdms[0])), dtype=[("RDM", object), ("name", object), ("color", object)])
    for i, row in enumerate(rdms):
        for j, sq in enumerate(row):
            rec[i, j]["RDM"] = sq
            rec[i, j]["name"] = names[i][j]
            rec[i, j]["color"] = np.array([[0.0, 0.5, 1.0]])
    return rec


def _square_rdms(k: int, n: int = 7, seed: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [squareform(rdm(rng.normal(size=(n, 12)))) for _ in range(k)]


def test_matlab_rsa_toolbox_struct_arrays(tmp_path: Path) -> None:
    """The 92-image demo layout: brain RDMs a 4 subjects × 2 sessions struct array, model RDMs
    a 1 × 3 struct array; values, names and session averaging exact."""
    sq = _square_rdms(8)
    brain = [[sq[2 * s], sq[2 * s + 1]] for s in range(4)]
    bnames = [[f"subject{s + 1} session{t + 1}" for t in range(2)] for s in range(4)]
    scipy.io.savemat(tmp_path / "brainRDMs.mat", {"RDMs": _struct(brain, bnames)})
    models = _square_rdms(3, seed=21)
    scipy.io.savemat(tmp_path / "modelRDMs.mat", {"Models": _struct([models], [["V1 model", "HMAX", "animacy"]])})

    b = load_rdms(tmp_path / "brainRDMs.mat")
    assert b.names == [bnames[s][t] for s in range(4) for t in range(2)]
    np.testing.assert_array_equal(b.dissimilarities, np.stack([squareform(x) for x in sq]))
    avg = load_rdms(tmp_path / "brainRDMs.mat", average_sessions=True)
    assert avg.names == ["subject1", "subject2", "subject3", "subject4"]
    np.testing.assert_allclose(avg.dissimilarities,
                               [(squareform(sq[2 * s]) + squareform(sq[2 * s + 1])) / 2 for s in range(4)],
                               rtol=0, atol=1e-15)
    m = load_rdms(tmp_path / "modelRDMs.mat")
    assert m.names == ["V1 model", "HMAX", "animacy"]
    np.testing.assert_array_equal(m.dissimilarities, np.stack([squareform(x) for x in models]))
    scipy.io.savemat(tmp_path / "plain.mat", {"rdms": np.stack(models)})
    with pytest.raises(NeuronscopeError, match="without a session axis"):
        load_rdms(tmp_path / "plain.mat", average_sessions=True)
    cells = np.empty((1, 2), dtype=object)  # a cell array of plain matrices
    cells[0, 0], cells[0, 1] = models[0], models[1]
    scipy.io.savemat(tmp_path / "cells.mat", {"c": cells})
    c = load_rdms(tmp_path / "cells.mat")
    assert c.names == ["c[0, 0]", "c[0, 1]"]
    np.testing.assert_array_equal(c.dissimilarities, np.stack([squareform(x) for x in models[:2]]))


def test_matlab_field_selection_nesting_and_condensed_fields(tmp_path: Path) -> None:
    sq = _square_rdms(4, seed=22)
    rec = np.empty((1, 2), dtype=[("RDM", object), ("RDM_crossnobis", object), ("name", object)])
    for j in range(2):
        rec[0, j]["RDM"] = sq[j]
        rec[0, j]["RDM_crossnobis"] = squareform(sq[j + 2])[None]  # a 1 × m row vector
        rec[0, j]["name"] = f"run{j}"
    cell = np.empty((2,), dtype=object)  # a cell array of two subjects' struct arrays
    cell[0], cell[1] = rec, rec
    scipy.io.savemat(tmp_path / "nested.mat", {"subjects": cell, "stimulus": np.array([f"im{i}" for i in range(7)])})
    r = load_rdms(tmp_path / "nested.mat", key="subjects", field="RDM_crossnobis")
    np.testing.assert_array_equal(r.dissimilarities, [squareform(sq[2]), squareform(sq[3])] * 2)
    assert r.names == ["run0", "run1", "run0", "run1"] and list(r.stimulus) == [f"im{i}" for i in range(7)]
    avg = load_rdms(tmp_path / "nested.mat", key="subjects", average_sessions=True)
    np.testing.assert_allclose(avg.dissimilarities[0], (squareform(sq[0]) + squareform(sq[1])) / 2, atol=1e-15)
    assert avg.names == ["subjects[0, 0, 0]", "subjects[0, 1, 0]"]  # MATLAB cells are 1 × 2
    with pytest.raises(NeuronscopeError, match="no 'RDMz'.*field="):
        load_rdms(tmp_path / "nested.mat", key="subjects", field="RDMz")


def _write_v73(path: Path, build: Any) -> None:
    """A MATLAB v7.3 MAT-file: HDF5 with a 512-byte user block holding MATLAB's header."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        build(f)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_matlab_v73_numeric_and_struct_arrays(tmp_path: Path) -> None:
    import h5py

    sq = _square_rdms(3, seed=23)
    stack = np.stack(sq, axis=-1)  # MATLAB n × n × k

    def numeric(f: h5py.File) -> None:
        ds = f.create_dataset("rdms", data=stack.T)  # HDF5 holds MATLAB arrays transposed
        ds.attrs["MATLAB_class"] = np.bytes_("double")

    _write_v73(tmp_path / "v73.mat", numeric)
    r = load_rdms(tmp_path / "v73.mat")
    np.testing.assert_array_equal(r.dissimilarities, np.stack([squareform(x) for x in sq]))

    def struct_array(f: h5py.File) -> None:  # Models(1, 3) with fields RDM and name
        refs = f.create_group("#refs#")
        g = f.create_group("Models")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        rdm_refs = np.empty((3, 1), dtype=h5py.ref_dtype)
        name_refs = np.empty((3, 1), dtype=h5py.ref_dtype)
        for j, nm in enumerate(["a", "bb", "ccc"]):
            d = refs.create_dataset(f"r{j}", data=sq[j].T)
            d.attrs["MATLAB_class"] = np.bytes_("double")
            c = refs.create_dataset(f"n{j}", data=np.array([[ord(ch)] for ch in nm], dtype=np.uint16))
            c.attrs["MATLAB_class"] = np.bytes_("char")
            rdm_refs[j, 0], name_refs[j, 0] = d.ref, c.ref
        g.create_dataset("RDM", data=rdm_refs)
        g.create_dataset("name", data=name_refs)

    _write_v73(tmp_path / "models73.mat", struct_array)
    m = load_rdms(tmp_path / "models73.mat")
    assert m.names == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(m.dissimilarities, np.stack([squareform(x) for x in sq]))


def test_rsatoolbox_hdf5_written_by_rsatoolbox(tmp_path: Path) -> None:
    tb = pytest.importorskip("rsatoolbox")
    sq = _square_rdms(3, seed=24)
    vec = np.stack([squareform(x) for x in sq])
    vec[1, 4] = np.nan
    ids = [f"img{i}" for i in range(7)]
    obj = tb.rdm.RDMs(vec, dissimilarity_measure="crossnobis", rdm_descriptors={"subject": ["s1", "s2", "s3"]},
                      pattern_descriptors={"stimulus": ids})
    obj.save(str(tmp_path / "tb.hdf5"), file_type="hdf5")
    r = load_rdms(tmp_path / "tb.hdf5")
    np.testing.assert_array_equal(r.dissimilarities, vec)
    assert r.names == ["s1", "s2", "s3"] and list(r.stimulus) == ids and r.measure == "crossnobis"


def test_plain_arrays_with_key_and_bad_rdm_files(tmp_path: Path) -> None:
    import h5py

    sq = _square_rdms(2, seed=25)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["other"] = np.arange(5.0)
        f["subj"] = np.stack(sq)
    np.testing.assert_array_equal(load_rdms(tmp_path / "plain.h5", key="subj").dissimilarities,
                                  np.stack([squareform(x) for x in sq]))
    np.savez(tmp_path / "cond.npz", rdm=squareform(sq[0]))
    assert load_rdms(tmp_path / "cond.npz").n_stimuli == 7
    bad = {
        "nonsquare": (np.zeros((2, 7, 8)), "not square"),
        "asym": (sq[0] + np.triu(np.full((7, 7), 0.1), 1), "not symmetric.*\\(D \\+ Dᵀ\\)/2"),
        "nandiag": (np.where(np.eye(7, dtype=bool), np.nan, sq[0]), "NaN on the diagonal"),
        "similarity": (1 - sq[0], "non-zero diagonal"),
        "inf": (np.where(np.eye(7, k=1, dtype=bool) | np.eye(7, k=-1, dtype=bool), np.inf, sq[0]), "Inf"),
    }
    for name, (arr, msg) in bad.items():
        scipy.io.savemat(tmp_path / f"{name}.mat", {"RDM": arr})
        with pytest.raises(NeuronscopeError, match=msg) as e:
            load_rdms(tmp_path / f"{name}.mat")
        assert "\n" not in str(e.value)
    scipy.io.savemat(tmp_path / "text.mat", {"label": "hello", "ids": np.array(["a", "b"])})
    with pytest.raises(NeuronscopeError, match="no numeric RDM array.*key="):
        load_rdms(tmp_path / "text.mat")
    rec = _struct([[np.array(["not", "numbers"])]], [["x"]])
    scipy.io.savemat(tmp_path / "strfield.mat", {"RDMs": rec})
    with pytest.raises(NeuronscopeError, match="not numeric.*field="):
        load_rdms(tmp_path / "strfield.mat")
    with pytest.raises(NeuronscopeError, match="no variable 'nope'"):
        load_rdms(tmp_path / "strfield.mat", key="nope")
