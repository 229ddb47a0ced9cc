"""Aligning the samples of text models that tokenize differently.

Two models (or two recorded runs) that read the same corpus with different tokenizers see
different tokens: MiniLM's WordPiece gives ``[CLS] hello , world [SEP]``, multilingual-e5's
SentencePiece ``<s> ▁Hello , ▁w ör ld </s>``. Their activations can only be compared row by
row once rows mean the same piece of text. The *alignment level* says what a row is:

* ``token`` — one row per token; only when the tokenizations agree: every document has the
  same tokens (same count, the same special tokens at the same positions, and the same
  character spans — or the same token ids when a tokenizer gives no offsets). Nothing is
  pooled (special tokens are rows too).
* ``char-span`` — one row per span of the *coarsest common segmentation* of the
  tokenizations: each real token covers a character span (its offsets with surrounding
  whitespace removed, :func:`~neuronscope.sources.text.content_spans`); spans of all models
  that overlap (share a character) are merged, transitively, into one segment, so every
  token of every model lies in exactly one segment and each segment is the smallest stretch
  of text that every tokenization covers with whole tokens. ``hello`` | ``,`` | ``world``
  against ``▁Hello`` | ``,`` | ``▁w ör ld`` gives the segments ``Hello``, ``,``, ``wörld``.
* ``word`` — as ``char-span``, then segments that touch (no character between them) are
  merged too: whitespace-separated words (``Hello,`` and ``wörld``), wherever every
  non-whitespace character is covered by some token (true of WordPiece, SentencePiece and
  byte tokenizers, except characters a tokenizer deletes, such as BERT's control characters,
  which then split a word). Defined from the spans alone, so stored runs align exactly as
  models recorded in lockstep do.
* ``doc`` — one row per document.

A model's row for a segment or document pools the activations of its tokens in it with
``pool``: ``mean`` (the average over the tokens; what the word / char-span levels are
defined with), ``max`` (elementwise maximum) or ``last`` (the last token). Special tokens
(``[CLS]``, ``[SEP]``, ``<s>``, BOS) never enter a pooled row; tokens with an empty span
(whitespace only, e.g. a lone ``▁``) enter document rows only.

Truncation (``max_tokens``) cuts different amounts of text from the two tokenizations. A
document that has ``max_tokens`` tokens in some model is taken as truncated there; the text
*covered* by that model ends at its last real token's span end. Segments must end within the
text every model covers, and document rows pool only tokens that start there (with offsets
from every model; otherwise all real tokens). A segment or document that some model has no
token in is dropped for all models, so every model gives the same rows in the same order
(document, then character position).

:func:`plan_alignment` turns the sample coordinates of each model (``doc``, ``special``,
``char_start``, ``char_end``; :class:`~neuronscope.sources.text.TextSource` writes them) into
one :class:`Plan` per model; ``Plan.apply`` pools a ``(tokens, units)`` activation matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from neuronscope.errors import NeuronscopeError

__all__ = [
    "ALIGN_LEVELS", "POOLS", "Plan", "check_align", "first_disagreement", "plan_alignment",
]

#: Alignment levels, finest first.
ALIGN_LEVELS = ("token", "word", "char-span", "doc")
#: How the tokens of a pooled row are combined.
POOLS = ("mean", "max", "last")
#: Sample coordinates two tokenizations must share for token-level alignment.
_TOKEN_KEYS = ("doc", "pos", "special")


def check_align(align: str, pool: str) -> None:
    """Refuse an unknown alignment level or pooling with a one-line error."""
    if align not in ALIGN_LEVELS:
        raise NeuronscopeError(f"align must be one of {', '.join(ALIGN_LEVELS)}, not {align!r}")
    if pool not in POOLS:
        raise NeuronscopeError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")


def has_spans(samples: Mapping[str, np.ndarray]) -> bool:
    """Whether sample coordinates carry character spans (``char_start`` and ``char_end``)."""
    return "char_start" in samples and "char_end" in samples


def first_disagreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> str | None:
    """``None`` when two tokenizations agree token by token, else a short description of the
    first document where they differ (``"document 7: 12 vs 14 tokens"``).

    They agree when ``doc``, ``pos`` and ``special`` (those both have) are equal and the
    character spans are equal (both have spans) or else the token ids are.
    """
    da, db = np.asarray(a["doc"]), np.asarray(b["doc"])
    keys = [k for k in _TOKEN_KEYS if k in a and k in b]
    keys += ["char_start", "char_end"] if has_spans(a) and has_spans(b) else ["token_id"]
    if len(da) == len(db) and all(np.array_equal(a[k], b[k]) for k in keys if k in a and k in b):
        return None
    docs = np.union1d(da, db)
    for d in docs:
        ia, ib = np.flatnonzero(da == d), np.flatnonzero(db == d)
        if len(ia) != len(ib):
            return f"document {int(d)}: {len(ia)} vs {len(ib)} tokens"
        for k in keys:
            if k in a and k in b and not np.array_equal(np.asarray(a[k])[ia], np.asarray(b[k])[ib]):
                what = "character spans" if k.startswith("char") else ("token ids" if k == "token_id" else k)
                return f"document {int(d)}: same token count, different {what}"
    return "different documents"  # unreachable when the docs match; kept for safety


@dataclass
class Plan:
    """How one model's token rows become aligned rows.

    ``group[i]`` is the aligned row token ``i`` is pooled into (-1: not used); ``n`` the
    number of aligned rows (every row has at least one token). ``identity`` marks the token
    level (rows are the tokens themselves).
    """

    group: np.ndarray
    n: int
    identity: bool = False

    def apply(self, acts: np.ndarray, pool: str = "mean", start: int = 0) -> np.ndarray:
        """Pool ``acts`` (``(tokens, units)``: the model's token rows ``start .. start +
        len(acts)``) into aligned rows.

        With ``start`` and a slice of rows the result holds the aligned rows whose tokens lie
        in the slice (the slice must not cut a row's tokens: cut at document boundaries).
        ``mean`` accumulates in float64; the result is float32.
        """
        if self.identity:
            return np.asarray(acts, dtype=np.float32)
        g = self.group[start : start + len(acts)]
        idx = np.flatnonzero(g >= 0)
        gi = g[idx]
        order = np.argsort(gi, kind="stable")
        idx, gi = idx[order], gi[order]
        if not len(idx):
            return np.zeros((0, acts.shape[1]), dtype=np.float32)
        starts = np.flatnonzero(np.r_[True, gi[1:] != gi[:-1]])
        x = np.asarray(acts)[idx]
        if pool == "mean":
            sums = np.add.reduceat(x.astype(np.float64), starts, axis=0)
            counts = np.diff(np.r_[starts, len(idx)])
            out = sums / counts[:, None]
        elif pool == "max":
            out = np.maximum.reduceat(x, starts, axis=0)
        elif pool == "last":
            out = x[np.r_[starts[1:], len(idx)] - 1]
        else:
            raise NeuronscopeError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        return np.asarray(out, dtype=np.float32)

    def rows_in(self, start: int, stop: int) -> np.ndarray:
        """The aligned rows fed by tokens ``start .. stop`` (sorted)."""
        if self.identity:
            return np.arange(start, stop)
        g = self.group[start:stop]
        return np.unique(g[g >= 0])


def _dense_docs(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted distinct doc ids over all models and each model's docs as indices into them."""
    uniq = np.unique(np.concatenate([np.asarray(d) for d in docs]))
    return uniq, [np.searchsorted(uniq, d) for d in docs]


def _common_end(
    samples: Sequence[Mapping[str, np.ndarray]], dense: list[np.ndarray], n_docs: int,
    max_tokens: Sequence[int | None],
) -> np.ndarray:
    """Per document: the end of the text every model covers (``inf``: not truncated)."""
    inf = np.iinfo(np.int64).max
    common = np.full(n_docs, inf, dtype=np.int64)
    for s, d, mt in zip(samples, dense, max_tokens, strict=True):
        if mt is None or not has_spans(s):
            continue
        count = np.bincount(d, minlength=n_docs)
        real = np.asarray(s["special"]) == 0 if "special" in s else np.ones(len(d), bool)
        ends = np.zeros(n_docs, dtype=np.int64)
        np.maximum.at(ends, d[real], np.asarray(s["char_end"])[real])
        cover = np.where(count >= mt, ends, inf)
        common = np.minimum(common, cover)
    return common


def plan_alignment(
    samples: Sequence[Mapping[str, np.ndarray]],
    align: str,
    max_tokens: Sequence[int | None] | None = None,
) -> tuple[list[Plan], dict[str, np.ndarray]]:
    """One :class:`Plan` per model and the aligned rows' coordinates (see the module
    docstring for the levels).

    ``samples[m]`` are model ``m``'s sample coordinates for the same documents (``doc``;
    ``special`` and, for ``word`` / ``char-span``, ``char_start`` / ``char_end``), tokens of a
    document contiguous and in position order; ``max_tokens[m]`` the truncation length of its
    source (None: never truncated). The coordinates are ``doc`` and, for segments,
    ``char_start`` / ``char_end`` of each aligned row. Token-level plans are checked with
    :func:`first_disagreement` and refused with a one-line error when the tokenizations differ.
    """
    if align not in ALIGN_LEVELS:
        raise NeuronscopeError(f"align must be one of {', '.join(ALIGN_LEVELS)}, not {align!r}")
    if not samples:
        raise NeuronscopeError("plan_alignment needs the samples of at least one model")
    max_tokens = list(max_tokens) if max_tokens is not None else [None] * len(samples)
    if align == "token":
        for k, s in enumerate(samples[1:], 1):
            why = first_disagreement(samples[0], s)
            if why is not None:
                raise NeuronscopeError(
                    f"the tokenizations of model 0 and model {k} differ ({why}); align by word, "
                    "char-span or doc instead of token"
                )
        n = len(samples[0]["doc"])
        coords = {k: np.asarray(v) for k, v in samples[0].items() if k in ("doc", "pos", "char_start", "char_end")}
        return [Plan(np.arange(n), n, identity=True) for _ in samples], coords
    uniq, dense = _dense_docs([np.asarray(s["doc"]) for s in samples])
    common = _common_end(samples, dense, len(uniq), max_tokens)
    if align == "doc":
        return _plan_docs(samples, uniq, dense, common)
    missing = [k for k, s in enumerate(samples) if not has_spans(s)]
    if missing:
        raise NeuronscopeError(
            f"model {missing[0]}'s samples have no character spans (its tokenizer gives no offsets); "
            "align by doc instead"
        )
    return _plan_segments(samples, uniq, dense, common, touching=align == "word")


def _real(s: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(s["special"]) == 0 if "special" in s else np.ones(len(s["doc"]), dtype=bool)


def _plan_docs(
    samples: Sequence[Mapping[str, np.ndarray]], uniq: np.ndarray, dense: list[np.ndarray], common: np.ndarray
) -> tuple[list[Plan], dict[str, np.ndarray]]:
    spans = all(has_spans(s) for s in samples)
    use = []
    present = np.ones(len(uniq), dtype=bool)
    for s, d in zip(samples, dense, strict=True):
        ok = _real(s)
        if spans:
            ok &= np.asarray(s["char_start"]) < common[d]
        use.append(ok)
        present &= np.bincount(d[ok], minlength=len(uniq)) > 0
    row = np.cumsum(present) - 1
    plans = [Plan(np.where(ok & present[d], row[d], -1), int(present.sum())) for ok, d in zip(use, dense, strict=True)]
    return plans, {"doc": uniq[present]}


def _plan_segments(
    samples: Sequence[Mapping[str, np.ndarray]], uniq: np.ndarray, dense: list[np.ndarray],
    common: np.ndarray, touching: bool,
) -> tuple[list[Plan], dict[str, np.ndarray]]:
    parts_d, parts_s, parts_e, parts_m, parts_i = [], [], [], [], []
    for m, (s, d) in enumerate(zip(samples, dense, strict=True)):
        cs, ce = np.asarray(s["char_start"]), np.asarray(s["char_end"])
        ok = np.flatnonzero(_real(s) & (ce > cs))
        parts_d.append(d[ok])
        parts_s.append(cs[ok])
        parts_e.append(ce[ok])
        parts_m.append(np.full(len(ok), m))
        parts_i.append(ok)
    doc, cs, ce = np.concatenate(parts_d), np.concatenate(parts_s), np.concatenate(parts_e)
    model, index = np.concatenate(parts_m), np.concatenate(parts_i)
    order = np.lexsort((ce, cs, doc))
    doc, cs, ce, model, index = doc[order], cs[order], ce[order], model[order], index[order]
    n_models = len(samples)
    if not len(doc):
        return [Plan(np.full(len(s["doc"]), -1), 0) for s in samples], {
            "doc": np.zeros(0, np.int64), "char_start": np.zeros(0, np.int64), "char_end": np.zeros(0, np.int64)}
    # running maximum of span ends within a document (keyed by document so it resets)
    big = int(max(ce.max(), 0)) + 2
    run_end = np.maximum.accumulate(doc * big + ce) - doc * big
    prev_end = np.r_[-1, run_end[:-1]]
    new_doc = np.r_[True, doc[1:] != doc[:-1]]
    # a new segment starts where a span begins at/after (char-span) or after (word) all before it
    new = new_doc | ((cs > prev_end) if touching else (cs >= prev_end))
    seg = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    seg_doc, seg_start = doc[starts], cs[starts]
    seg_end = np.maximum.reduceat(ce, starts)
    n_seg = len(starts)
    has = np.bincount(seg * n_models + model, minlength=n_seg * n_models).reshape(n_seg, n_models) > 0
    keep = has.all(axis=1) & (seg_end <= common[seg_doc])
    row = np.where(keep, np.cumsum(keep) - 1, -1)
    plans = []
    for m, s in enumerate(samples):
        g = np.full(len(s["doc"]), -1, dtype=np.int64)
        mine = model == m
        g[index[mine]] = row[seg[mine]]
        plans.append(Plan(g, int(keep.sum())))
    coords = {"doc": uniq[seg_doc[keep]], "char_start": seg_start[keep], "char_end": seg_end[keep]}
    return plans, coords
