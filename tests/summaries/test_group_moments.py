"""Per-label streamed moments: equal to numpy per-label mean/var, mergeable in any order."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.groups import GroupMoments
from neuronscope.summaries.site import SiteSummaries, SummaryConfig

CATS = ["en", "de", "fr", "nl"]  # "nl" never occurs: an empty group


def numpy_reference(acts, codes, n_groups):
    n = np.array([(codes == g).sum() for g in range(n_groups)])
    mean = np.full((n_groups, acts.shape[1]), np.nan)
    var = np.full((n_groups, acts.shape[1]), np.nan)
    for g in range(n_groups):
        rows = acts[codes == g].astype(np.float64)
        if len(rows):
            mean[g] = rows.mean(axis=0)
            var[g] = rows.var(axis=0)
    return n, mean, var


def test_hand_computed_two_groups_and_missing_label():
    # group 0 holds {1, 3} and {0, 4}; group 1 holds {10} and {-2}; the last row is unlabeled
    acts = np.array([[1, 0], [3, 4], [10, -2], [100, 100]], dtype=np.float32)
    codes = np.array([0, 0, 1, -1])
    gm = GroupMoments.by_label(2, "lang", ["a", "b", "c"])
    gm.update(acts, {"sample": np.arange(4), "lang": codes})
    r = gm.result()
    np.testing.assert_array_equal(r["n"], [2, 1, 0])
    np.testing.assert_allclose(r["mean"][:2], [[2, 2], [10, -2]])
    np.testing.assert_allclose(r["var"][:2], [[1, 4], [0, 0]])
    assert np.isnan(r["mean"][2]).all() and np.isnan(r["var"][2]).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 100), max_size=6),
       order_seed=st.integers(0, 1000))
def test_merge_in_any_order_equals_whole_and_numpy(seed, cuts, order_seed):
    acts, samples = make_corpus(seed, ties=False)
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 3, len(acts))  # -1: label missing for some samples
    samples = {**samples, "lang": codes}
    whole = GroupMoments.by_label(acts.shape[1], "lang", CATS)
    whole.update(acts, samples)
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = GroupMoments.by_label(acts.shape[1], "lang", CATS)
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    np.random.default_rng(order_seed).shuffle(parts)
    merged = tree_merge(parts).result()
    w = whole.result()
    n, mean, var = numpy_reference(acts, codes, len(CATS))
    for r in (w, merged):
        np.testing.assert_array_equal(r["n"], n)
        np.testing.assert_allclose(r["mean"], mean, rtol=1e-9, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(r["var"], var, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_large_offset_keeps_per_label_variance():
    rng = np.random.default_rng(1)
    acts = (1000 + rng.standard_normal((4000, 3))).astype(np.float32)
    codes = rng.integers(0, 2, 4000)
    gm = GroupMoments.by_label(3, "lang", ["a", "b"])
    for i in range(0, 4000, 512):
        gm.update(acts[i : i + 512], {"sample": np.arange(i, min(i + 512, 4000)), "lang": codes[i : i + 512]})
    _, mean, var = numpy_reference(acts, codes, 2)
    np.testing.assert_allclose(gm.result()["var"], var, rtol=1e-7)
    np.testing.assert_allclose(gm.result()["mean"], mean, rtol=1e-12)


def test_state_round_trip_and_merge_errors():
    acts, samples = make_corpus(3)
    gm = GroupMoments.by_label(acts.shape[1], "lang", CATS)
    gm.update(acts, samples)
    arrays, attrs = gm.state()
    assert len(arrays["n"]) == 3  # the trailing empty group is not stored
    back = summary_from_state(attrs["kind"], arrays, attrs)
    for k, v in gm.result().items():
        np.testing.assert_array_equal(back.result()[k], v)
    with pytest.raises(NeuronscopeError, match="cannot merge group moments"):
        gm.merge(GroupMoments.by_label(acts.shape[1], "lang", ["en", "de", "xx", "nl"]))
    with pytest.raises(NeuronscopeError, match="lacks label field|lack label field"):
        GroupMoments.by_label(2, "topic", ["a"]).update(np.ones((1, 2), np.float32), {"sample": np.arange(1)})


def test_site_summaries_carry_label_moments_per_field():
    acts, samples = make_corpus(4)
    cfg = SummaryConfig(k=2, window=1, n_bins=4, label_fields={"lang": ["en", "de", "fr"]}, max_pos=3,
                        token_slots=4)
    ss = SiteSummaries.create(acts.shape[1], cfg, acts[:5])
    ss.update(acts, samples)
    r = ss.result()
    n, mean, var = numpy_reference(acts, samples["lang"], 3)
    np.testing.assert_array_equal(r["label_moments.lang.n"], n)
    np.testing.assert_allclose(r["label_moments.lang.mean"], mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r["label_moments.lang.var"], var, rtol=1e-9, atol=1e-12)
    # the per-label counts agree with the per-label firing part's
    np.testing.assert_array_equal(r["label_moments.lang.n"], r["labels.lang.n"])
    back = SiteSummaries.from_state(*ss.state())
    np.testing.assert_array_equal(back.result()["label_moments.lang.mean"], r["label_moments.lang.mean"])
