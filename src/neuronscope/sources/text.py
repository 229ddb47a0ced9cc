"""Text sources: a corpus of documents, tokenized and batched, one sample per real token."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch, encode_labels


def default_corpus_path() -> Path:
    """Path of the bundled corpus: 2,852 short dialogue lines in 20 languages (``lang``),
    from chatterbot-corpus (BSD-3; see ``data/CORPUS_LICENSE.md``)."""
    return Path(str(resources.files("neuronscope") / "data" / "corpus.jsonl"))


@dataclass
class Corpus:
    """Documents with optional per-document labels (e.g. ``lang``)."""

    texts: list[str]
    labels: dict[str, list[Any]] = field(default_factory=dict)
    name: str = "<memory>"

    def __len__(self) -> int:
        return len(self.texts)

    def categories(self) -> dict[str, list[str]]:
        """Sorted distinct values of each label field."""
        return {k: sorted({str(v) for v in vals if v is not None}) for k, vals in self.labels.items()}

    def fingerprint(self) -> str:
        """A content hash identifying the corpus (for resume checks)."""
        h = hashlib.blake2b(digest_size=16)
        for t in self.texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        for k in sorted(self.labels):
            h.update(k.encode())
            h.update(json.dumps(self.labels[k], default=str).encode())
        return h.hexdigest()


def load_corpus(corpus: str | Path | Sequence[str] | Corpus, text_field: str = "text") -> Corpus:
    """Read a corpus: a list of strings, a ``.txt`` file (one document per line), or a
    ``.jsonl`` file (one object per line with a ``text`` field; every other scalar field is a
    document label such as ``lang``). ``"default"`` names the bundled corpus."""
    if isinstance(corpus, Corpus):
        docs = corpus
    elif isinstance(corpus, str | Path) and str(corpus) == "default":
        return load_corpus(default_corpus_path(), text_field)
    elif isinstance(corpus, str | Path):
        path = Path(corpus)
        if not path.exists():
            raise NeuronscopeError(f"corpus file {path} does not exist; pass a .txt or .jsonl file")
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise NeuronscopeError(f"cannot read corpus file {path} ({e}); pass a readable UTF-8 .txt or .jsonl") from None
        lines = [ln for ln in raw.splitlines() if ln.strip()]
        if path.suffix == ".jsonl":
            texts: list[str] = []
            labels: dict[str, list[Any]] = {}
            for i, ln in enumerate(lines):
                try:
                    obj = json.loads(ln)
                except json.JSONDecodeError:
                    raise NeuronscopeError(f"{path}:{i + 1} is not valid JSON; each line must be an object with a '{text_field}' field") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise NeuronscopeError(f"{path}:{i + 1} has no string '{text_field}' field; each line needs one")
                texts.append(obj[text_field])
                for k, v in obj.items():
                    if k != text_field and (v is None or isinstance(v, str | int | float | bool)):
                        labels.setdefault(k, [None] * (len(texts) - 1)).append(v)
                for k in labels:
                    if len(labels[k]) < len(texts):
                        labels[k].append(None)
            docs = Corpus(texts, labels, name=str(path))
        else:
            docs = Corpus(lines, name=str(path))
    else:
        texts = list(corpus)
        if not all(isinstance(t, str) for t in texts):
            raise NeuronscopeError("a corpus given as a list must hold strings only")
        docs = Corpus(texts)
    if len(docs) == 0 or not any(t.strip() for t in docs.texts):
        raise NeuronscopeError(f"corpus {docs.name} is empty; give at least one non-empty document")
    _check_encodable(docs)
    return docs


def _check_encodable(docs: Corpus) -> None:
    """Refuse text a tokenizer cannot take: a lone UTF-16 surrogate (``"\\ud800"`` in JSON
    decodes to one) is not a Unicode scalar value and has no UTF-8 encoding."""
    for i, t in enumerate(docs.texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise NeuronscopeError(
                f"document {i + 1} of corpus {docs.name} holds a lone surrogate {t[e.start]!r} at character "
                f"{e.start}, which is not text; fix the encoding that wrote it (e.g. json.dumps of broken UTF-16)"
            ) from None


class TextSource:
    """Tokenize a corpus and batch it for a text model.

    One sample per real (non-padding) token; sample coordinates ``doc`` (document index),
    ``pos`` (token position), ``token_id`` and one int64 code array per label field. Documents
    are truncated to ``max_tokens`` tokens and never split across batches.
    """

    kind = "text"

    def __init__(
        self,
        corpus: str | Path | Sequence[str] | Corpus,
        tokenizer: Any,
        batch_size: int = 32,
        max_tokens: int = 128,
        label_categories: dict[str, list[str]] | None = None,
    ):
        if batch_size < 1 or max_tokens < 1:
            raise NeuronscopeError("batch_size and max_tokens must be positive integers")
        self.corpus = load_corpus(corpus)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        # fixed categories keep label codes identical across shards of one corpus
        self.label_categories = dict(label_categories) if label_categories else self.corpus.categories()
        self._codes = {
            k: encode_labels(v, self.label_categories[k]) for k, v in self.corpus.labels.items()
        }

    def __len__(self) -> int:
        return len(self.corpus)

    def describe(self) -> dict[str, Any]:
        """JSON description of the source (part of the run configuration)."""
        return {
            "kind": self.kind,
            "corpus": self.corpus.name,
            "documents": len(self.corpus),
            "fingerprint": self.corpus.fingerprint(),
            "labels": self.label_categories,
            "batch_size": self.batch_size,
            "max_tokens": self.max_tokens,
        }

    def vocab(self) -> list[str]:
        """Token strings by token id."""
        tok = self.tokenizer
        n = len(tok)
        return [str(t) for t in tok.convert_ids_to_tokens(list(range(n)))]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches of documents starting at document index ``start``."""
        texts = self.corpus.texts
        for b0 in range(start, len(texts), self.batch_size):
            chunk = texts[b0 : b0 + self.batch_size]
            enc = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            mask = enc["attention_mask"].to(torch.bool)
            ids = enc["input_ids"]
            lengths = mask.sum(dim=1).numpy()
            doc = np.repeat(np.arange(b0, b0 + len(chunk), dtype=np.int64), lengths)
            pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)[mask.numpy()]
            samples = {"doc": doc, "pos": np.ascontiguousarray(pos), "token_id": ids[mask].numpy().astype(np.int64)}
            for k, codes in self._codes.items():
                samples[k] = np.repeat(codes[b0 : b0 + len(chunk)], lengths)
            yield Batch(inputs=dict(enc), mask=mask, samples=samples, items=len(chunk))
