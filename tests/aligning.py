"""Brute-force references for cross-tokenizer alignment, written independently of
``neuronscope.sources.align``: characters as Python sets, union-find over tokens."""

from __future__ import annotations

import numpy as np


def content_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` without surrounding whitespace (str.strip), as a span."""
    piece = text[start:end]
    if not piece.strip():
        return end, end
    s = start + len(piece) - len(piece.lstrip())
    return s, start + len(piece.rstrip())


def tokens_of(tokenizer, texts, max_tokens):
    """Per document, per token: (special, start, end) straight from the tokenizer; special =
    a special-token id the tokenizer added (no span in the text: offsets (0, 0)), so a
    literal "[SEP]" typed in the text is text."""
    out = []
    for t in texts:
        enc = tokenizer([t], truncation=True, max_length=max_tokens, return_offsets_mapping=True)
        ids = enc["input_ids"][0]
        offs = enc["offset_mapping"][0]
        specials = set(getattr(tokenizer, "all_special_ids", []) or []) - {getattr(tokenizer, "unk_token_id", None)}
        if not specials:
            specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        out.append([(int(i) in specials and s == e == 0, *content_span(t, int(s), int(e)))
                    for i, (s, e) in zip(ids, offs, strict=True)])
    return out


def segments(texts, toks_per_model, max_tokens, word=False):
    """Brute-force segmentation: tokens sharing a character (any model) are united; with
    ``word`` also tokens covering adjacent characters. Returns, per kept segment,
    ``(doc index, start, end, [token indices per model])`` in document/character order."""
    out = []
    n_models = len(toks_per_model)
    for d, text in enumerate(texts):
        nodes = []  # (model, token index, chars)
        for m in range(n_models):
            for i, (special, s, e) in enumerate(toks_per_model[m][d]):
                if not special and e > s:
                    nodes.append((m, i, set(range(s, e))))
        parent = list(range(len(nodes)))

        def find(a, parent=parent):
            while parent[a] != a:
                a = parent[a]
            return a

        for a in range(len(nodes)):
            for b in range(a + 1, len(nodes)):
                ca, cb = nodes[a][2], nodes[b][2]
                near = ca & cb or (word and ({c + 1 for c in ca} & cb or {c - 1 for c in ca} & cb))
                if near:
                    parent[find(a)] = find(b)
        groups = {}
        for k, node in enumerate(nodes):
            groups.setdefault(find(k), []).append(node)
        # text each model covers: all of it unless it has max_tokens tokens (truncated)
        cover = []
        for m in range(n_models):
            toks = toks_per_model[m][d]
            ends = [e for special, _, e in toks if not special]
            cover.append(max(ends) if len(toks) >= max_tokens[m] and ends else len(text) + 10**9)
        for members in groups.values():
            chars = set().union(*(c for _, _, c in members))
            per = [sorted(i for m, i, _ in members if m == k) for k in range(n_models)]
            if all(per) and max(chars) + 1 <= min(cover):
                out.append((d, min(chars), max(chars) + 1, per))
    return sorted(out, key=lambda g: (g[0], g[1]))


def pooled_means(acts, token_rows):
    """Mean of ``acts`` rows over each list of row indices."""
    return np.stack([acts[r].astype(np.float64).mean(0) for r in token_rows])
