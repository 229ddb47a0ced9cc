"""Text sources: a corpus of documents, tokenized and batched, one sample per real token."""

from __future__ import annotations

import copy
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


#: How :class:`TextSource` forms batches (see its docstring).
BATCHING = ("bucket", "docs", "pack")
#: Documents per bucketing window: documents are sorted by length only within a window of
#: this many consecutive documents, so a batch never mixes documents far apart in the corpus.
DEFAULT_WINDOW = 2048
_TOKENIZE_CHUNK = 1024


#: The cost of one extra forward pass, in padded tokens, that :func:`bucket_plan` weighs
#: against padding (measured on MiniLM, 2 cores: a batch costs about as much as 64 tokens).
BATCH_OVERHEAD_TOKENS = 64


def bucket_plan(lengths: np.ndarray, max_batch_tokens: int, window: int = DEFAULT_WINDOW,
                overhead: int = BATCH_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Length-bucketed batches under a token budget: a list of arrays of document indices.

    The documents ``0 .. n-1`` (token counts ``lengths``) are cut into windows of ``window``
    consecutive documents. In each window the documents are sorted by (length, index) and the
    sorted run is cut into batches ``[a, b)`` whose padded size ``(b − a) · ℓ_{b−1}`` stays
    within ``max_batch_tokens``, choosing the cuts by dynamic programming to minimise

        Σ_batches ((b − a) · ℓ_{b−1} + overhead)

    (padded tokens plus a per-forward-pass cost; the optimal partition of a sorted sequence
    into contiguous groups, as in Jenks' natural breaks / 1-D k-segmentation). Each batch
    lists its documents in corpus order; a window's batches are ordered by their first
    document. The plan is a pure function of ``(lengths, max_batch_tokens, window,
    overhead)``; every document is in exactly one batch. This is the "bucketing" of Khomenko
    et al. 2016 (*Accelerating recurrent neural network training using sequence bucketing
    and multi-GPU data parallelization*) and Hugging Face's ``group_by_length``, with the
    buckets chosen optimally instead of by fixed size.
    """
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    n = len(lengths)
    plan: list[np.ndarray] = []
    for w0 in range(0, n, window):
        idx = np.arange(w0, min(n, w0 + window))
        order = idx[np.argsort(lengths[idx], kind="stable")]
        sl = lengths[order]
        m = len(order)
        best = np.zeros(m + 1, dtype=np.int64)
        cut = np.zeros(m + 1, dtype=np.int64)
        for b in range(1, m + 1):
            top = int(sl[b - 1])
            lo = max(0, b - max(1, max_batch_tokens // top))
            a = np.arange(lo, b)
            cost = best[lo:b] + (b - a) * top + overhead
            j = int(np.argmin(cost))  # first minimum: deterministic
            best[b], cut[b] = cost[j], lo + j
        out: list[np.ndarray] = []
        b = m
        while b > 0:
            a = int(cut[b])
            out.append(np.sort(order[a:b]))
            b = a
        out.sort(key=lambda x: int(x[0]))
        plan.extend(out)
    return plan


class TextSource:
    """Tokenize a corpus and batch it for a text model.

    One sample per real (non-padding) token, special tokens included; sample coordinates:

    * ``doc`` — the document's id (:attr:`Corpus.doc_ids`: its line number in the corpus file);
    * ``pos`` — token position in the model input (0 = the first token, e.g. ``[CLS]``/``<s>``/BOS);
      with ``pack``, the token's position in its document's token stream (0 = its first token);
    * ``ctx`` — with ``pack`` only: the index of the packed context the token was in;
    * ``token_id``;
    * ``special`` — 1 for tokens the tokenizer adds around the text (``[CLS]``, ``[SEP]``,
      ``<s>``, ``</s>``, BOS), 0 for tokens of the text (``[UNK]`` included);
    * ``char_start``, ``char_end`` — when the tokenizer gives offsets (Hugging Face fast
      tokenizers, ``ByteTokenizer``): the ``[start, end)`` character span of the token in its
      document with surrounding whitespace removed (:func:`content_spans`; -1 for special
      tokens). They let runs and models with different tokenizers be aligned by character
      span (:mod:`neuronscope.sources.align`);
    * one int64 code array per label field.

    Documents are truncated to ``max_tokens`` tokens. Batching (``batching``, all part of
    :meth:`describe` and so of a run's configuration):

    * ``"bucket"`` (default): batches of up to ``max_batch_tokens`` padded tokens (default
      ``batch_size × max_tokens``, the most a ``"docs"`` batch can hold), documents of similar
      length together within windows of ``window`` documents (:func:`bucket_plan`); padding
      is a few percent instead of half or more. A batch lists its documents in corpus order;
      documents are never split.
    * ``"docs"``: ``batch_size`` documents per batch in corpus order, each batch padded to its
      longest document (the batching of neuronscope before 0.16).
    * ``"pack"`` (``pack=N``): the documents' tokens (no special tokens, truncated to
      ``max_tokens``), each document followed by the tokenizer's separator token
      (``sep_token``, else ``eos_token``; ``special`` = 1), concatenated and cut into contexts
      of ``N`` tokens — the layout of TransformerLens's ``tokenize_and_concatenate`` and
      SAELens — with ``max_batch_tokens // N`` contexts per batch. No padding except in the last
      context. A document may span two contexts; ``doc``/``pos`` still name it and the token's
      position in it, ``ctx`` the context. Items (``len``, resume) are contexts.

    ``batches(start)`` continues after ``start`` items in this order, so a resumed recording
    is identical to an uninterrupted one.
    """

    kind = "text"

    def __init__(
        self,
        corpus: str | Path | Sequence[str] | Corpus,
        tokenizer: Any,
        batch_size: int = 32,
        max_tokens: int = 128,
        label_categories: dict[str, list[str]] | None = None,
        *,
        batching: str | None = None,
        max_batch_tokens: int | None = None,
        window: int = DEFAULT_WINDOW,
        pack: int | None = None,
    ):
        if batch_size < 1 or max_tokens < 1:
            raise NeuronscopeError("batch_size and max_tokens must be positive integers")
        if batching is None:
            batching = "pack" if pack is not None else "bucket"
        check_batching(batching, max_tokens, max_batch_tokens, window, pack, batch_size)
        self.corpus = load_corpus(corpus)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.batching = batching
        self.max_batch_tokens = int(max_batch_tokens) if max_batch_tokens else batch_size * max_tokens
        self.window = int(window)
        self.pack = int(pack) if pack is not None else None
        # fixed categories keep label codes identical across shards of one corpus
        self.label_categories = dict(label_categories) if label_categories else self.corpus.categories()
        self._codes = {
            k: encode_labels(v, self.label_categories[k]) for k, v in self.corpus.labels.items()
        }
        self._features = tokenizer_features(tokenizer)
        self._special_ids = _special_ids(tokenizer)
        self._lengths: np.ndarray | None = None
        self._doc_ids: np.ndarray | None = None
        self._plan: list[np.ndarray] | None = None
        self._fixed: list[np.ndarray] | None = None  # a plan given by with_plan
        if self.pack is not None:
            self._sep = _separator_id(tokenizer)
            limit = getattr(tokenizer, "model_max_length", None)
            if isinstance(limit, int) and 0 < limit < 1_000_000 and self.pack > limit:
                raise NeuronscopeError(f"--pack {self.pack} is longer than the tokenizer's model_max_length {limit}; "
                                       f"pack at most {limit} tokens per context")

    @property
    def offsets(self) -> bool:
        """Whether samples carry ``char_start`` / ``char_end`` (the tokenizer gives offsets)."""
        return self._features["offsets"]

    @property
    def varying_shapes(self) -> bool:
        """Whether forward passes see many input shapes: bucketed or per-document batches
        (each padded to its own longest document) do, packed contexts do not."""
        return self.batching != "pack"

    def __len__(self) -> int:
        """Items: documents, or packed contexts with ``pack``."""
        if self.batching == "pack":
            return int(-(-int(self.lengths().sum()) // self.pack))
        return len(self.corpus)

    def describe(self) -> dict[str, Any]:
        """JSON description of the source (part of the run configuration)."""
        d = {
            "kind": self.kind,
            "corpus": self.corpus.name,
            "documents": len(self.corpus),
            "fingerprint": self.corpus.fingerprint(),
            "labels": self.label_categories,
            "batch_size": self.batch_size,
            "max_tokens": self.max_tokens,
            "tokenizer": _tokenizer_name(self.tokenizer),
            "offsets": self.offsets,
            "batching": self.batching,
        }
        if self.batching != "docs":
            d["max_batch_tokens"] = self.max_batch_tokens
        if self.batching == "bucket":
            d["window"] = self.window
        if self.batching == "pack":
            d["pack"] = self.pack
        return d

    @staticmethod
    def options(description: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments that rebuild the batching of a source from its
        :meth:`describe` (a run's ``config['source']``); runs recorded before batching was
        configurable batched ``"docs"``."""
        mode = description.get("batching", "docs")
        out: dict[str, Any] = {"batch_size": int(description.get("batch_size", 32)),
                               "max_tokens": int(description.get("max_tokens", 128)), "batching": mode}
        if mode != "docs":
            out["max_batch_tokens"] = int(description["max_batch_tokens"])
        if mode == "bucket":
            out["window"] = int(description.get("window", DEFAULT_WINDOW))
        if mode == "pack":
            out["pack"] = int(description["pack"])
        return out

    def vocab(self) -> list[str]:
        """Token strings by token id."""
        tok = self.tokenizer
        n = len(tok)
        return [str(t) for t in tok.convert_ids_to_tokens(list(range(n)))]

    def doc_ids(self) -> np.ndarray:
        """The corpus's document ids as int64 (made once: building them per batch would cost
        a pass over the whole corpus for every batch)."""
        if self._doc_ids is None or len(self._doc_ids) != len(self.corpus):
            self._doc_ids = np.asarray(self.corpus.ids(), dtype=np.int64)
        return self._doc_ids

    # -- the plan ------------------------------------------------------------------------
    def lengths(self) -> np.ndarray:
        """Tokens of each document as batched (int64, corpus order): with its special tokens,
        truncated to ``max_tokens``; with ``pack``, its text tokens plus the separator."""
        if self._lengths is None:
            texts = self.corpus.texts
            packed = self.batching == "pack"
            out = []
            for c0 in range(0, len(texts), _TOKENIZE_CHUNK):
                enc = self.tokenizer(texts[c0 : c0 + _TOKENIZE_CHUNK], truncation=True, max_length=self.max_tokens,
                                     add_special_tokens=not packed)
                out.extend(len(x) for x in enc["input_ids"])
            self._lengths = np.asarray(out, dtype=np.int64) + (1 if packed else 0)
        return self._lengths

    def plan(self) -> list[np.ndarray]:
        """The batches as arrays of document indices (positions in the corpus), in order
        (``"bucket"``: :func:`bucket_plan`; ``"docs"``: consecutive runs of ``batch_size``).
        Packed sources have no per-document plan (a document may span batches)."""
        if self.batching == "pack":
            raise NeuronscopeError("a packed source batches contexts, not documents; it has no document plan")
        if self._fixed is not None:
            return self._fixed
        if self._plan is None:
            n = len(self.corpus)
            if self.batching == "docs":
                self._plan = [np.arange(b0, min(n, b0 + self.batch_size)) for b0 in range(0, n, self.batch_size)]
            else:
                self._plan = bucket_plan(self.lengths(), self.max_batch_tokens, self.window)
        return self._plan

    def with_plan(self, plan: Sequence[Sequence[int]]) -> TextSource:
        """A copy of this source that batches exactly the documents of ``plan`` (arrays of
        document indices), in that order — how a shard of a distributed recording, or a
        second tokenizer in a lockstep recording, batches exactly like the reference source.
        Its description is that of this source."""
        if self.batching == "pack":
            raise NeuronscopeError("a packed source cannot take a document plan; use bucket or docs batching")
        out = copy.copy(self)
        out._fixed = [np.asarray(b, dtype=np.int64) for b in plan]
        return out

    def stats(self) -> dict[str, Any]:
        """Batching statistics (a deterministic function of the configuration): ``batches``,
        ``tokens`` (real), ``padded_tokens`` (the ``batch × seq`` slots of all forward passes),
        ``padding`` = 1 − tokens / padded_tokens, and ``first_batch_samples`` (the samples
        of the first batch, which calibrate the histograms)."""
        lengths = self.lengths()
        if self.batching == "pack":
            total = int(lengths.sum())
            per = max(1, self.max_batch_tokens // self.pack)
            n_ctx = len(self)
            slots = n_ctx * self.pack
            batches = -(-n_ctx // per)
            first = min(total, per * self.pack)
        else:
            plan = self.plan()
            total = int(lengths.sum())
            slots = int(sum(len(b) * int(lengths[b].max()) for b in plan if len(b)))
            batches = len(plan)
            first = int(lengths[plan[0]].sum()) if plan else 0
        return {"batching": self.batching, "batches": int(batches), "tokens": total, "padded_tokens": slots,
                "padding": round(1.0 - total / slots, 6) if slots else 0.0, "first_batch_samples": first}

    def next_document(self, items: int) -> int | None:
        """The id of the first document not in the first ``items`` items (None past the end)."""
        ids = self.corpus.ids()
        if self.batching == "pack":
            start = int(items) * self.pack
            ends = np.cumsum(self.lengths())
            d = int(np.searchsorted(ends, start, side="right"))
            return ids[d] if d < len(ids) else None
        if self.batching == "docs" and self._fixed is None:
            return ids[items] if 0 <= items < len(ids) else None
        order = np.concatenate(self.plan())
        return ids[int(order[items])] if 0 <= items < len(order) else None

    # -- batches -------------------------------------------------------------------------
    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches after the first ``start`` items (documents in batching order;
        contexts with ``pack``). ``"docs"`` batching starts at document index ``start``
        (the position in the corpus, not the ``doc`` id)."""
        if self.batching == "pack":
            yield from self._packed(start)
            return
        if self.batching == "docs" and self._fixed is None:
            n = len(self.corpus)
            for b0 in range(start, n, self.batch_size):
                yield self._batch(np.arange(b0, min(n, b0 + self.batch_size)))
            return
        done = 0
        for idx in self.plan():
            if done + len(idx) > start:
                yield self._batch(idx[max(0, start - done):])
            done += len(idx)

    def _extra(self) -> dict[str, bool]:
        extra = {}
        if self._features["offsets"]:
            extra["return_offsets_mapping"] = True
        if self._features["special_mask"]:
            extra["return_special_tokens_mask"] = True
        return extra

    def _batch(self, idx: np.ndarray) -> Batch:
        """One padded batch of the documents at corpus positions ``idx``, in that order."""
        texts = self.corpus.texts
        doc_ids = self.doc_ids()
        chunk = [texts[i] for i in idx]
        enc = dict(self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_tokens,
                                  return_tensors="pt", **self._extra()))
        offsets = enc.pop("offset_mapping", None)
        special_mask = enc.pop("special_tokens_mask", None)
        mask = enc["attention_mask"].to(torch.bool)
        ids = enc["input_ids"]
        m = mask.numpy()
        lengths = m.sum(axis=1)
        doc = np.repeat(doc_ids[idx], lengths)
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
            samples[k] = np.repeat(codes[idx], lengths)
        return Batch(inputs=enc, mask=mask, samples=samples, items=len(chunk))

    def _packed(self, start: int) -> Iterator[Batch]:
        """Packed contexts after the first ``start`` (see the class docstring)."""
        n_ctx = len(self)
        per = max(1, self.max_batch_tokens // self.pack)
        for c0 in range(start, n_ctx, per):
            yield self._pack_batch(c0, min(n_ctx, c0 + per))

    def _pack_batch(self, c0: int, c1: int) -> Batch:
        n, lengths = self.pack, self.lengths()
        ends = np.cumsum(lengths)
        begins = ends - lengths
        t0, t1 = c0 * n, min(c1 * n, int(ends[-1]))
        d0 = int(np.searchsorted(ends, t0, side="right"))
        d1 = int(np.searchsorted(begins, t1, side="left"))
        idx = np.arange(d0, d1)
        chunk = [self.corpus.texts[i] for i in idx]
        extra = {"return_offsets_mapping": True} if self._features["offsets"] else {}
        enc = self.tokenizer(chunk, truncation=True, max_length=self.max_tokens, add_special_tokens=False, **extra)
        doc_ids = self.doc_ids()
        tok = [np.asarray(list(x) + [self._sep], dtype=np.int64) for x in enc["input_ids"]]
        per_doc = np.array([len(x) for x in tok], dtype=np.int64)
        if not np.array_equal(per_doc, lengths[idx]):
            raise NeuronscopeError("the tokenizer gave different token counts for the same documents; "
                                   "give TextSource a deterministic tokenizer")
        token_id = np.concatenate(tok)
        local = np.repeat(np.arange(len(idx)), per_doc)
        pos = np.arange(len(token_id), dtype=np.int64) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        special = (pos == per_doc[local] - 1).astype(np.int64)  # the separator closing each document
        cut = slice(t0 - int(begins[d0]), t1 - int(begins[d0]))
        samples = {"doc": doc_ids[idx][local][cut], "pos": pos[cut], "token_id": token_id[cut], "special": special[cut]}
        if "offset_mapping" in enc:
            off = np.concatenate([np.asarray(list(o) + [(0, 0)], dtype=np.int64).reshape(-1, 2)
                                  for o in enc["offset_mapping"]])
            cs, ce = content_spans(chunk, local, off[:, 0], off[:, 1])
            samples["char_start"] = np.where(special == 1, -1, cs)[cut]
            samples["char_end"] = np.where(special == 1, -1, ce)[cut]
        for k, codes in self._codes.items():
            samples[k] = codes[idx][local][cut]
        real = t1 - t0
        flat = np.full((c1 - c0) * n, _pad_id(self.tokenizer), dtype=np.int64)
        flat[:real] = samples["token_id"]
        maskf = np.zeros((c1 - c0) * n, dtype=bool)
        maskf[:real] = True
        samples["ctx"] = c0 + np.arange(real, dtype=np.int64) // n
        ids = torch.from_numpy(flat.reshape(c1 - c0, n))
        mask = torch.from_numpy(maskf.reshape(c1 - c0, n))
        inputs = {"input_ids": ids, "attention_mask": mask.to(torch.long)}
        return Batch(inputs=inputs, mask=mask, samples=samples, items=c1 - c0)


def check_batching(batching: str, max_tokens: int, max_batch_tokens: int | None, window: int, pack: int | None,
                   batch_size: int = 32) -> None:
    """Refuse batching options that cannot work, with a one-line :class:`NeuronscopeError`
    saying what to pass instead."""
    if batching not in BATCHING:
        raise NeuronscopeError(f"batching must be one of {', '.join(BATCHING)}, not {batching!r}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise NeuronscopeError(f"max_batch_tokens must be a positive number of tokens, not {max_batch_tokens}")
    if window < 1:
        raise NeuronscopeError(f"window must be a positive number of documents, not {window}")
    budget = max_batch_tokens or batch_size * max_tokens
    if batching == "pack":
        if pack is None or pack < 1:
            raise NeuronscopeError(f"--pack must be a positive number of tokens per context (e.g. --pack 128), not {pack}")
        if budget < pack:
            raise NeuronscopeError(f"--max-batch-tokens {budget} cannot hold one packed context of {pack} tokens; "
                                   f"pass --max-batch-tokens {pack} or more")
        return
    if pack is not None:
        raise NeuronscopeError(f"pack={pack} packs contexts; drop batching={batching!r} (or pass batching='pack')")
    if batching == "bucket" and budget < max_tokens:
        raise NeuronscopeError(f"--max-batch-tokens {budget} is smaller than the longest allowed document "
                               f"(--max-tokens {max_tokens}); pass --max-batch-tokens {max_tokens} or more, "
                               "or lower --max-tokens")


def _separator_id(tokenizer: Any) -> int:
    """The token that closes each packed document: ``sep_token_id``, else ``eos_token_id``."""
    for k in ("sep_token_id", "eos_token_id"):
        v = getattr(tokenizer, k, None)
        if isinstance(v, int):
            return v
    raise NeuronscopeError("the tokenizer has no separator or end-of-sequence token to join packed documents; "
                           "record without --pack")


def _pad_id(tokenizer: Any) -> int:
    v = getattr(tokenizer, "pad_token_id", None)
    return v if isinstance(v, int) else 0
