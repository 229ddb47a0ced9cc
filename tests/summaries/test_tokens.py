import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.tokens import TokenMeans


def reference_means(acts, tok):
    ids = np.unique(tok)
    return ids, np.stack([acts[tok == i].astype(np.float64).mean(0) for i in ids])


def test_token_detector_means_exact_within_bound():
    # unit 1 is a detector: 3.0 on token 7, 0 elsewhere; unit 0 noise
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 10, 500)
    acts = np.stack([rng.standard_normal(500), np.where(tok == 7, 3.0, 0.0)], 1).astype(np.float32)
    tm = TokenMeans(2, slots=10)
    for i in range(0, 500, 64):
        tm.update(acts[i : i + 64], {"sample": np.arange(i, min(i + 64, 500)), "token_id": tok[i : i + 64]})
    r = tm.result()
    ids, means = reference_means(acts, tok)
    np.testing.assert_array_equal(r["ids"], ids)
    np.testing.assert_array_equal(r["count"], np.bincount(tok))
    np.testing.assert_allclose(r["mean"], means, rtol=1e-5, atol=1e-6)
    assert r["mean"][7, 1] == 3.0 and np.all(np.delete(r["mean"][:, 1], 7) == 0)
    assert r["other_count"] == 0


def test_beyond_bound_memory_is_fixed_and_counts_conserved():
    rng = np.random.default_rng(1)
    tok = np.where(rng.random(3000) < 0.5, 0, rng.integers(1, 400, 3000))  # token 0 is frequent
    acts = rng.standard_normal((3000, 3)).astype(np.float32)
    tm = TokenMeans(3, slots=8)
    for i in range(0, 3000, 100):
        tm.update(acts[i : i + 100], {"sample": np.arange(i, i + 100), "token_id": tok[i : i + 100]})
    r = tm.result()
    assert len(r["ids"]) <= 8 and tm.sums.shape == (8, 3)
    assert r["count"].sum() + r["other_count"] == 3000
    total = r["mean"].T @ r["count"] + r["other_mean"] * r["other_count"]
    np.testing.assert_allclose(total, acts.astype(np.float64).sum(0), rtol=1e-5, atol=1e-3)
    assert 0 in r["ids"]  # the frequent token keeps its slot
    np.testing.assert_allclose(r["mean"][r["ids"] == 0][0], acts[tok == 0].mean(0), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 100), max_size=6), rev=st.booleans())
def test_merge_of_chunks_equals_whole(seed, cuts, rev):
    acts, samples = make_corpus(seed, vocab=6)
    whole = TokenMeans(acts.shape[1], slots=6)
    whole.update(acts, samples)
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = TokenMeans(acts.shape[1], slots=6)
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    merged = tree_merge(parts[::-1] if rev else parts).result()
    for key, value in whole.result().items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_state_round_trip():
    acts, samples = make_corpus(4)
    tm = TokenMeans(acts.shape[1], slots=3)
    tm.update(acts, samples)
    arrays, attrs = tm.state()
    back = summary_from_state(attrs["kind"], arrays, attrs)
    for key, value in tm.result().items():
        np.testing.assert_array_equal(back.result()[key], value)


def test_state_keeps_only_held_slots_and_keeps_streaming_equal():
    rng = np.random.default_rng(7)
    tok = rng.integers(0, 40, 600)
    acts = rng.standard_normal((600, 2)).astype(np.float32)

    def batch(i):
        return acts[i : i + 100], {"sample": np.arange(i, i + 100), "token_id": tok[i : i + 100]}

    tm = TokenMeans(2, slots=16)  # beyond the bound: evictions happen
    for i in range(0, 300, 100):
        tm.update(*batch(i))
    arrays, attrs = tm.state()
    assert len(arrays["ids"]) == (tm.ids >= 0).sum() <= 16
    back = summary_from_state(attrs["kind"], arrays, attrs)
    for i in range(300, 600, 100):
        tm.update(*batch(i))
        back.update(*batch(i))
    for key, value in tm.result().items():
        np.testing.assert_array_equal(back.result()[key], value)
