"""Synthetic text-like corpora for the summary tests (real arrays, known structure)."""

from __future__ import annotations

import numpy as np


def make_corpus(
    seed: int,
    n_docs: int = 12,
    units: int = 5,
    max_len: int = 9,
    vocab: int = 6,
    ties: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Documents of random length with contiguous rows, in position order.

    Activations are rounded to 0.5 when ``ties`` so that equal values (and ties at
    the top-k boundary) are common; unit 0 is identically zero (a dead ReLU neuron).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n_docs)
    n = int(lengths.sum())
    doc = np.repeat(np.arange(n_docs), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(n) - starts
    acts = rng.standard_normal((n, units)).astype(np.float32)
    if ties:
        acts = np.round(acts * 2) / 2
    acts[:, 0] = 0.0
    samples = {
        "sample": np.arange(n, dtype=np.int64),
        "doc": doc.astype(np.int64),
        "pos": pos.astype(np.int64),
        "token_id": rng.integers(0, vocab, n).astype(np.int64),
        "lang": (doc % 3).astype(np.int64),
    }
    return acts.astype(np.float32), samples


def doc_chunks(samples: dict[str, np.ndarray], cuts: list[int]) -> list[slice]:
    """Row slices that split the corpus at document boundaries chosen by ``cuts``."""
    doc = samples["doc"]
    bounds = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    chosen = sorted({int(bounds[c % len(bounds)]) for c in cuts} | {0})
    edges = [*chosen, len(doc)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def take(samples: dict[str, np.ndarray], sl: slice) -> dict[str, np.ndarray]:
    """The sample coordinates of rows ``sl``."""
    return {k: v[sl] for k, v in samples.items()}
