import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.firing import Firing
from neuronscope.summaries.groups import GroupFiring, Grouping
from neuronscope.summaries.kernels import col_count, group_sum, row_count


def test_kernels_agree_with_numpy():
    rng = np.random.default_rng(0)
    mask = rng.random((1000, 7)) < 0.3
    np.testing.assert_array_equal(col_count(mask), mask.sum(0))
    np.testing.assert_array_equal(row_count(mask), mask.sum(1))
    x = rng.standard_normal((1000, 7)).astype(np.float32)
    keys = rng.integers(-1, 5, 1000)
    ref = np.stack([x[keys == g].astype(np.float64).sum(0) for g in range(4)])
    groups, sums = group_sum(x, keys, 4)
    np.testing.assert_array_equal(groups, [0, 1, 2, 3])
    np.testing.assert_allclose(sums, ref, rtol=1e-5, atol=1e-4)
    groups, sums = group_sum(x[:3], np.array([2, 9, 2]), 4)  # absent keys get no row
    np.testing.assert_array_equal(groups, [2])
    np.testing.assert_allclose(sums[0], x[0].astype(np.float64) + x[2], rtol=1e-6)


def test_known_firing_rates_and_thresholds():
    # unit u fires (a = 2) on exactly the first 10*u of 100 samples, else a = -0.3
    n, units = 100, 5
    acts = np.full((n, units), -0.3, np.float32)
    for u in range(units):
        acts[: 10 * u, u] = 2.0
    f = Firing(units, thresholds=[0.2, 1.0, 5.0], frac_bins=5)
    f.update(acts[:37], {"sample": np.arange(37)})
    f.update(acts[37:], {"sample": np.arange(37, n)})
    r = f.result()
    np.testing.assert_array_equal(r["pos_count"], [0, 10, 20, 30, 40])
    np.testing.assert_array_equal(r["thresholds"], [0.2, 1.0, 5.0])
    np.testing.assert_array_equal(r["abs_count"][0], [100] * 5)  # |-0.3| > 0.2 too
    np.testing.assert_array_equal(r["abs_count"][1], [0, 10, 20, 30, 40])
    np.testing.assert_array_equal(r["abs_count"][2], [0] * 5)
    # per token: rows < 10 have 4/5 active, < 20: 3/5, < 30: 2/5, < 40: 1/5, else 0
    assert r["tokens"] == n
    assert r["active_frac_sum"] == pytest.approx(10 * (4 + 3 + 2 + 1) / 5)
    np.testing.assert_array_equal(r["frac_hist"], [60, 10, 10, 10, 10])


def test_label_and_position_counts_closed_form():
    # positions 0..9 in 20 docs; lang = doc % 2; unit 0 fires iff pos < 3 (positional),
    # unit 1 fires iff lang == 1, unit 2 never fires
    docs, length = 20, 10
    pos = np.tile(np.arange(length), docs)
    doc = np.repeat(np.arange(docs), length)
    lang = doc % 2
    acts = np.zeros((docs * length, 3), np.float32)
    acts[:, 0] = np.where(pos < 3, 1.0, 0.0)
    acts[:, 1] = np.where(lang == 1, 0.5, -0.5)
    samples = {"sample": np.arange(len(pos)), "pos": pos, "lang": lang, "doc": doc}
    lf = GroupFiring.by_label(3, "lang", ["en", "de"])
    pf = GroupFiring.by_position(3, max_pos=6)
    lf.update(acts, samples)
    pf.update(acts, samples)
    np.testing.assert_array_equal(lf.result()["n"], [100, 100])
    np.testing.assert_array_equal(lf.result()["count"], [[30, 0, 0], [30, 100, 0]])
    rp = pf.result()
    np.testing.assert_array_equal(rp["n"], [20] * 5 + [100])  # positions >= 5 share bucket 5
    np.testing.assert_array_equal(rp["count"][:, 0], [20, 20, 20, 0, 0, 0])
    np.testing.assert_array_equal(rp["count"][:, 1], [10] * 5 + [50])


def test_unlabeled_codes_are_skipped_and_missing_coords_raise():
    lf = GroupFiring.by_label(1, "lang", ["a", "b"])
    lf.update(np.ones((3, 1), np.float32), {"sample": np.arange(3), "lang": np.array([0, -1, 5])})
    np.testing.assert_array_equal(lf.result()["n"], [1, 0])
    with pytest.raises(NeuronscopeError, match="label_fields"):
        lf.update(np.ones((1, 1), np.float32), {"sample": np.arange(1)})
    with pytest.raises(NeuronscopeError, match="max_pos=0"):
        GroupFiring.by_position(1, 4).update(np.ones((1, 1), np.float32), {"sample": np.arange(1)})
    with pytest.raises(NeuronscopeError, match=">= 0"):
        GroupFiring.by_position(1, 4).update(np.ones((1, 1), np.float32),
                                             {"sample": np.arange(1), "pos": np.array([-1])})
    with pytest.raises(NeuronscopeError, match="at least one category"):
        GroupFiring.by_label(1, "lang", [])
    with pytest.raises(NeuronscopeError, match="cannot merge"):
        GroupFiring.by_label(1, "lang", ["a", "b"]).merge(GroupFiring.by_label(1, "lang", ["a", "c"]))
    with pytest.raises(NeuronscopeError, match="cannot merge"):
        GroupFiring.by_position(1, 4).merge(GroupFiring.by_position(1, 5))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 100), max_size=6), rev=st.booleans())
def test_merge_of_chunks_equals_whole(seed, cuts, rev):
    acts, samples = make_corpus(seed)
    units = acts.shape[1]

    def fresh():
        return [Firing(units, [0.4, 1.2], 4), GroupFiring.by_label(units, "lang", ["x", "y", "z"]),
                GroupFiring.by_position(units, 4)]

    whole = fresh()
    for s in whole:
        s.update(acts, samples)
    chunks = []
    for sl in doc_chunks(samples, cuts):
        parts = fresh()
        for s in parts:
            s.update(acts[sl], take(samples, sl))
        chunks.append(parts)
    if rev:
        chunks = chunks[::-1]
    for i, w in enumerate(whole):
        merged = tree_merge([c[i] for c in chunks])
        for key, value in w.result().items():
            np.testing.assert_allclose(merged.result()[key], value, rtol=1e-12)
    np.testing.assert_array_equal(whole[0].result()["pos_count"], (acts > 0).sum(0))


def test_state_round_trip():
    acts, samples = make_corpus(5)
    for s in (Firing(5, [0.1]), GroupFiring.by_label(5, "lang", ["a", "b", "c"]),
              GroupFiring.by_position(5, 3)):
        s.update(acts, samples)
        arrays, attrs = s.state()
        back = summary_from_state(attrs["kind"], arrays, attrs)
        for key, value in s.result().items():
            np.testing.assert_array_equal(back.result()[key], value)


def test_position_state_trims_unseen_positions():
    acts, samples = make_corpus(6, max_len=4)
    pf = GroupFiring.by_position(acts.shape[1], max_pos=100)
    pf.update(acts, samples)
    arrays, attrs = pf.state()
    assert arrays["count"].shape == (samples["pos"].max() + 1, acts.shape[1])
    back = summary_from_state(attrs["kind"], arrays, attrs)
    np.testing.assert_array_equal(back.count, pf.count)
    np.testing.assert_array_equal(back.n, pf.n)


def test_group_firing_closed_form_any_grouping():
    # group counts against a direct count per group: labels drop codes outside [0, C),
    # buckets put every value >= size into the last bucket
    rng = np.random.default_rng(7)
    acts = rng.standard_normal((300, 4)).astype(np.float32)
    label = rng.integers(-1, 5, 300)  # codes 3, 4 and -1 are in no group of 3 categories
    pos = rng.integers(0, 40, 300)
    samples = {"sample": np.arange(300), "lang": label, "pos": pos}
    lf = GroupFiring.by_label(4, "lang", ["a", "b", "c"])
    pf = GroupFiring.by_position(4, max_pos=10)
    lf.update(acts, samples)
    pf.update(acts, samples)
    for g in range(3):
        np.testing.assert_array_equal(lf.count[g], (acts[label == g] > 0).sum(0))
        assert lf.n[g] == (label == g).sum()
    for g in range(9):
        np.testing.assert_array_equal(pf.count[g], (acts[pos == g] > 0).sum(0))
    np.testing.assert_array_equal(pf.count[9], (acts[pos >= 9] > 0).sum(0))
    assert pf.n.sum() == 300 and lf.n.sum() == np.isin(label, [0, 1, 2]).sum()
    assert lf.grouping == Grouping.labels("lang", ["a", "b", "c"])
    assert pf.grouping == Grouping.buckets("pos", 10)


def test_label_state_trims_trailing_empty_categories():
    lf = GroupFiring.by_label(2, "lang", ["a", "b", "c", "d"])
    lf.update(np.ones((3, 2), np.float32), {"sample": np.arange(3), "lang": np.array([0, 1, 1])})
    arrays, attrs = lf.state()
    assert arrays["count"].shape == (2, 2) and arrays["n"].tolist() == [1, 2]
    back = summary_from_state(attrs["kind"], arrays, attrs)
    assert back.result()["n"].tolist() == [1, 2, 0, 0]
    assert back.grouping.categories == ("a", "b", "c", "d")
