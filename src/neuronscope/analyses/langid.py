"""A character n-gram language identifier: multinomial naive Bayes over character 1–3-grams.

The classic small language identifier (Cavnar & Trenkle 1994, "N-Gram-Based Text
Categorization", for character n-gram features; the multinomial naive Bayes event model of
McCallum & Nigam 1998, "A Comparison of Event Models for Naive Bayes Text Classification",
as in Lui & Baldwin 2012, "langid.py: An Off-the-shelf Language Identification Tool").
Language steering (:mod:`neuronscope.analyses.langsteer`) uses it to tell which language a
generated text is in.

A text ``x`` is lower-cased and padded with one space at each end; its features are the
counts ``c_g(x)`` of every character n-gram ``g`` with ``1 ≤ n ≤ max_n``. With ``N_{l,g}``
the count of ``g`` in the training texts of language ``l``, ``N_l = Σ_g N_{l,g}``, ``V``
the number of distinct training n-grams and add-``α`` smoothing::

    log P(g | l) = log (N_{l,g} + α) − log (N_l + α (V + 1))       (one slot for unseen n-grams)
    log P(l | x) = log π_l + Σ_g c_g(x) log P(g | l) − log Z

with a uniform prior ``π_l`` by default (a generated text's language should not be guessed
from how much training text each language has). :func:`train_langid` fits it on the tiny
LM's training split of the bundled corpus (:func:`neuronscope.testing.tinylm.tinylm_corpus`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neuronscope.errors import NeuronscopeError

__all__ = ["LanguageIdentifier", "char_ngrams", "default_langid", "train_langid"]


def char_ngrams(text: str, max_n: int = 3) -> Counter[str]:
    """Counts of the character n-grams (``1 ≤ n ≤ max_n``) of ``" " + text.lower() + " "``."""
    s = f" {text.lower()} "
    out: Counter[str] = Counter()
    for n in range(1, max_n + 1):
        out.update(s[i : i + n] for i in range(len(s) - n + 1))
    return out


@dataclass
class LanguageIdentifier:
    """A fitted naive Bayes language identifier (see the module docstring).

    ``languages`` in sorted order; ``log_prob[v, l] = log P(g_v | l)`` for the n-gram
    ``vocab[g_v] = v``, the last row the unseen-n-gram slot; ``log_prior[l] = log π_l``.
    """

    languages: list[str]
    vocab: dict[str, int]
    log_prob: np.ndarray
    log_prior: np.ndarray
    max_n: int = 3

    def log_posterior(self, texts: Sequence[str]) -> np.ndarray:
        """``log P(l | x)`` for each text (rows) and language (columns); an empty text gets
        the prior."""
        if isinstance(texts, str):
            raise NeuronscopeError("give a list of texts; wrap a single text in a list")
        unseen = len(self.vocab)
        out = np.empty((len(texts), len(self.languages)))
        for i, t in enumerate(texts):
            grams = char_ngrams(str(t), self.max_n) if str(t).strip() else Counter()
            if grams:
                idx = np.fromiter((self.vocab.get(g, unseen) for g in grams), dtype=np.int64, count=len(grams))
                cnt = np.fromiter(grams.values(), dtype=np.float64, count=len(grams))
                score = self.log_prior + cnt @ self.log_prob[idx]
            else:
                score = self.log_prior.copy()
            out[i] = score - np.logaddexp.reduce(score)
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``P(l | x)``: (texts, languages), rows summing to 1."""
        return np.exp(self.log_posterior(texts))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable language of each text."""
        post = self.log_posterior(texts)
        return [self.languages[j] for j in post.argmax(axis=1)]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        """Fraction of ``texts`` whose predicted language is their label."""
        if len(texts) != len(labels) or not texts:
            raise NeuronscopeError("give as many labels as texts (at least one)")
        pred = self.predict(texts)
        return float(np.mean([p == str(lab) for p, lab in zip(pred, labels, strict=True)]))


def train_langid(texts: Sequence[str], labels: Sequence[str], *, max_n: int = 3, alpha: float = 0.1,
                 prior: str = "uniform") -> LanguageIdentifier:
    """Fit the naive Bayes identifier on ``texts`` with their language ``labels``.

    ``alpha``: add-α smoothing; ``prior``: ``"uniform"`` (``π_l = 1/L``) or ``"empirical"``
    (the fraction of training texts in language ``l``).
    """
    if isinstance(texts, str) or len(texts) != len(labels) or not len(texts):
        raise NeuronscopeError("give a list of texts and as many labels (at least one)")
    if not isinstance(max_n, int) or max_n < 1:
        raise NeuronscopeError(f"max_n must be a positive integer, not {max_n!r}")
    if not alpha > 0:
        raise NeuronscopeError(f"alpha must be positive, not {alpha}")
    if prior not in ("uniform", "empirical"):
        raise NeuronscopeError(f"prior must be 'uniform' or 'empirical', not {prior!r}")
    langs = sorted({str(v) for v in labels})
    if len(langs) < 2:
        raise NeuronscopeError("give texts of at least two languages")
    col = {lab: j for j, lab in enumerate(langs)}
    per_lang: list[Counter[str]] = [Counter() for _ in langs]
    docs = np.zeros(len(langs))
    for t, lab in zip(texts, labels, strict=True):
        j = col[str(lab)]
        per_lang[j].update(char_ngrams(str(t), max_n))
        docs[j] += 1
    vocab = {g: v for v, g in enumerate(sorted(set().union(*per_lang)))}
    counts = np.zeros((len(vocab) + 1, len(langs)))
    for j, c in enumerate(per_lang):
        counts[np.fromiter((vocab[g] for g in c), dtype=np.int64, count=len(c)), j] = np.fromiter(c.values(), dtype=np.float64, count=len(c))
    log_prob = np.log(counts + alpha) - np.log(counts.sum(axis=0) + alpha * (len(vocab) + 1))
    log_prior = np.full(len(langs), -np.log(len(langs))) if prior == "uniform" else np.log(docs / docs.sum())
    return LanguageIdentifier(langs, vocab, log_prob, log_prior, max_n)


@functools.lru_cache(maxsize=1)
def default_langid() -> LanguageIdentifier:
    """The identifier trained on the tiny LM's training split of the bundled corpus (20
    languages; cached in-process)."""
    from neuronscope.testing.tinylm import tinylm_corpus

    train = tinylm_corpus("train")
    return train_langid(train.texts, [str(v) for v in train.labels["lang"]])
