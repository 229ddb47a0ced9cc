import json
import tracemalloc

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.site import SiteSummaries, SummaryConfig

CFG = SummaryConfig(
    thresholds=(0.4, 1.0), k=4, window=2, n_bins=10, hist_stride=1,
    label_fields={"lang": ["en", "de", "fr"]}, max_pos=5, token_slots=8, frac_bins=4,
)
CONTRACT_KEYS = {
    "moments.count", "moments.mean", "moments.var", "moments.min", "moments.max",
    "moments.mean_abs", "firing.thresholds", "firing.pos_count", "firing.abs_count",
    "firing.active_frac_sum", "firing.tokens", "labels.lang.count", "labels.lang.n",
    "histogram.edges", "histogram.counts", "topk.values", "topk.sample", "topk.doc",
    "topk.pos", "topk.token_id", "topk.context", "position.count", "position.n",
}


def assert_results_equal(a, b, rtol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        if np.issubdtype(np.asarray(a[key]).dtype, np.integer):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-9, equal_nan=True,
                                       err_msg=key)


def test_contract_keys_shapes_and_config_round_trip():
    acts, samples = make_corpus(0)
    ss = SiteSummaries.create(acts.shape[1], CFG, acts[:10])
    ss.update(acts, samples)
    r = ss.result()
    assert CONTRACT_KEYS <= set(r)
    u = acts.shape[1]
    assert r["moments.count"].shape == (u,) and r["moments.count"].dtype == np.int64
    assert r["firing.abs_count"].shape == (2, u)
    assert r["labels.lang.count"].shape == (3, u)
    assert r["histogram.counts"].shape == (u, 10) and r["histogram.edges"].shape == (11,)
    assert r["topk.context"].shape == (u, 4, 5)
    assert r["position.count"].shape == (5, u)
    d = json.loads(json.dumps(CFG.to_dict()))
    assert SummaryConfig.from_dict(d) == CFG
    with pytest.raises(NeuronscopeError, match="unknown summary config"):
        SummaryConfig.from_dict({"bins": 3})


def test_quantiles_clamped_by_exact_min_max():
    acts, samples = make_corpus(1, ties=False)
    ss = SiteSummaries.create(acts.shape[1], CFG, acts[:3])
    ss.update(acts, samples)
    vals, bound = ss.quantiles([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(vals[0], acts.min(0))
    np.testing.assert_array_equal(vals[2], acts.max(0))
    med = np.sort(acts, 0)[int(np.ceil(0.5 * len(acts))) - 1]
    assert np.all(np.abs(vals[1] - med) <= bound[1] + 1e-6)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 100), max_size=6),
    order_seed=st.integers(0, 1000),
)
def test_any_split_and_merge_order_equals_whole(seed, cuts, order_seed):
    acts, samples = make_corpus(seed, n_docs=14, vocab=7)
    calib = acts[:6]
    whole = SiteSummaries.create(acts.shape[1], CFG, calib)
    whole.update(acts, samples)
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = SiteSummaries.create(acts.shape[1], CFG, calib)
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    np.random.default_rng(order_seed).shuffle(parts)
    assert_results_equal(tree_merge(parts).result(), whole.result())


def test_state_round_trip_through_a_zarr_store(tmp_path):
    acts, samples = make_corpus(3)
    ss = SiteSummaries.create(acts.shape[1], CFG, acts[:10])
    ss.update(acts, samples)
    arrays, attrs = ss.state()
    group = zarr.open_group(tmp_path / "summaries.zarr", mode="w")
    for name, arr in arrays.items():
        group.create_array(name, data=arr)
    group.attrs.update(json.loads(json.dumps(attrs)))
    back_group = zarr.open_group(tmp_path / "summaries.zarr", mode="r")
    back_arrays = {name: back_group[name][...] for name in back_group.array_keys()}
    back = summary_from_state(back_group.attrs["kind"], back_arrays, dict(back_group.attrs))
    assert isinstance(back, SiteSummaries) and back.cfg == CFG
    assert_results_equal(back.result(), ss.result(), rtol=0)
    # the rebuilt object keeps streaming: updating both with more data stays equal
    more, more_s = make_corpus(4)
    more_s = {k: v + (len(acts) if k in ("sample", "doc") else 0) for k, v in more_s.items()}
    ss.update(more, more_s)
    back.update(more, more_s)
    assert_results_equal(back.result(), ss.result(), rtol=0)


def test_memory_does_not_grow_with_batches():
    rng = np.random.default_rng(0)
    units, n = 64, 256
    cfg = SummaryConfig(k=8, window=2, n_bins=16, max_pos=16, token_slots=32,
                        label_fields={"lang": ["a", "b"]})
    batches = []
    for i in range(3):
        acts = rng.standard_normal((n, units)).astype(np.float32)
        s = np.arange(i * n, (i + 1) * n)
        batches.append((acts, {"sample": s, "doc": s // 32, "pos": s % 32,
                               "token_id": rng.integers(0, 500, n), "lang": (s // 32) % 2}))
    ss = SiteSummaries.create(units, cfg, batches[0][0])

    def feed(count, offset):
        for i in range(count):
            acts, s = batches[i % 3]
            shifted = {k: (v + (offset + i) * n if k in ("sample", "doc") else v)
                       for k, v in s.items()}
            ss.update(acts, shifted)

    tracemalloc.start()
    feed(5, 0)
    after_few = tracemalloc.get_traced_memory()[0]
    feed(40, 5)
    after_many = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert ss.result()["moments.count"][0] == 45 * n
    assert after_many - after_few < 64 * 1024, (after_few, after_many)


def test_bad_input_errors_name_the_fix():
    with pytest.raises(NeuronscopeError, match="calibration"):
        SiteSummaries.create(3, SummaryConfig())
    ss = SiteSummaries.create(3, SummaryConfig(max_pos=4, token_slots=4), np.zeros((2, 3)))
    with pytest.raises(NeuronscopeError, match=r"shape \(n, 3\)"):
        ss.update(np.zeros((2, 4), np.float32), {"sample": np.arange(2)})
    with pytest.raises(NeuronscopeError, match="'sample'"):
        ss.update(np.zeros((2, 3), np.float32), {"doc": np.arange(2)})
    # a non-text source (no doc/pos/token_id) leaves the position and token parts empty
    ss.update(np.ones((2, 3), np.float32), {"sample": np.arange(2), "item": np.array([5, 6])})
    r = ss.result()
    assert r["topk.doc"][0, 0] == 5 and r["topk.pos"][0, 0] == -1
    assert r["position.n"].sum() == 0 and len(r["tokens.ids"]) == 0
    assert np.isnan(r["topk.context"][0, 0, [0, 1, 3, 4]]).all()


def test_conv_positions_group_context_by_item():
    # 2 items x 3 spatial positions; context stays within an item
    acts = np.array([[1], [2], [9], [4], [5], [6]], np.float32)
    samples = {"sample": np.arange(6), "item": np.repeat([0, 1], 3), "pos": np.tile(np.arange(3), 2)}
    ss = SiteSummaries.create(1, SummaryConfig(k=1, window=1, token_slots=0), acts)
    ss.update(acts, samples)
    np.testing.assert_array_equal(ss.result()["topk.context"][0, 0], [2, 9, np.nan])
