"""Labels from outside the corpus: a per-document labels file and a token -> label function."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.recording import record
from neuronscope.sources.labels import LabeledSource, read_doc_labels
from neuronscope.sources.text import TextSource
from neuronscope.testing.tinylm import ByteTokenizer

TEXTS = ["ab12", "zz 7", "hello", "99 bottles", "x", "4 u"]


class ByteBag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.emb = torch.nn.Embedding(259, 6)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(259, 6, generator=g))
        self.act = torch.nn.Identity()

    def forward(self, input_ids, attention_mask=None):
        return self.act(self.emb(input_ids))


def test_read_doc_labels_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"topic": "x", "n": 1}\n{"topic": null}\n{"other": "y"}\n')
    assert read_doc_labels(tmp_path / "a.jsonl") == {"topic": ["x", None, None], "n": [1, None, None],
                                                     "other": [None, None, "y"]}
    (tmp_path / "b.csv").write_text("topic,mood\nx,happy\n,sad\ny\n")
    assert read_doc_labels(tmp_path / "b.csv") == {"topic": ["x", None, "y"], "mood": ["happy", "sad", None]}
    (tmp_path / "topic.txt").write_text("x\n\ny\n")
    assert read_doc_labels(tmp_path / "topic.txt") == {"topic": ["x", None, "y"]}
    with pytest.raises(NeuronscopeError, match="does not exist"):
        read_doc_labels(tmp_path / "nope.csv")


def test_doc_and_token_labels_reach_the_per_label_summaries(tmp_path):
    lab = tmp_path / "labels.jsonl"
    topics = ["num", "num", "word", "num", "word", None]
    lab.write_text("\n".join(json.dumps({"topic": t}) for t in topics) + "\n")
    src = LabeledSource(TextSource(TEXTS, ByteTokenizer(32), batch_size=4), lab,
                        token_labels={"digit": lambda t: None if t.startswith("<") else ("d" if t.isdigit() else "o")})
    assert src.label_categories == {"topic": ["num", "word"], "digit": ["d", "o"]}
    run = record(ByteBag(), src, "act", tmp_path / "r.zarr", dtype="float32", progress=False)
    pop = run.population()
    x = np.asarray(pop.values, dtype=np.float64)
    topic, digit, tid, doc = (np.asarray(pop[k].values) for k in ("topic", "digit", "token_id", "doc"))
    np.testing.assert_array_equal(topic, [topics[d] or "" for d in doc])
    tok = ByteTokenizer(32)
    want = ["" if t >= 256 else ("d" if chr(t).isdigit() else "o") for t in tid]
    np.testing.assert_array_equal(digit, want)
    r = run.summaries("act").result()
    for field, cats, v in (("topic", ["num", "word"], topic), ("digit", ["d", "o"], digit)):
        for j, c in enumerate(cats):
            np.testing.assert_allclose(r[f"label_moments.{field}.mean"][j], x[v == c].mean(0), rtol=1e-9)
            np.testing.assert_allclose(r[f"label_moments.{field}.var"][j], x[v == c].var(0), rtol=1e-8, atol=1e-12)
    assert run.config["source"]["label_file"] == str(lab.resolve())
    assert tok.convert_ids_to_tokens([ord("7")]) == ["7"]


def test_bad_label_inputs(tmp_path):
    base = TextSource(TEXTS, ByteTokenizer(32))
    with pytest.raises(NeuronscopeError, match="6 documents"):
        LabeledSource(base, {"topic": ["a", "b"]})
    with pytest.raises(NeuronscopeError, match="given twice"):
        LabeledSource(base, {"t": ["a"] * 6}, {"t": str})
