import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from summaries_corpus import doc_chunks, make_corpus, take

from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.topk import TopK


def reference_topk(acts, samples, k, window):
    """Brute force: full sort by (activation desc, sample asc), context by document."""
    n, units = acts.shape
    out = {name: [] for name in ("values", "sample", "doc", "pos", "token_id", "context")}
    for u in range(units):
        order = np.lexsort((samples["sample"], -acts[:, u]))[:k]
        ctx = np.full((k, 2 * window + 1), np.nan, np.float32)
        for j, r in enumerate(order):
            for t, off in enumerate(range(-window, window + 1)):
                rr = r + off
                if 0 <= rr < n and samples["doc"][rr] == samples["doc"][r]:
                    ctx[j, t] = acts[rr, u]
        pad = k - len(order)
        out["values"].append(np.r_[acts[order, u], [-np.inf] * pad])
        for name in ("sample", "doc", "pos", "token_id"):
            out[name].append(np.r_[samples[name][order], [-1] * pad])
        out["context"].append(ctx)
    return {name: np.array(v) for name, v in out.items()}


def assert_topk_equal(res, ref):
    for name, value in ref.items():
        np.testing.assert_array_equal(res[name], value, err_msg=name)


def test_matches_brute_force_with_ties_and_dead_unit():
    acts, samples = make_corpus(0, n_docs=40, units=6, max_len=12)
    tk = TopK(6, k=7, window=3)
    for sl in doc_chunks(samples, list(range(0, 40, 3))):
        tk.update(acts[sl], take(samples, sl))
    assert_topk_equal(tk.result(), reference_topk(acts, samples, 7, 3))
    # the all-zero unit keeps the 7 smallest sample ids among its ties
    np.testing.assert_array_equal(tk.result()["sample"][0], np.arange(7))


def test_out_of_order_batches_and_fewer_than_k_samples():
    acts, samples = make_corpus(1, n_docs=10, units=4)
    chunks = doc_chunks(samples, [2, 4, 6, 8])
    tk = TopK(4, k=100, window=2)  # more slots than samples: tail stays empty
    for sl in chunks[::-1]:
        tk.update(acts[sl], take(samples, sl))
    ref = reference_topk(acts, samples, 100, 2)
    assert_topk_equal(tk.result(), ref)
    assert (tk.result()["sample"][:, len(acts):] == -1).all()


def test_context_is_the_neurons_own_window_inside_the_document():
    # one doc 0..5 and one doc 0..2; unit peaks at doc 0 pos 1
    acts = np.array([[1.0], [9.0], [2.0], [3.0], [4.0], [5.0], [0.0], [0.0], [0.0]], np.float32)
    samples = {
        "sample": np.arange(9), "doc": np.repeat([0, 1], [6, 3]),
        "pos": np.r_[np.arange(6), np.arange(3)], "token_id": np.arange(9) + 100,
    }
    tk = TopK(1, k=1, window=2)
    tk.update(acts, samples)
    r = tk.result()
    assert r["values"][0, 0] == 9 and r["pos"][0, 0] == 1 and r["token_id"][0, 0] == 101
    np.testing.assert_array_equal(r["context"][0, 0], [np.nan, 1, 9, 2, 3])


def test_many_candidates_per_batch_use_partition_path():
    # increasing activations: every batch beats all kept examples
    n, units = 4000, 3
    acts = np.repeat(np.arange(n, dtype=np.float32)[:, None], units, axis=1)
    samples = {"sample": np.arange(n), "doc": np.arange(n) // 50, "pos": np.arange(n) % 50,
               "token_id": np.zeros(n, np.int64)}
    tk = TopK(units, k=5, window=1)
    for i in range(0, n, 1000):
        tk.update(acts[i : i + 1000], take(samples, slice(i, i + 1000)))
    assert_topk_equal(tk.result(), reference_topk(acts, samples, 5, 1))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 100), max_size=8),
    order_seed=st.integers(0, 1000),
)
def test_any_split_and_merge_order_equals_whole(seed, cuts, order_seed):
    acts, samples = make_corpus(seed, n_docs=15)
    k, w = 4, 2
    parts = []
    for sl in doc_chunks(samples, cuts):
        p = TopK(acts.shape[1], k, w)
        p.update(acts[sl], take(samples, sl))
        parts.append(p)
    np.random.default_rng(order_seed).shuffle(parts)
    merged = tree_merge(parts)
    assert_topk_equal(merged.result(), reference_topk(acts, samples, k, w))


def test_state_round_trip():
    acts, samples = make_corpus(2)
    tk = TopK(acts.shape[1], 3, 1)
    tk.update(acts, samples)
    arrays, attrs = tk.state()
    back = summary_from_state(attrs["kind"], arrays, attrs)
    assert_topk_equal(back.result(), tk.result())
