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
    """Documents with optional per-document labels (e.g. ``lang``).

    ``doc_ids`` numbers the documents (the ``doc`` sample coordinate): for a file read by
    :func:`load_corpus`, the 0-based line index of each document in the file (blank lines
    are skipped but counted); for a list of strings, the list index. Default ``0 .. n-1``.
    """

    texts: list[str]
    labels: dict[str, list[Any]] = field(default_factory=dict)
    name: str = "<memory>"
    doc_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.doc_ids is None:
            self.doc_ids = list(range(len(self.texts)))
        else:
            self.doc_ids = [int(d) for d in self.doc_ids]
        if len(self.doc_ids) != len(self.texts) or len(set(self.doc_ids)) != len(self.doc_ids):
            raise NeuronscopeError("doc_ids must give one distinct id per document; pass one int per text")

    def __len__(self) -> int:
        return len(self.texts)

    def ids(self) -> list[int]:
        """The id of each document of ``texts`` (``doc_ids``; a corpus whose ``texts`` were cut
        by hand, ``corpus.texts = corpus.texts[:n]``, keeps the first ``n`` ids)."""
        ids = self.doc_ids or []
        if len(ids) < len(self.texts):
            raise NeuronscopeError("the corpus has more texts than doc_ids; cut a corpus with Corpus.head(n)")
        return ids[: len(self.texts)]

    def head(self, n: int) -> Corpus:
        """The first ``n`` documents, keeping their ids and labels."""
        return Corpus(self.texts[:n], {k: v[:n] for k, v in self.labels.items()}, self.name, self.ids()[:n])

    def categories(self) -> dict[str, list[str]]:
        """Sorted distinct values of each label field."""
        return {k: sorted({str(v) for v in vals if v is not None}) for k, vals in self.labels.items()}

    def fingerprint(self) -> str:
        """A content hash identifying the corpus (for resume checks and for aligning runs of
        the same corpus); document ids enter it when they are not ``0 .. n-1``."""
        h = hashlib.blake2b(digest_size=16)
        for t in self.texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        for k in sorted(self.labels):
            h.update(k.encode())
            h.update(json.dumps(self.labels[k], default=str).encode())
        ids = self.ids()
        if ids != list(range(len(self.texts))):
            h.update(b"doc_ids")
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
        return h.hexdigest()


def corpus_lines(raw: str) -> list[tuple[int, str]]:
    """``(line index, line)`` of the non-blank lines of a file's text.

    Lines end only at ``\\n`` (a ``\\r`` before it is stripped): unlike ``str.splitlines``,
    U+2028/U+2029, U+0085, ``\\x0b``, ``\\x0c`` and the ``\\x1c``–``\\x1e`` separators stay
    inside their line. A line holding only whitespace is blank: skipped, but it keeps its
    number, so the index is the line's 0-based number in the file.
    """
    out = []
    for i, ln in enumerate(raw.split("\n")):
        if ln.endswith("\r"):
            ln = ln[:-1]
        if ln.strip():
            out.append((i, ln))
    return out


def load_corpus(corpus: str | Path | Sequence[str] | Corpus, text_field: str = "text") -> Corpus:
    """Read a corpus: a list of strings, a ``.txt`` file (one document per line), or a
    ``.jsonl`` file (one object per line with a ``text`` field; every other scalar field is a
    document label such as ``lang``). ``"default"`` names the bundled corpus.

    A document's id (``Corpus.doc_ids``, the ``doc`` coordinate of its samples) is its 0-based
    line number in the file: lines split on ``\\n`` only (:func:`corpus_lines`), blank lines
    skipped but counted; for a list, the list index."""
    if isinstance(corpus, Corpus):
        docs = corpus
    elif isinstance(corpus, str | Path) and str(corpus) == "default":
        return load_corpus(default_corpus_path(), text_field)
    elif isinstance(corpus, str | Path):
        path = Path(corpus)
        if not path.exists():
            raise NeuronscopeError(f"corpus file {path} does not exist; pass a .txt or .jsonl file")
        try:
            # newline="": no universal-newline translation (a lone \r is not a line break)
            with open(path, encoding="utf-8-sig", newline="") as f:
                raw = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise NeuronscopeError(f"cannot read corpus file {path} ({e}); pass a readable UTF-8 .txt or .jsonl") from None
        lines = corpus_lines(raw)
        ids = [i for i, _ in lines]
        if path.suffix == ".jsonl":
            texts: list[str] = []
            labels: dict[str, list[Any]] = {}
            for i, ln in lines:
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
            docs = Corpus(texts, labels, name=str(path), doc_ids=ids)
        else:
            docs = Corpus([ln for _, ln in lines], name=str(path), doc_ids=ids)
    else:
        texts = list(corpus)
        if not all(isinstance(t, str) for t in texts):
            raise NeuronscopeError("a corpus given as a list must hold strings only")
        docs = Corpus(texts)
    if len(docs) == 0 or not any(t.strip() for t in docs.texts):
        raise NeuronscopeError(f"corpus {docs.name} is empty; give at least one non-empty document")
    _check_encodable(docs)
    return docs


#: Code points that ``str.isspace`` calls whitespace (what a token's character span is trimmed of).
_SPACE_CODEPOINTS = np.array(
    [0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
     0x2028, 0x2029, 0x202F, 0x205F, 0x3000],
    dtype=np.uint32,
)


def content_spans(texts: Sequence[str], doc_index: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Character spans ``[start, end)`` (tokenizer offsets into ``texts[doc_index]``) with
    leading and trailing whitespace removed (``str.isspace``), vectorised over a batch.

    SentencePiece tokens absorb the space before them (``▁w`` of ``" w"``); trimmed, every
    tokenizer's span covers only the characters the token stands for, so spans of two
    tokenizers can be compared. A span of whitespace only becomes the empty span
    ``(end, end)``.
    """
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if not len(start):
        return start.copy(), end.copy()
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    base = np.r_[0, np.cumsum(lengths)]
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    total = len(cps)
    nonspace = ~np.isin(cps, _SPACE_CODEPOINTS)
    at = np.arange(total, dtype=np.int64)
    # first non-space index >= i (total if none), for i = 0..total
    nxt = np.r_[np.minimum.accumulate(np.where(nonspace, at, total)[::-1])[::-1], total]
    # one past the last non-space index < i (0 if none), for i = 0..total
    prv = np.r_[0, np.maximum.accumulate(np.where(nonspace, at + 1, 0))]
    b = base[doc_index]
    gs, ge = b + start, b + end
    s2 = np.minimum(nxt[gs], ge)
    e2 = np.where(s2 >= ge, ge, prv[ge])
    return s2 - b, np.maximum(e2, s2) - b


def _special_ids(tokenizer: Any) -> np.ndarray:
    """Ids of the tokens a tokenizer adds around the text (CLS/SEP/BOS/EOS/padding), for
    tokenizers that cannot return a special-tokens mask; unknown-word tokens are not special."""
    ids = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "cls", "sep", "pad")}
    return np.array(sorted(i for i in ids if isinstance(i, int)), dtype=np.int64)


def tokenizer_features(tokenizer: Any) -> dict[str, bool]:
    """Which extras the tokenizer returns: ``offsets`` (``return_offsets_mapping=True``: Hugging
    Face fast tokenizers, ``ByteTokenizer``) and ``special_mask``
    (``return_special_tokens_mask=True``)."""
    out = {}
    for key, kw, field_ in (("offsets", "return_offsets_mapping", "offset_mapping"),
                            ("special_mask", "return_special_tokens_mask", "special_tokens_mask")):
        try:
            enc = tokenizer(["a b"], padding=True, truncation=True, max_length=8, **{kw: True})
            out[key] = field_ in enc
        except (NotImplementedError, TypeError, ValueError, KeyError):
            out[key] = False
    return out


def _tokenizer_name(tokenizer: Any) -> str:
    """The tokenizer's class and vocabulary size (no path: a run stays resumable elsewhere)."""
    try:
        return f"{type(tokenizer).__name__}(vocab={len(tokenizer)})"
    except TypeError:
        return type(tokenizer).__name__


def _check_encodable(docs: Corpus) -> None:
    """Refuse text a tokenizer cannot take: a lone UTF-16 surrogate (``"\\ud800"`` in JSON
    decodes to one) is not a Unicode scalar value and has no UTF-8 encoding."""
    for doc, t in zip(docs.ids(), docs.texts, strict=True):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise NeuronscopeError(
                f"document {doc} of corpus {docs.name} holds a lone surrogate {t[e.start]!r} at character "
                f"{e.start}, which is not text; fix the encoding that wrote it (e.g. json.dumps of broken UTF-16)"
            ) from None


class TextSource:
    """Tokenize a corpus and batch it for a text model.

    One sample per real (non-padding) token, special tokens included; sample coordinates:

    * ``doc`` — the document's id (:attr:`Corpus.doc_ids`: its line number in the corpus file);
    * ``pos`` — token position in the model input (0 = the first token, e.g. ``[CLS]``/``<s>``/BOS);
    * ``token_id``;
    * ``special`` — 1 for tokens the tokenizer adds around the text (``[CLS]``, ``[SEP]``,
      ``<s>``, ``</s>``, BOS), 0 for tokens of the text (``[UNK]`` included);
    * ``char_start``, ``char_end`` — when the tokenizer gives offsets (Hugging Face fast
      tokenizers, ``ByteTokenizer``): the ``[start, end)`` character span of the token in its
      document with surrounding whitespace removed (:func:`content_spans`; -1 for special
      tokens). They let runs and models with different tokenizers be aligned by character
      span (:mod:`neuronscope.sources.align`);
    * one int64 code array per label field.

    Documents are truncated to ``max_tokens`` tokens and never split across batches.
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
        self._features = tokenizer_features(tokenizer)
        self._special_ids = _special_ids(tokenizer)

    @property
    def offsets(self) -> bool:
        """Whether samples carry ``char_start`` / ``char_end`` (the tokenizer gives offsets)."""
        return self._features["offsets"]

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
            "tokenizer": _tokenizer_name(self.tokenizer),
            "offsets": self.offsets,
        }

    def vocab(self) -> list[str]:
        """Token strings by token id."""
        tok = self.tokenizer
        n = len(tok)
        return [str(t) for t in tok.convert_ids_to_tokens(list(range(n)))]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches of documents starting at document index ``start`` (the position in
        the corpus, not the ``doc`` id)."""
        texts = self.corpus.texts
        doc_ids = np.asarray(self.corpus.ids(), dtype=np.int64)
        extra = {}
        if self._features["offsets"]:
            extra["return_offsets_mapping"] = True
        if self._features["special_mask"]:
            extra["return_special_tokens_mask"] = True
        for b0 in range(start, len(texts), self.batch_size):
            chunk = texts[b0 : b0 + self.batch_size]
            enc = dict(self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
                **extra,
            ))
            offsets = enc.pop("offset_mapping", None)
            special_mask = enc.pop("special_tokens_mask", None)
            mask = enc["attention_mask"].to(torch.bool)
            ids = enc["input_ids"]
            m = mask.numpy()
            lengths = m.sum(axis=1)
            doc = np.repeat(doc_ids[b0 : b0 + len(chunk)], lengths)
            pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)[m]
            token_id = ids[mask].numpy().astype(np.int64)
            if special_mask is not None:
                special = np.asarray(special_mask)[m].astype(np.int64)
            else:
                special = np.isin(token_id, self._special_ids).astype(np.int64)
            samples = {"doc": doc, "pos": np.ascontiguousarray(pos), "token_id": token_id, "special": special}
            if offsets is not None:
                off = np.asarray(offsets, dtype=np.int64)[m]
                local = np.repeat(np.arange(len(chunk)), lengths)
                cs, ce = content_spans(chunk, local, off[:, 0], off[:, 1])
                samples["char_start"] = np.where(special == 1, -1, cs)
                samples["char_end"] = np.where(special == 1, -1, ce)
            for k, codes in self._codes.items():
                samples[k] = np.repeat(codes[b0 : b0 + len(chunk)], lengths)
            yield Batch(inputs=enc, mask=mask, samples=samples, items=len(chunk))
