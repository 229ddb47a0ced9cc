"""Corpora, document numbering, token spans and the alignment of different tokenizations
(no forward pass here: tokenizers and hand-made spans only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from aligning import content_span, segments, tokens_of

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.align import Plan, first_disagreement, plan_alignment
from neuronscope.sources.text import Corpus, TextSource, load_corpus
from neuronscope.testing.tinylm import ByteTokenizer

# --------------------------------------------------------------------------- documents


def test_doc_is_the_line_number_and_only_newline_ends_a_line(tmp_path: Path) -> None:
    raw = ("first\n"
           "\n"
           "second\u2028still second\u2029and\u0085more\r\n"
           "   \t\n"
           "third\x0bx\x0cy\x1cz\rw\n"
           "\n")
    path = tmp_path / "c.txt"
    path.write_bytes(raw.encode("utf-8"))
    c = load_corpus(path)
    assert c.texts == ["first", "second\u2028still second\u2029and\u0085more", "third\x0bx\x0cy\x1cz\rw"]
    assert c.doc_ids == [0, 2, 4]
    # the samples' doc coordinate is the line number, in every batch
    src = TextSource(c, ByteTokenizer(), batch_size=2, max_tokens=64)
    docs = np.concatenate([b.samples["doc"] for b in src.batches()])
    assert list(dict.fromkeys(docs.tolist())) == [0, 2, 4]
    assert (docs == 2).sum() == 1 + len("second\u2028still second\u2029and\u0085more".encode())
    assert [b.samples["doc"][0] for b in src.batches(start=1)] == [2]


def test_jsonl_record_index_is_the_line_number_and_u2028_loads(tmp_path: Path) -> None:
    rec = [{"text": "a\u2028b", "lang": "en"}, {"text": "c\x85d", "lang": "de"}]
    lines = [json.dumps(rec[0], ensure_ascii=False), "", json.dumps(rec[1], ensure_ascii=False), "  "]
    assert "\u2028" in lines[0]  # written raw, as valid JSONL may hold it
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = load_corpus(path)
    assert c.texts == ["a\u2028b", "c\x85d"] and c.doc_ids == [0, 2] and c.labels == {"lang": ["en", "de"]}
    path.write_text(lines[0] + "\n\n\n{broken\n", encoding="utf-8")
    with pytest.raises(NeuronscopeError, match=r"c\.jsonl:4 is not valid JSON"):
        load_corpus(path)


def test_doc_ids_enter_the_fingerprint_and_survive_head() -> None:
    a = Corpus(["x", "y"])
    b = Corpus(["x", "y"], doc_ids=[0, 2])
    assert a.fingerprint() == Corpus(["x", "y"], doc_ids=[0, 1]).fingerprint() != b.fingerprint()
    assert b.head(1).doc_ids == [0] and b.head(5).texts == ["x", "y"]
    with pytest.raises(NeuronscopeError, match="one distinct id per document"):
        Corpus(["x", "y"], doc_ids=[3, 3])


# --------------------------------------------------------------------------- spans of real tokenizers

TEXTS = ["Hello,  wörld! ab-cd", "x\x00y  ", "a 😀 b [SEP] c", " lead and\u2028trail\u3000", "naïve café Ωmega"]


@pytest.mark.parametrize("which", ["minilm", "e5", "bytes"])
def test_samples_carry_special_flags_and_trimmed_spans(which: str, request: pytest.FixtureRequest) -> None:
    tok = ByteTokenizer() if which == "bytes" else request.getfixturevalue(which)[1]
    src = TextSource(TEXTS, tok, batch_size=2, max_tokens=64)
    assert src.offsets and src.describe()["offsets"] is True
    ref = tokens_of(tok, TEXTS, 64)
    got = {k: np.concatenate([b.samples[k] for b in src.batches()]) for k in ("doc", "special", "char_start", "char_end")}
    want = [(d, *t) for d, toks in enumerate(ref) for t in toks]
    assert got["doc"].tolist() == [w[0] for w in want]
    assert got["special"].tolist() == [int(w[1]) for w in want]
    real = got["special"] == 0
    assert got["char_start"][real].tolist() == [w[2] for w in want if not w[1]]
    assert got["char_end"][real].tolist() == [w[3] for w in want if not w[1]]
    assert (got["char_start"][~real] == -1).all() and (got["char_end"][~real] == -1).all()
    # every document starts with its special token, and a span never starts or ends on a space
    assert all(got["special"][got["doc"] == d][0] == 1 for d in range(len(TEXTS)))
    for d, s, e in zip(got["doc"][real], got["char_start"][real], got["char_end"][real], strict=True):
        piece = TEXTS[d][s:e]
        assert piece == piece.strip()


def test_e5_spans_drop_the_absorbed_space(e5) -> None:
    src = TextSource(["Hello,  wörld"], e5[1], max_tokens=32)
    b = next(src.batches())
    real = b.samples["special"] == 0
    spans = list(zip(b.samples["char_start"][real].tolist(), b.samples["char_end"][real].tolist(), strict=True))
    assert spans == [(0, 5), (5, 6), (8, 9), (9, 11), (11, 13)]  # "▁w" is (7, 9) in e5's offsets
    assert content_span("Hello,  wörld", 7, 9) == (8, 9)


# --------------------------------------------------------------------------- plans, closed form


def _samples(doc, special, spans):
    return {"doc": np.array(doc), "special": np.array(special), "pos": np.arange(len(doc)),
            "char_start": np.array([s for s, _ in spans]), "char_end": np.array([e for _, e in spans])}


# "Hello,  wörld": [CLS] hello , world [SEP]  against  <s> ▁Hello , ▁w ör ld </s>
A = _samples([0] * 5, [1, 0, 0, 0, 1], [(-1, -1), (0, 5), (5, 6), (8, 13), (-1, -1)])
B = _samples([0] * 7, [1, 0, 0, 0, 0, 0, 1], [(-1, -1), (0, 5), (5, 6), (8, 9), (9, 11), (11, 13), (-1, -1)])


def test_char_span_and_word_segments_closed_form() -> None:
    plans, coords = plan_alignment([A, B], "char-span")
    assert list(zip(coords["char_start"], coords["char_end"], strict=True)) == [(0, 5), (5, 6), (8, 13)]
    assert plans[0].group.tolist() == [-1, 0, 1, 2, -1]
    assert plans[1].group.tolist() == [-1, 0, 1, 2, 2, 2, -1]
    plans, coords = plan_alignment([A, B], "word")
    assert list(zip(coords["char_start"], coords["char_end"], strict=True)) == [(0, 6), (8, 13)]
    assert plans[1].group.tolist() == [-1, 0, 0, 1, 1, 1, -1] and coords["doc"].tolist() == [0, 0]
    acts = np.arange(14, dtype=np.float32).reshape(7, 2)  # token t has (2t, 2t+1)
    np.testing.assert_array_equal(plans[1].apply(acts, "mean"), [[3, 4], [8, 9]])
    np.testing.assert_array_equal(plans[1].apply(acts, "max"), [[4, 5], [10, 11]])
    np.testing.assert_array_equal(plans[1].apply(acts, "last"), [[4, 5], [10, 11]])
    plans, coords = plan_alignment([A, B], "doc")
    assert coords["doc"].tolist() == [0] and plans[0].group.tolist() == [-1, 0, 0, 0, -1]
    np.testing.assert_array_equal(plans[1].apply(acts, "mean"), [[6, 7]])  # tokens 1..5, specials out


def test_truncation_keeps_only_text_both_cover() -> None:
    # B truncated to 4 tokens: <s> ▁Hello , ▁w — it covers the text up to character 9
    b = {k: v[:4] for k, v in B.items()}
    _, coords = plan_alignment([A, b], "char-span", max_tokens=[64, 4])
    assert list(zip(coords["char_start"], coords["char_end"], strict=True)) == [(0, 5), (5, 6)]
    plans, _ = plan_alignment([A, b], "doc", max_tokens=[64, 4])
    # doc rows pool tokens that start in the covered text
    assert plans[0].group.tolist() == [-1, 0, 0, 0, -1] and plans[1].group.tolist() == [-1, 0, 0, 0]
    # with max_tokens 64, 4 tokens are the whole document: "wörld" is B's "▁w", kept
    _, coords = plan_alignment([A, b], "char-span", max_tokens=[64, 64])
    assert coords["char_end"].tolist() == [5, 6, 13]


def test_token_level_needs_identical_tokenizations() -> None:
    assert first_disagreement(A, A) is None
    assert first_disagreement(A, B) == "document 0: 5 vs 7 tokens"
    moved = dict(A, char_end=np.array([-1, 5, 6, 12, -1]))
    assert first_disagreement(A, moved) == "document 0: same token count, different character spans"
    with pytest.raises(NeuronscopeError, match="align by word, char-span or doc"):
        plan_alignment([A, B], "token")
    plans, _ = plan_alignment([A, A], "token")
    assert plans[0].identity and plans[0].n == 5
    nospans = {k: v for k, v in A.items() if not k.startswith("char")}
    with pytest.raises(NeuronscopeError, match="align by doc"):
        plan_alignment([A, nospans], "word")


def test_plan_apply_on_document_slices_equals_whole() -> None:
    rng = np.random.default_rng(0)
    plan = Plan(np.array([-1, 0, 0, -1, 1, 2, 2, 2, -1, 3]), 4)
    acts = rng.standard_normal((10, 3)).astype(np.float32)
    whole = plan.apply(acts, "mean")
    parts = np.concatenate([plan.apply(acts[:4], "mean", 0), plan.apply(acts[4:], "mean", 4)])
    np.testing.assert_allclose(parts, whole)
    assert plan.rows_in(4, 10).tolist() == [1, 2, 3]


# --------------------------------------------------------------------------- plans on real tokenizers


@pytest.mark.parametrize("level", ["char-span", "word"])
@pytest.mark.parametrize("max_tokens", [64, 9])
def test_segments_equal_brute_force_on_three_tokenizers(minilm, e5, small_corpus, level, max_tokens) -> None:
    texts = load_corpus(small_corpus).texts[:24] + TEXTS
    toks = [minilm[1], e5[1], ByteTokenizer()]
    srcs = [TextSource(texts, t, batch_size=5, max_tokens=max_tokens, batching="docs") for t in toks]  # rows in corpus order
    samples = [{k: np.concatenate([b.samples[k] for b in s.batches()]) for k in ("doc", "special", "char_start", "char_end")}
               for s in srcs]
    plans, coords = plan_alignment(samples, level, [max_tokens] * 3)
    ref = segments(texts, [tokens_of(t, texts, max_tokens) for t in toks], [max_tokens] * 3, word=level == "word")
    assert [(int(d), int(s), int(e)) for d, s, e in zip(coords["doc"], coords["char_start"], coords["char_end"], strict=True)] \
        == [(d, s, e) for d, s, e, _ in ref]
    for m, plan in enumerate(plans):
        start = np.r_[0, np.cumsum(np.bincount(samples[m]["doc"]))]  # first row of each document
        want = np.full(len(plan.group), -1)
        for row, (d, _, _, per) in enumerate(ref):
            want[start[d] + np.array(per[m])] = row
        np.testing.assert_array_equal(plan.group, want)
    if level == "word" and max_tokens == 64:
        # documents no tokenizer truncated: the words are the whitespace-separated words
        whole = [d for d in range(24) if all((s["doc"] == d).sum() < max_tokens for s in samples)]
        assert len(whole) > 12
        words = [texts[d][s:e] for d, s, e in zip(coords["doc"], coords["char_start"], coords["char_end"], strict=True)
                 if d in whole]
        assert words == [w for d in whole for w in texts[d].split()]
