"""compare_all over populations that live in a run: factors and pairs streamed from the store in
row blocks equal the in-memory computation, never read a population whole, read every block
once per pass, and say what they do (progress) — issue 11, item 6."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

import neuronscope as ns
from neuronscope.analyses import _stream
from neuronscope.analyses.compare import compare, compare_all, linear_cka
from neuronscope.errors import NeuronscopeError


class Net(torch.nn.Module):
    """Four sites of different widths; activations with large, different means (so a careless
    float32 centring would show) and a rank-deficient site (CCA/shape must handle it)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(6, 24)
        self.b = torch.nn.Linear(24, 40)
        self.c = torch.nn.Linear(40, 9)
        self.d = torch.nn.Linear(3, 12)  # fed by 3 of c's units: rank 3 of 12
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        a = torch.tanh(self.a(x)) + 5.0
        b = torch.relu(self.b(a)) - 3.0
        c = self.c(b)
        return self.d(c[:, :3])


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[ns.Run, ns.Run, np.ndarray]:
    """The same activations stored as float32 and as float16, in chunks of 64 rows."""
    x = np.random.default_rng(0).normal(size=(700, 6)).astype(np.float32)
    tmp = tmp_path_factory.mktemp("stream")
    runs = [ns.record(Net(), ns.TensorSource(x, batch_size=100), "a,b,c,d", out=tmp / f"{dt}.zarr",
                      keep="activations", dtype=dt, chunk_rows=64, progress=False)
            for dt in ("float32", "float16")]
    return runs[0], runs[1], x


def lazy(run: ns.Run) -> dict[str, xr.DataArray]:
    return {s: run.population(s) for s in run.sites}


def loaded(run: ns.Run, dtype=np.float32) -> dict[str, np.ndarray]:
    return {s: run.population(s).values.astype(dtype) for s in run.sites}


@pytest.mark.parametrize("metric, options, tol", [
    ("cka", {}, 1e-6),
    ("cca", {}, 1e-8),
    ("svcca", {"keep": 0.9}, 1e-8),
    ("pwcca", {}, 1e-8),
    ("procrustes", {"alpha": 0.5, "normalize": True}, 1e-7),
    ("shape", {}, 1e-7),
])
def test_streamed_matrix_equals_in_memory(stored, metric, options, tol) -> None:
    f32, _, _ = stored
    pops = lazy(f32)
    assert all(_stream.is_lazy(p) for p in pops.values())
    streamed = compare_all(pops, metric, progress=False, **options)
    in_memory = compare_all(loaded(f32, np.float64), metric, **options)
    assert streamed.dims == ("a", "b") and list(streamed.a.values) == list(f32.sites)
    np.testing.assert_allclose(streamed.values, in_memory.values, atol=tol, rtol=0)
    if metric == "cka":  # and each entry is linear_cka of the two stored populations
        vals = loaded(f32, np.float64)
        assert streamed.values[0, 2] == pytest.approx(linear_cka(vals["a"], vals["c"]), abs=1e-6)


def test_float16_store_equals_its_values_in_float32(stored) -> None:
    _, f16, _ = stored
    streamed = compare_all(lazy(f16), "cka", progress=False)
    np.testing.assert_allclose(streamed.values, compare_all(loaded(f16, np.float64), "cka").values, atol=1e-6)


def test_rectangular_dedup_and_many_passes(stored) -> None:
    """Rows and columns from two separate opens of the same run are the same populations
    (read once); a small memory bound splits the pairs into several passes, same values."""
    f32, _, _ = stored
    rows = {s: f32.population(s) for s in ("a", "b", "d")}
    cols = {s: ns.open_run(f32.path).population(s) for s in ("b", "c")}
    ref = compare_all({k: v.values.astype(np.float64) for k, v in rows.items()}, "cka",
                      others={k: v.values.astype(np.float64) for k, v in cols.items()})
    one = compare_all(rows, "cka", others=cols, progress=False)
    np.testing.assert_allclose(one.values, ref.values, atol=1e-6)
    assert one.values[1, 0] == pytest.approx(1.0, abs=1e-9)  # b vs b: the same population
    widths = [24, 40, 12, 9]
    tiny = 8 * 40 * 40 * 2  # room for about two pairs' accumulators
    passes = _stream.plan_passes(widths, [(0, 1), (0, 3), (1, 1), (1, 3), (2, 1), (2, 3)], tiny * 3 // 4)
    assert len(passes) > 1
    many = compare_all(rows, "cka", others=cols, progress=False, max_bytes=tiny)
    np.testing.assert_allclose(many.values, ref.values, atol=1e-6)


def test_plan_passes_puts_each_factor_no_later_than_its_pairs() -> None:
    widths = [30, 10, 50, 20, 40]
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    for budget in (1, 8 * 50 * 50, 8 * 120 * 120, 10**9):
        passes = _stream.plan_passes(widths, pairs, budget)
        done: set[int] = set()
        covered = set()
        for plan in passes:
            diag = {i for i, j in plan if i == j}
            assert not diag & done  # each factor once
            done |= diag
            for i, j in plan:
                assert i <= j and i in done and j in done
                covered.add((i, j))
            if len(plan) > 1:  # only a single matrix may exceed the budget
                assert sum(8 * widths[i] * widths[j] for i, j in plan) <= budget
        assert covered >= {(min(a, b), max(a, b)) for a, b in pairs} and done == set(range(5))
    assert len(_stream.plan_passes(widths, pairs, 10**9)) == 1


def test_blocks_are_read_once_and_never_a_whole_population(stored, monkeypatch) -> None:
    f32, _, _ = stored
    reads: list[tuple[int, int, tuple[int, ...]]] = []
    real = _stream._Reader.__call__

    def spy(self, r0, r1):
        reads.append((r0, r1, tuple(self.members)))
        return real(self, r0, r1)

    monkeypatch.setattr(_stream._Reader, "__call__", spy)
    pops = lazy(f32)
    n = f32.n_rows
    compare_all(pops, "cka", progress=False, max_bytes=12 * 85 * 64 * 4 + 8 * 85 * 85 * 4)
    spans = [(r0, r1) for r0, r1, _ in reads]
    assert all(r1 - r0 < n for r0, r1 in spans)  # never a whole population at once
    assert all(r0 % 64 == 0 for r0, _ in spans)  # chunk-aligned blocks
    assert len(spans) == len(set(spans)) and sorted(spans)[-1][1] == n  # one pass, each block once
    assert all(set(m) == {0, 1, 2, 3} for _, _, m in reads)


def test_mixed_lazy_and_in_memory_and_the_single_pair_api(stored) -> None:
    f32, _, x = stored
    brain = xr.DataArray(np.tanh(x @ np.random.default_rng(1).normal(size=(6, 5))), dims=("sample", "neuron"))
    pops = lazy(f32)
    mat = compare_all(pops, "cka", others={"brain": brain}, progress=False)
    vals = loaded(f32, np.float64)
    for i, s in enumerate(pops):
        assert mat.values[i, 0] == pytest.approx(linear_cka(vals[s], brain.values), abs=1e-6)
    assert compare(pops["a"], pops["b"], progress=False) == pytest.approx(linear_cka(vals["a"], vals["b"]), abs=1e-6)


def test_errors_come_before_any_read(stored, monkeypatch) -> None:
    f32, _, _ = stored
    called = []
    monkeypatch.setattr(_stream._Reader, "__call__", lambda self, r0, r1: called.append(1))
    short = f32.population("a").isel(sample=slice(0, 300))
    with pytest.raises(NeuronscopeError, match="different item ids"):  # aligned by item id
        compare_all({"a": f32.population("a")}, "cka", others={"short": short}, progress=False)
    with pytest.raises(NeuronscopeError, match="a has 700 samples and short has 300"):  # no ids
        compare_all({"a": f32.population("a").drop_vars("item")}, "cka",
                    others={"short": short.drop_vars("item")}, progress=False)
    assert not called


def test_non_finite_values_are_named() -> None:
    x = np.random.default_rng(0).normal(size=(300, 4))
    x[250, 2] = np.nan
    bad = xr.DataArray(da.from_array(x, chunks=(64, 4)), dims=("sample", "neuron"))
    good = xr.DataArray(da.from_array(np.random.default_rng(1).normal(size=(300, 3)), chunks=(64, 3)),
                        dims=("sample", "neuron"))
    with pytest.raises(NeuronscopeError, match="bad contains NaN or Inf"):
        compare_all({"good": good, "bad": bad}, "cka", progress=False)


def test_progress_reports_counts_and_stays_off_stdout(stored, capsys) -> None:
    f32, _, _ = stored
    seen: list[tuple[int, int, str]] = []
    compare_all(lazy(f32), "cka", progress=lambda done, total, detail: seen.append((done, total, detail)))
    assert seen and seen[-1][0] == seen[-1][1] == len(seen)
    assert [d for d, _, _ in seen] == list(range(1, len(seen) + 1))
    compare_all(lazy(f32), "cka", progress=True)
    assert capsys.readouterr().out == ""  # the bar is on stderr only
    compare_all(lazy(f32), "cka", progress=False)
    assert capsys.readouterr().err == ""
