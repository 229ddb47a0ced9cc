"""The fused summary kernel (``SiteSummaries.update``) against the numpy reference
(``SiteSummaries.update_numpy``) and against brute-force numpy over the whole stream:
exact counts, histograms and top-k sets; moments to float rounding; ±Inf as the numpy
parts treat them; NaN rejected before any part changes; merge order; compact states."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import tree_merge
from neuronscope.summaries.firing import Firing
from neuronscope.summaries.groups import GroupFiring
from neuronscope.summaries.histogram import Histogram
from neuronscope.summaries.kernels import INT32_MAX
from neuronscope.summaries.site import SiteSummaries, SummaryConfig
from neuronscope.summaries.topk import TopK

LABELS = {"lang": ["a", "b", "c"]}
# ±Inf make inf - inf in the variance updates (NaN variance, as in the numpy parts)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _stream(rng: np.random.Generator, units: int, sizes: list[int], inf_rate: float = 0.0, doc_len: int = 7,
            shuffle_ids: bool = False):
    """Batches of values on a coarse grid (many ties), documents of ``doc_len`` rows; with
    ``shuffle_ids`` the global sample ids are a random permutation (not increasing within
    or across batches, so ties are broken against kept examples with larger ids too)."""
    out, start = [], 0
    ids = rng.permutation(sum(sizes)) if shuffle_ids else np.arange(sum(sizes))
    for n in sizes:
        a = (rng.integers(-4, 5, (n, units)) * 0.5).astype(np.float32)
        if inf_rate:
            bad = rng.random((n, units)) < inf_rate
            a[bad] = np.where(rng.random(int(bad.sum())) < 0.5, np.inf, -np.inf)
        s = np.arange(start, start + n, dtype=np.int64)
        samples = {
            "sample": ids[start : start + n].astype(np.int64), "doc": s // doc_len, "pos": s % doc_len,
            "token_id": rng.integers(0, 9, n), "lang": rng.integers(-1, 4, n),
        }
        out.append((a, samples))
        start += n
    return out


def _cfg(k: int = 3, window: int = 2, stride: int = 1, slots: int = 16) -> SummaryConfig:
    return SummaryConfig(thresholds=(0.0, 0.5, 1.5), k=k, window=window, n_bins=6,
                         hist_range=(-1.5, 1.7), hist_stride=stride, label_fields=LABELS,
                         max_pos=5, token_slots=slots)


def _assert_same(got: dict, ref: dict, exact_floats: bool = False) -> None:
    assert got.keys() == ref.keys()
    for key, r in ref.items():
        g = got[key]
        assert np.shape(g) == np.shape(r), key
        if np.asarray(r).dtype.kind in "iub" or key.startswith("topk.") or key.startswith("histogram."):
            np.testing.assert_array_equal(g, r, err_msg=key)
        elif exact_floats:
            np.testing.assert_array_equal(g, r, err_msg=key)
        else:
            np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=key)


def _run(batches, cfg, units, fused=True) -> SiteSummaries:
    ss = SiteSummaries.create(units, cfg)
    for a, s in batches:
        (ss.update if fused else ss.update_numpy)(a, s)
    return ss


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    units=st.sampled_from([1, 5, 63, 64, 65, 130]),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    k=st.integers(1, 5),
    window=st.integers(0, 2),
    stride=st.sampled_from([1, 3]),
    slots=st.sampled_from([4, 16]),
    inf=st.sampled_from([0.0, 0.02]),
    shuffle_ids=st.booleans(),
)
def test_fused_equals_numpy_reference(seed, units, sizes, k, window, stride, slots, inf, shuffle_ids):
    rng = np.random.default_rng(seed)
    batches = _stream(rng, units, sizes, inf, shuffle_ids=shuffle_ids)
    cfg = _cfg(k, window, stride, slots)
    fused = _run(batches, cfg, units).result()
    ref = _run(batches, cfg, units, fused=False).result()
    # grid values: float64 sums are exact on both paths, so even the moments agree exactly
    _assert_same(fused, ref, exact_floats=not inf)


def test_fused_against_brute_force():
    """Counts, histogram and top-k from plain numpy over the concatenated stream."""
    rng = np.random.default_rng(7)
    units, k = 70, 4
    batches = _stream(rng, units, [33, 1, 60, 0, 17, 45], inf_rate=0.01)
    r = _run(batches, _cfg(k=k, window=1), units).result()
    a = np.concatenate([b[0] for b in batches])
    s = {key: np.concatenate([b[1][key] for b in batches]) for key in batches[0][1]}
    np.testing.assert_array_equal(r["firing.pos_count"], (a > 0).sum(0))
    for j, t in enumerate((0.0, 0.5, 1.5)):
        np.testing.assert_array_equal(r["firing.abs_count"][j], (np.abs(a) > t).sum(0))
    np.testing.assert_array_equal(r["moments.min"], a.min(0))
    np.testing.assert_array_equal(r["moments.max"], a.max(0))
    edges = np.linspace(-1.5, 1.7, 7)
    bucket = np.clip(np.floor((a - edges[0]) / (edges[1] - edges[0])) + 1, 0, 7).astype(int)
    for u in range(units):
        full = np.bincount(bucket[:, u], minlength=8)
        np.testing.assert_array_equal(r["histogram.under"][u], full[0])
        np.testing.assert_array_equal(r["histogram.counts"][u], full[1:7])
        np.testing.assert_array_equal(r["histogram.over"][u], full[7])
        order = np.lexsort((s["sample"], -a[:, u]))[:k]  # activation desc, sample id asc
        np.testing.assert_array_equal(r["topk.sample"][u], s["sample"][order])
        np.testing.assert_array_equal(r["topk.values"][u], a[order, u])
    for g in range(3):
        np.testing.assert_array_equal(r["labels.lang.count"][g], (a[s["lang"] == g] > 0).sum(0))
    pos = np.minimum(s["pos"], 4)
    for p in range(5):
        np.testing.assert_array_equal(r["position.count"][p], (a[pos == p] > 0).sum(0))


def test_inf_is_a_value_as_in_the_numpy_parts():
    a = np.zeros((6, 3), dtype=np.float32)
    a[1, 0], a[2, 1] = np.inf, -np.inf
    s = {"sample": np.arange(6), "doc": np.zeros(6, int), "pos": np.arange(6), "token_id": np.arange(6),
         "lang": np.zeros(6, int)}
    with np.errstate(invalid="ignore"):
        fused = _run([(a, s)], _cfg(k=2), 3).result()
        ref = _run([(a, s)], _cfg(k=2), 3, fused=False).result()
    _assert_same(fused, ref, exact_floats=True)
    assert fused["moments.mean"][0] == np.inf and np.isnan(fused["moments.var"][0])
    assert fused["moments.min"][1] == -np.inf
    assert fused["histogram.over"][0] == 1 and fused["histogram.under"][1] == 1
    assert fused["topk.values"][0, 0] == np.inf and fused["topk.sample"][0, 0] == 1
    assert fused["firing.abs_count"][:, 1].tolist() == [1, 1, 1]


def test_nan_raises_before_any_part_changes():
    rng = np.random.default_rng(3)
    (a0, s0), (a1, s1) = _stream(rng, 20, [30, 30])
    ss = _run([(a0, s0)], _cfg(), 20)
    before, _ = ss.state()
    a1[5, 7] = np.nan
    with pytest.raises(NeuronscopeError, match="NaN"):
        ss.update(a1, s1)
    after, _ = ss.state()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    with pytest.raises(ValueError), np.errstate(invalid="ignore"):  # the numpy parts raise too
        ss.update_numpy(a1, s1)


def test_merge_order_independent():
    rng = np.random.default_rng(11)
    units = 66
    batches = _stream(rng, units, [25, 40, 3, 31, 12, 50, 8])
    cfg = _cfg(k=4, window=2)
    whole = _run(batches, cfg, units).result()

    def parts():
        return [_run([b], cfg, units) for b in batches]

    forward = tree_merge(parts()).result()
    p = parts()
    backward = p[-1]
    for q in p[-2::-1]:
        backward = backward.merge(q)
    backward = backward.result()
    for got in (forward, backward):
        for key, ref in whole.items():
            if key.startswith("tokens."):  # exact only within the slot bound (9 ids, 16 slots)
                np.testing.assert_allclose(got[key], ref, rtol=1e-6, equal_nan=True, err_msg=key)
            elif np.asarray(ref).dtype.kind in "iub" or key.startswith(("topk.", "histogram.")):
                np.testing.assert_array_equal(got[key], ref, err_msg=key)
            else:
                np.testing.assert_allclose(got[key], ref, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("context_dtype", ["float32", "float16"])
def test_compact_state_round_trips_exactly_through_the_store(tmp_path, context_dtype):
    import zarr

    from neuronscope.store import _load_state, _save_state

    rng = np.random.default_rng(5)
    units = 40
    cfg = _cfg(k=3, window=2)
    cfg.context_dtype = context_dtype
    ss = _run(_stream(rng, units, [30, 22, 41]), cfg, units)
    arrays, attrs = ss.state()
    assert arrays["firing.pos_count"].dtype == np.int32
    assert arrays["histogram.counts"].dtype == np.int32
    assert arrays["position.count"].dtype == np.int32
    assert arrays["topk.sample"].dtype == np.int32
    assert arrays["topk.context"].dtype == np.dtype(context_dtype)
    assert arrays["tokens.sums"].dtype == np.float32
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    _save_state(group, arrays, attrs)
    back_arrays, back_attrs = _load_state(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"))
    back = SiteSummaries.from_state(back_arrays, back_attrs)
    again, _ = back.state()
    assert again.keys() == arrays.keys()
    for key, value in arrays.items():
        assert again[key].dtype == value.dtype, key
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    # and the rebuilt summaries keep streaming exactly like the original
    more = _stream(np.random.default_rng(6), units, [19])
    for a, s in more:
        s = {k: v + 93 if k in ("sample", "doc") else v for k, v in s.items()}
        ss.update(a, s)
        back.update(a, s)
    _assert_same(back.result(), ss.result(), exact_floats=True)


def test_old_wide_states_still_load():
    """States written before compaction (int64 counts and ids, float64 token sums)."""
    rng = np.random.default_rng(9)
    units = 12
    ss = _run(_stream(rng, units, [30, 17]), _cfg(), units)
    arrays, attrs = ss.state()
    wide = {}
    for key, value in arrays.items():
        if value.dtype.kind == "i":
            value = value.astype(np.int64)
        elif key == "topk.context" or key == "tokens.sums":
            value = value.astype(np.float64 if key == "tokens.sums" else np.float32)
        wide[key] = value
    del attrs["parts"]["topk"]["context_dtype"]
    back = SiteSummaries.from_state(wide, attrs)
    _assert_same(back.result(), ss.result(), exact_floats=True)


def test_int32_counts_widen_instead_of_wrapping():
    near = INT32_MAX - 3
    a = np.ones((10, 2), dtype=np.float32)
    s = {"sample": np.arange(10), "pos": np.zeros(10, int)}
    # firing: a state that has counted 2**31 - 4 tokens, all active
    f = Firing(2, (0.5,))
    f.tokens, f.pos_count[:], f.abs_count[:] = near, near, near
    f.update(a, s)
    assert f.pos_count.dtype == np.int64 and f.pos_count.tolist() == [near + 10] * 2
    assert f.abs_count.tolist() == [[near + 10] * 2]
    # histogram: every sample so far in bin 1
    h = Histogram(2, np.linspace(0, 2, 3))
    h.counts[:, 1] = near
    h.update(a, s)
    assert h.counts.dtype == np.int64  # near + 10 samples counted: past int32
    assert h.result()["counts"].tolist() == [[near, 10]] * 2
    # group counts, through merge
    g1, g2 = GroupFiring.by_position(2, 4), GroupFiring.by_position(2, 4)
    g1.n[0], g1.count[0] = near, near
    g2.update(a, s)
    g1.merge(g2)
    assert g1.count.dtype == np.int64 and g1.result()["count"][0].tolist() == [near + 10] * 2
    # the fused path widens the same way
    ss = SiteSummaries.create(2, SummaryConfig(thresholds=(0.5,), hist_range=(0.0, 2.0), n_bins=2,
                                               token_slots=0, max_pos=0, k=1, window=0))
    ss.parts["firing"].tokens = near
    ss.parts["firing"].pos_count[:] = near
    ss.update(a, {"sample": np.arange(10)})
    assert ss.result()["firing.pos_count"].tolist() == [near + 10] * 2
    # top-k sample ids past int32 widen too
    t = TopK(2, k=2, window=0)
    t.update(a, {"sample": np.arange(10) + INT32_MAX})
    assert t.sample.dtype == np.int64 and t.result()["sample"][0].tolist() == [INT32_MAX, INT32_MAX + 1]


@pytest.mark.parametrize("n_threads", ["1", "3"])
def test_block_ranges_on_threads_equal_reference(monkeypatch, n_threads):
    """Blocks of neurons split over threads (forced on a small batch) give the same result."""
    from neuronscope.summaries import fused

    monkeypatch.setenv("NEURONSCOPE_SUMMARY_THREADS", n_threads)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(fused, "_MIN_VALUES_PER_THREAD", 1)
    assert fused.threads() == int(n_threads)
    rng = np.random.default_rng(13)
    units = 64 * 4 + 7  # five blocks, the last one partial
    batches = _stream(rng, units, [50, 70, 9])
    cfg = _cfg(k=3, window=1)
    _assert_same(_run(batches, cfg, units).result(), _run(batches, cfg, units, fused=False).result(),
                 exact_floats=True)


def test_sites_side_by_side_equal_one_by_one_and_survive_fork():
    """``update_sites`` (sites on the kernel's thread pool) equals updating each site alone,
    and a forked child (the crash tests fork mid-recording) still gets a working pool."""
    import os

    from neuronscope.summaries import fused

    rng = np.random.default_rng(11)
    units, n = 300, 400  # 3 sites x 120,000 values: enough for the pool
    batches = _stream(rng, units, [n, n])
    cfg = _cfg(k=4)
    names = ["a", "b", "c"]
    pooled = {s: SiteSummaries.create(units, cfg) for s in names}
    alone = {s: SiteSummaries.create(units, cfg) for s in names}
    for a, smp in batches:
        acts = {s: a * (i + 1) for i, s in enumerate(names)}
        fused.update_sites(pooled, acts, smp)
        for s in names:
            alone[s].update(acts[s], smp)
    for s in names:
        _assert_same(pooled[s].result(), alone[s].result(), exact_floats=True)
    if fused.threads() < 2:
        return
    assert fused._POOL is not None
    pid = os.fork()
    if pid == 0:  # child: must not wait forever on the parent's pool threads
        try:
            fused.update_sites(pooled, {s: batches[0][0] for s in names}, batches[0][1])
            os._exit(0)
        except BaseException:
            os._exit(3)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("forked child hung on the parent's summary thread pool")
