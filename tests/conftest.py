"""Shared fixtures: the packaged MiniLM (loaded once) and small real corpora."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of the packaged all-MiniLM-L6-v2."""
    from neuronscope.specs import load_model

    return load_model("minilm")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The first 48 documents of the bundled corpus as a .jsonl file (with `lang`)."""
    from neuronscope.sources.text import default_corpus_path

    lines = default_corpus_path().read_text(encoding="utf-8").splitlines()[:48]
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert all("text" in json.loads(ln) for ln in lines)
    return path


@pytest.fixture(scope="session")
def e5():
    """(model, tokenizer) of multilingual-e5-small (XLM-R SentencePiece tokenizer)."""
    from neuronscope.specs import load_model

    return load_model("e5-small")
