import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.histogram import Histogram, calibration_edges


def test_calibration_edges_widen_the_range():
    edges = calibration_edges(np.array([[0.0, 2.0], [1.0, 1.0]], np.float32), 4, margin=0.5)
    np.testing.assert_allclose(edges, [-1, 0, 1, 2, 3])
    np.testing.assert_allclose(calibration_edges(np.zeros((2, 2)), 2, margin=0.5), [-0.5, 0, 0.5])


def test_counts_at_bin_centres_under_and_overflow():
    edges = np.linspace(0, 10, 11)  # width 1
    h = Histogram(2, edges)
    acts = np.array([[0.5, -1], [0.5, 10.0], [3.5, 11], [9.5, 5.5]], np.float32)
    h.update(acts, {"sample": np.arange(4)})
    r = h.result()
    np.testing.assert_array_equal(r["counts"][0], [2, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(r["counts"][1], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(r["under"], [0, 1])
    np.testing.assert_array_equal(r["over"], [0, 2])  # a >= e_n is overflow


def test_quantiles_within_stated_bound_of_exact():
    rng = np.random.default_rng(0)
    acts = np.stack(
        [rng.standard_normal(20_000), rng.exponential(size=20_000), rng.uniform(-1, 1, 20_000)],
        axis=1,
    ).astype(np.float32)
    h = Histogram(3, calibration_edges(acts[:500], 50, margin=0.1))  # tails overflow
    for i in range(0, len(acts), 3000):
        h.update(acts[i : i + 3000], {"sample": np.arange(i, min(i + 3000, len(acts)))})
    q = [0.0, 0.01, 0.25, 0.5, 0.9, 0.999, 1.0]
    vals, bound = h.quantiles(q, acts.min(0), acts.max(0))
    n = len(acts)
    srt = np.sort(acts, axis=0).astype(np.float64)
    for i, level in enumerate(q):
        r = max(int(np.ceil(level * n)), 1)
        exact = srt[r - 1]
        assert np.all(np.abs(vals[i] - exact) <= bound[i] + 1e-6), (level, vals[i], exact, bound[i])
    width = np.diff(h.edges)[0]
    np.testing.assert_allclose(bound[3], width)  # medians are in interior bins
    np.testing.assert_array_equal(vals[0], acts.min(0))
    np.testing.assert_array_equal(vals[-1], acts.max(0))
    _, no_ends = h.quantiles([1.0])
    assert np.isinf(no_ends).any()  # overflow bucket without the exact max: unbounded


def test_stride_counts_only_every_kth_sample():
    h = Histogram(1, np.linspace(0, 4, 5), stride=3)
    acts = np.arange(12, dtype=np.float32)[:, None] / 3
    h.update(acts, {"sample": np.arange(12)})
    assert h.result()["counts"].sum() + h.result()["over"].sum() == 4  # samples 0, 3, 6, 9


def test_merge_requires_equal_edges():
    with pytest.raises(NeuronscopeError, match="edges"):
        Histogram(1, [0, 1, 2]).merge(Histogram(1, [0, 1, 3]))
    with pytest.raises(NeuronscopeError, match="equally spaced"):
        Histogram(1, [0, 1, 3])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 100), max_size=6), rev=st.booleans())
def test_merge_of_chunks_equals_whole(seed, cuts, rev):
    acts, samples = make_corpus(seed)
    edges = calibration_edges(acts[:5], 8, margin=0.2)
    whole = Histogram(acts.shape[1], edges, stride=2)
    whole.update(acts, samples)
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = Histogram(acts.shape[1], edges, stride=2)
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    merged = tree_merge(parts[::-1] if rev else parts)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert whole.counts.sum() == acts.shape[1] * len(range(0, len(acts), 2))


def test_state_round_trip():
    acts, samples = make_corpus(1)
    h = Histogram(acts.shape[1], calibration_edges(acts, 6))
    h.update(acts, samples)
    arrays, attrs = h.state()
    back = summary_from_state(attrs["kind"], arrays, attrs)
    for key, value in h.result().items():
        np.testing.assert_array_equal(back.result()[key], value)
