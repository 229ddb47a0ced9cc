"""Token-budget length bucketing and packed contexts of TextSource (issue 16, items 1-2).

Reference answers come from the tokenizer called on one document at a time, never from
TextSource's batching code: every token of every document appears exactly once, with the
coordinates the single-document tokenization gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import neuronscope as ns
from neuronscope.errors import NeuronscopeError
from neuronscope.recording import Recorder, forward_batches, run_pass
from neuronscope.sources.text import TextSource, bucket_plan, load_corpus
from neuronscope.sources.torch_sites import sites

sys.path.insert(0, str(Path(__file__).parents[1]))
from tinymodels import TinyText  # noqa: E402

MAX_TOKENS = 64


@pytest.fixture(scope="module")
def tok(minilm):
    return minilm[1]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("default").head(400)


def _expected(tok, corpus, packed: bool) -> dict[tuple[int, int], int]:
    """{(doc id, pos): token id} from tokenizing each document alone."""
    out = {}
    for doc, text in zip(corpus.ids(), corpus.texts, strict=True):
        ids = tok(text, truncation=True, max_length=MAX_TOKENS, add_special_tokens=not packed)["input_ids"]
        if packed:
            ids = [*ids, tok.sep_token_id]
        for p, t in enumerate(ids):
            out[(doc, p)] = t
    return out


def _collect(source, start: int = 0) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for b in source.batches(start=start):
        assert int(b.mask.sum()) == len(b.samples["doc"])
        assert np.array_equal(b.inputs["input_ids"][b.mask].numpy(), b.samples["token_id"])
        for k, v in b.samples.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _check_every_token_once(s: dict[str, np.ndarray], want: dict[tuple[int, int], int]) -> None:
    keys = list(zip(s["doc"].tolist(), s["pos"].tolist(), strict=True))
    assert len(keys) == len(set(keys)) == len(want)  # each token once, none missing
    order = np.lexsort((s["pos"], s["doc"]))
    want_keys = sorted(want)
    assert [keys[i] for i in order] == want_keys
    assert s["token_id"][order].tolist() == [want[k] for k in want_keys]


@pytest.mark.parametrize("budget", [64, 300, 4096])
def test_bucketed_batches_record_every_token_once(tok, corpus, budget):
    src = TextSource(corpus, tok, max_tokens=MAX_TOKENS, max_batch_tokens=budget, window=150)
    s = _collect(src)
    _check_every_token_once(s, _expected(tok, corpus, packed=False))
    # special tokens are [CLS] at pos 0 and [SEP] last, as in single-document tokenization
    assert set(s["token_id"][s["special"] == 1].tolist()) == {tok.cls_token_id, tok.sep_token_id}
    for b in src.batches():
        assert b.inputs["input_ids"].numel() <= budget  # the token budget holds, padding included
        docs = b.samples["doc"]
        firsts = docs[np.r_[True, docs[1:] != docs[:-1]]]
        assert np.all(np.diff(firsts) > 0)  # a batch lists its documents in corpus order


@pytest.mark.parametrize("n", [7, 64])
def test_packed_contexts_record_every_token_once(tok, corpus, n):
    src = TextSource(corpus, tok, max_tokens=MAX_TOKENS, pack=n, max_batch_tokens=4 * n)
    s = _collect(src)
    _check_every_token_once(s, _expected(tok, corpus, packed=True))
    total = len(s["doc"])
    assert len(src) == -(-total // n)  # items are contexts
    # contexts are filled in order: token i of the stream is in context i // n
    assert np.array_equal(s["ctx"], np.arange(total) // n)
    for b in src.batches():
        assert b.inputs["input_ids"].shape[1] == n
    # the separator closes each document and is its only special token
    sep = s["special"] == 1
    assert np.all(s["token_id"][sep] == tok.sep_token_id)
    assert sep.sum() == len(corpus)


def test_resume_start_continues_the_same_batches(tok, corpus):
    """batches(start=k) after k items yields exactly the rest of an uninterrupted pass, for
    every batch boundary k (what record's resume uses) and for a point inside a batch."""
    for kw in ({"max_batch_tokens": 200, "window": 64}, {"pack": 32, "max_batch_tokens": 96}):
        src = TextSource(corpus, tok, max_tokens=MAX_TOKENS, **kw)
        full = list(src.batches())
        done = 0
        for i, b in enumerate(full):
            rest = list(src.batches(start=done))
            assert len(rest) == len(full) - i
            for x, y in zip(rest, full[i:], strict=True):
                assert x.items == y.items
                for k in y.samples:
                    np.testing.assert_array_equal(x.samples[k], y.samples[k])
            done += b.items
    src = TextSource(corpus, tok, max_tokens=MAX_TOKENS, max_batch_tokens=200, window=64)
    first = next(iter(src.batches()))
    assert first.items > 2
    tail = next(iter(src.batches(start=2)))
    assert tail.items == first.items - 2  # the rest of the batch, then the plan goes on
    assert src.next_document(2) == tail.samples["doc"][0]


def test_bucket_plan_partitions_within_budget():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 130, size=1000)
    for budget, window in ((128, 1000), (512, 100), (4096, 37)):
        plan = bucket_plan(lengths, budget, window)
        flat = np.concatenate(plan)
        assert sorted(flat.tolist()) == list(range(1000))
        for b in plan:
            assert len(b) * lengths[b].max() <= budget or len(b) == 1  # a longer document goes alone
            assert np.all(np.diff(b) > 0)
            assert b.max() // window == b.min() // window  # a batch stays inside its window
        again = bucket_plan(lengths, budget, window)
        assert all(np.array_equal(x, y) for x, y in zip(plan, again, strict=True))


def test_padding_of_the_bundled_corpus_is_a_few_percent(tok):
    """Default settings (4,096-token budget, max 128 tokens): padding below 5% of the
    forward-pass slots, where corpus-order batches of 32 documents waste about 3/4."""
    corpus = load_corpus("default")
    bucket = TextSource(corpus, tok).stats()
    docs = TextSource(corpus, tok, batching="docs").stats()
    assert bucket["tokens"] == docs["tokens"]
    assert bucket["padding"] < 0.05, bucket
    assert docs["padding"] > 0.5, docs
    assert TextSource(corpus, tok, pack=128).stats()["padding"] < 0.01


def test_bucketed_summaries_equal_corpus_order_summaries(tmp_path, tok):
    """TinyText is position-wise, so a token's activations do not depend on its batch: the
    summaries of a bucketed recording equal those of a corpus-order one — counts and
    histograms exactly, moments to float rounding, top-k values exactly (the examples of tied
    values may differ: ties go to the smaller sample id, and sample ids follow batch order)."""
    corpus = load_corpus("default").head(200)
    runs = {}
    for mode, kw in (("docs", {"batching": "docs", "batch_size": 8}), ("bucket", {"max_batch_tokens": 96})):
        src = TextSource(corpus, tok, max_tokens=MAX_TOKENS, **kw)
        calib = TextSource(corpus.head(8), tok, max_tokens=MAX_TOKENS, batching="docs")
        # the same calibration rows for both (the first 8 documents), so histogram bins agree
        cal_acts = {}
        model = TinyText()
        for _b, acts in forward_batches(model, calib, "ff"):
            cal_acts = acts
        rec = Recorder({"ff": 48}, ns.SummaryConfig(token_slots=4096), calibration=cal_acts)
        run_pass(model, src, sites(model, "ff"), rec, progress=False)
        runs[mode] = rec.summaries["ff"].state()[0]
    a, b = runs["docs"], runs["bucket"]
    assert a.keys() == b.keys()
    for st in (a, b):  # token slots are taken in order of arrival: compare by token id
        order = np.argsort(st["tokens.ids"], kind="stable")
        for k in [k for k in st if k.startswith("tokens.") and len(st[k]) == len(order)]:
            st[k] = st[k][order]
    assert a["tokens.other_count"][0] == 0  # every token id has its own slot (exact, order-free)
    for k in a:
        if k.startswith("topk.") and not k.endswith("values"):
            continue
        if np.issubdtype(a[k].dtype, np.integer):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_record_stores_batching_and_padding(tmp_path, tok, small_corpus):
    src = TextSource(small_corpus, tok, max_tokens=32, max_batch_tokens=128)
    run = ns.record(TinyText(), src, "ff", out=tmp_path / "r.zarr", keep="summaries", progress=False)
    info = run.info()
    assert info["source"]["batching"] == "bucket" and info["source"]["max_batch_tokens"] == 128
    assert info["batching"]["tokens"] == run.n_samples
    assert 0.0 <= info["batching"]["padding"] < 0.2
    pk = TextSource(small_corpus, tok, max_tokens=32, pack=16, max_batch_tokens=64)
    run = ns.record(TinyText(), pk, "ff", out=tmp_path / "p.zarr", keep="activations", progress=False)
    assert run.config["source"]["pack"] == 16 and "ctx" in run.samples
    assert run.info()["items"] == len(pk)


@pytest.mark.parametrize(("kw", "match"), [
    ({"pack": 0}, "--pack must be a positive number of tokens"),
    ({"max_batch_tokens": 16}, r"smaller than the longest allowed document \(--max-tokens 64\); pass --max-batch-tokens 64"),
    ({"pack": 128, "max_batch_tokens": 64}, "cannot hold one packed context of 128 tokens"),
    ({"batching": "sorted"}, "batching must be one of bucket, docs, pack"),
    ({"pack": 1024, "max_batch_tokens": 4096}, "longer than the tokenizer's model_max_length"),
])
def test_bad_batching_options_are_one_line_errors(tok, kw, match):
    with pytest.raises(NeuronscopeError, match=match):
        TextSource(["a b c"], tok, max_tokens=64, **kw)


def test_record_threads_default_leaves_a_core_for_the_summaries(tmp_path, tok, small_corpus):
    import torch

    from neuronscope.recording import default_threads

    before = torch.get_num_threads()
    assert default_threads(overlap=True) == max(1, before - 1) and default_threads(overlap=False) == before
    src = TextSource(small_corpus, tok, max_tokens=32)
    ns.record(TinyText(), src, "ff", out=tmp_path / "t.zarr", keep="summaries", progress=False)
    assert torch.get_num_threads() == before  # restored
    with pytest.raises(NeuronscopeError, match="threads must be a positive number"):
        ns.record(TinyText(), src, "ff", out=tmp_path / "u.zarr", threads=0, progress=False)
