import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.moments import Moments


def test_closed_form_mean_var_min_max_mean_abs():
    # column u takes the values u + {-3, -1, 1, 3}, each 25 times:
    # mean u, var 5, min u - 3, max u + 3, mean|a| known by hand for u = 0
    base = np.tile(np.array([-3, -1, 1, 3], dtype=np.float32), 25)
    acts = np.stack([base + u for u in range(4)], axis=1).astype(np.float32)
    m = Moments(4)
    for i in range(0, 100, 7):
        m.update(acts[i : i + 7], {"sample": np.arange(i, min(i + 7, 100))})
    r = m.result()
    np.testing.assert_array_equal(r["count"], [100] * 4)
    np.testing.assert_allclose(r["mean"], [0, 1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(r["var"], [5, 5, 5, 5], rtol=1e-12)
    np.testing.assert_allclose(r["std"], np.sqrt(5), rtol=1e-12)
    np.testing.assert_array_equal(r["min"], [-3, -2, -1, 0])
    np.testing.assert_array_equal(r["max"], [3, 4, 5, 6])
    assert r["mean_abs"][0] == 2.0  # (3 + 1 + 1 + 3) / 4
    assert r["mean_abs"][3] == 3.0  # (0 + 2 + 4 + 6) / 4


def test_large_offset_keeps_variance():
    # mean/std = 1e3: the float64 single-batch formula must still give var to float32 precision
    rng = np.random.default_rng(0)
    acts = (1000 + rng.standard_normal((5000, 3))).astype(np.float32)
    m = Moments(3)
    m.update(acts, {"sample": np.arange(5000)})
    ref = acts.astype(np.float64).var(axis=0)
    np.testing.assert_allclose(m.result()["var"], ref, rtol=1e-7)


def test_empty_is_nan_and_merge_with_empty():
    m = Moments(2)
    assert np.isnan(m.result()["mean"]).all()
    other = Moments(2)
    other.update(np.ones((3, 2), np.float32), {"sample": np.arange(3)})
    m.merge(other)
    np.testing.assert_array_equal(m.result()["mean"], [1, 1])
    np.testing.assert_array_equal(m.result()["var"], [0, 0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 100), max_size=6), rev=st.booleans())
def test_merge_of_chunks_equals_whole(seed, cuts, rev):
    acts, samples = make_corpus(seed, ties=False)
    whole = Moments(acts.shape[1])
    whole.update(acts, samples)
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = Moments(acts.shape[1])
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    merged = tree_merge(parts[::-1] if rev else parts).result()
    ref = acts.astype(np.float64)
    for key, r in whole.result().items():
        np.testing.assert_allclose(merged[key], r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged["mean"], ref.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged["var"], ref.var(0), rtol=1e-9, atol=1e-12)


def test_state_round_trip():
    acts, samples = make_corpus(3)
    m = Moments(acts.shape[1])
    m.update(acts, samples)
    arrays, attrs = m.state()
    back = summary_from_state(attrs["kind"], arrays, attrs)
    for key, value in m.result().items():
        np.testing.assert_array_equal(back.result()[key], value)
