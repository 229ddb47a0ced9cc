"""Language steering: deactivate one language's neurons, or activate another's, and measure
what the model writes and how well it predicts each language (Tang et al. 2024,
"Language-Specific Neurons: The Key to Multilingual Capabilities in Large Language Models",
§4: perturbing language-specific neurons).

The neurons are LAPE's (:func:`neuronscope.analyses.locate.lape`): ``result.units_for(A)``
over the sites of a run recorded with per-label firing of a language field. For each
steered language ``A``:

* **deactivate** — every neuron specific to ``A`` is set to 0 at every position
  (:func:`neuronscope.intervene.ablate`, ``how="zero"``), as the paper deactivates them;
* **activate** — every neuron specific to ``A`` is clamped to its mean activation over
  ``A``'s tokens (:func:`neuronscope.intervene.clamp`; the per-label means of the run's
  ``label_moments.<field>``), the paper's "set to the average activation value".

Under each intervention, and for the unmodified model, :func:`language_steering` measures

* ``loss[L]`` — next-token loss (nats per token) on language ``L``'s held-out texts;
* ``prob[L]`` — the mean language-identifier probability ``P(L | g)`` of the greedy
  continuations ``g`` of prompts in ``L`` (the first ``prompt_chars`` characters of
  ``n_prompts`` held-out texts of ``L``), with the naive Bayes character n-gram identifier
  of :mod:`neuronscope.analyses.langid`;
* ``share[L]`` — the fraction of all continuations (prompts of every language) the
  identifier assigns to ``L`` (the generated-language share).

Deactivating ``A``'s neurons should lower ``prob[A]`` and raise ``loss[A]`` more than any
other language's loss; activating ``B``'s should raise ``share[B]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronscope.analyses.attribute import _eval
from neuronscope.analyses.langid import LanguageIdentifier, default_langid
from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import ablate, clamp, compose

__all__ = ["MODES", "LanguageSteering", "generate_batch", "language_steering", "loss_by_label",
           "save_language_steering"]

#: What :func:`language_steering` does to a language's neurons.
MODES = ("deactivate", "activate")


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None or logits.ndim != 3:
        raise NeuronscopeError("language steering needs a causal language model whose output is next-token logits [batch, seq, vocab]")
    return logits


def _encode(tok: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    enc = tok(list(texts), truncation=True, max_length=max_tokens)
    return [list(map(int, ids)) for ids in enc["input_ids"]]


def _pad_id(tok: Any) -> int:
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:
        pad = getattr(tok, "eos_token_id", None)
    return int(pad or 0)


@torch.no_grad()
def loss_by_label(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[str], *,
                  batch_size: int = 64, max_tokens: int = 128) -> dict[str, float]:
    """Mean next-token cross-entropy (nats per predicted token) of each label value's texts:
    ``Σ_{texts of L} Σ_t −log p(x_{t+1} | x_{≤t}) / #predicted tokens`` (texts tokenized with
    the tokenizer's special tokens, truncated to ``max_tokens``)."""
    if len(texts) != len(labels) or not len(texts):
        raise NeuronscopeError("give as many labels as texts (at least one)")
    ids = _encode(tokenizer, texts, max_tokens)
    pad = _pad_id(tokenizer)
    order = np.argsort([len(x) for x in ids], kind="stable")
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids))
    for b0 in range(0, len(ids), batch_size):
        idx = order[b0 : b0 + batch_size]
        width = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), width), pad, dtype=torch.long)
        m = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, : len(ids[i])] = torch.tensor(ids[i])
            m[r, : len(ids[i])] = 1
        logits = _logits(model, x, m)[:, :-1].float()
        valid = m[:, 1:].bool()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none") * valid
        sums[idx] = ce.double().sum(1).numpy()
        counts[idx] = valid.sum(1).numpy()
    lab = np.array([str(v) for v in labels])
    return {v: float(sums[lab == v].sum() / counts[lab == v].sum()) for v in sorted(set(lab)) if counts[lab == v].sum()}


@torch.no_grad()
def generate_batch(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 32, *,
                   batch_size: int = 64) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, the prompt excluded), in batches: the
    prompts are left-padded, the most likely token appended at each step (never
    ``BOS``/``PAD``), each continuation cut at its first ``EOS``. The model must number
    positions from the attention mask (the tiny LM does), else pass ``batch_size=1`` so
    that nothing is padded. Greedy decoding is deterministic: the same prompts give the same
    continuations."""
    eos = getattr(tokenizer, "eos_token_id", None)
    banned = [int(t) for t in {getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "pad_token_id", None)} - {None, eos}]
    pad = _pad_id(tokenizer)
    n_ctx = getattr(getattr(model, "config", None), "n_ctx", None)
    ids = _encode(tokenizer, prompts, max(1, (n_ctx or 10**6) - max_new_tokens))
    out: list[str] = []
    for b0 in range(0, len(ids), batch_size):
        chunk = ids[b0 : b0 + batch_size]
        width = max(len(x) for x in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        m = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, seq in enumerate(chunk):
            x[r, width - len(seq):] = torch.tensor(seq)
            m[r, width - len(seq):] = 1
        new = []
        for _ in range(max_new_tokens):
            logits = _logits(model, x, m)[:, -1].float()
            if banned:
                logits[:, banned] = float("-inf")
            nxt = logits.argmax(-1)
            new.append(nxt)
            x = torch.cat([x, nxt[:, None]], 1)
            m = torch.cat([m, torch.ones_like(nxt)[:, None]], 1)
        gen = torch.stack(new, 1).tolist() if new else [[] for _ in chunk]
        for g in gen:
            if eos is not None and eos in g:
                g = g[: g.index(eos)]
            out.append(tokenizer.decode(g, skip_special_tokens=True))
    return out


@dataclass
class LanguageSteering:
    """The result of :func:`language_steering`.

    ``languages`` are the evaluated languages (columns), ``steered`` the languages whose
    neurons were deactivated / activated (rows; ``neurons[A]`` how many). ``clean_*`` are the
    unmodified model's per-language values, ``loss`` / ``prob`` / ``share`` arrays
    ``(steered, languages)`` the steered model's (see the module docstring);
    ``generations[A]`` / ``clean_generations`` a few example continuations per language.
    """

    mode: str
    field: str
    languages: list[str]
    steered: list[str]
    neurons: dict[str, int]
    clean_loss: np.ndarray
    clean_prob: np.ndarray
    clean_share: np.ndarray
    loss: np.ndarray
    prob: np.ndarray
    share: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    clean_generations: dict[str, list[str]] = field(default_factory=dict)
    generations: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def loss_change(self) -> np.ndarray:
        """``loss − clean_loss``, (steered, languages)."""
        return self.loss - self.clean_loss[None]

    def table(self) -> pd.DataFrame:
        """One row per (steered language, evaluated language): ``steered, language, neurons,
        loss_clean, loss, loss_change, prob_clean, prob, share_clean, share``."""
        rows = []
        for i, a in enumerate(self.steered):
            for j, lang in enumerate(self.languages):
                rows.append({"steered": a, "language": lang, "neurons": self.neurons[a],
                             "loss_clean": self.clean_loss[j], "loss": self.loss[i, j],
                             "loss_change": self.loss[i, j] - self.clean_loss[j],
                             "prob_clean": self.clean_prob[j], "prob": self.prob[i, j],
                             "share_clean": self.clean_share[j], "share": self.share[i, j]})
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """One row per steered language ``A``: its neurons, ``loss_change`` on ``A``, the largest
        loss change on another language (``other_max_loss_change``, ``other_max_language``),
        ``loss_rank`` — the rank of ``A``'s loss change among all evaluated languages' (1 =
        the largest; 0 when ``A`` is not evaluated), ``prob`` of ``A``
        (clean, steered) and ``share`` of ``A`` (clean, steered)."""
        rows = []
        for i, a in enumerate(self.steered):
            j = self.languages.index(a) if a in self.languages else None
            others = [k for k in range(len(self.languages)) if k != j]
            d = self.loss_change[i]
            rows.append({"steered": a, "neurons": self.neurons[a],
                         "loss_change": float(d[j]) if j is not None else float("nan"),
                         "other_max_loss_change": float(d[others].max()) if others else float("nan"),
                         "other_max_language": self.languages[others[int(np.argmax(d[others]))]] if others else "",
                         "loss_rank": int((d > d[j]).sum()) + 1 if j is not None else 0,
                         "prob_clean": float(self.clean_prob[j]) if j is not None else float("nan"),
                         "prob": float(self.prob[i, j]) if j is not None else float("nan"),
                         "share_clean": float(self.clean_share[j]) if j is not None else float("nan"),
                         "share": float(self.share[i, j]) if j is not None else float("nan")})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the mode, languages, neuron counts, per-language clean values and, per
        steered language, per language ``loss``, ``loss_change``, ``prob``, ``share`` (NaN as
        null), plus example generations."""
        return {
            "mode": self.mode, "field": self.field, "languages": self.languages, "steered": self.steered,
            "neurons": self.neurons, "info": self.info,
            "clean": {lang: {"loss": _num(self.clean_loss[j]), "prob": _num(self.clean_prob[j]),
                             "share": _num(self.clean_share[j])} for j, lang in enumerate(self.languages)},
            "results": {a: {lang: {"loss": _num(self.loss[i, j]), "loss_change": _num(self.loss[i, j] - self.clean_loss[j]),
                                   "prob": _num(self.prob[i, j]), "share": _num(self.share[i, j])}
                            for j, lang in enumerate(self.languages)} for i, a in enumerate(self.steered)},
            "summary": [{k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}
                        for row in self.summary().to_dict("records")],
            "examples": {"clean": self.clean_generations, **self.generations},
        }


def _num(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _activation_means(run: Any, result: Any, language: str) -> dict[str, np.ndarray]:
    from neuronscope.analyses.locate import label_summaries

    out = {}
    for ls in label_summaries(run, result.field, result.sites):
        if ls.mean is None or language not in ls.labels:
            raise NeuronscopeError(f"the run has no per-label means of {result.field!r} for {language!r}; "
                                   "record it with per-label moments to activate neurons")
        out[ls.site] = ls.mean[ls.labels.index(language)]
    return out


def language_steering(
    model: nn.Module,
    tokenizer: Any,
    result: Any,
    steered: Sequence[str] | None = None,
    *,
    mode: str = "deactivate",
    run: Any = None,
    heldout: Any = None,
    languages: Sequence[str] | None = None,
    prompt_languages: Sequence[str] | None = None,
    langid: LanguageIdentifier | None = None,
    n_prompts: int = 8,
    prompt_chars: int = 12,
    max_new_tokens: int = 32,
    max_tokens: int = 128,
    batch_size: int = 64,
    examples: int = 2,
    progress: Callable[[int], None] | None = None,
) -> LanguageSteering:
    """Deactivate (or activate) each steered language's neurons and measure the held-out loss
    of every language and the language of greedy generations (module docstring).

    * ``result`` — a :class:`~neuronscope.analyses.locate.LocateResult` (normally
      :func:`~neuronscope.analyses.locate.lape`'s) naming each language's neurons;
    * ``steered`` — the languages whose neurons to perturb, one at a time (default: every
      language with at least one neuron);
    * ``mode`` — ``"deactivate"`` (set to 0) or ``"activate"`` (clamp to the language's mean
      activation; needs ``run``, the run or ``{site: SiteSummaries}`` ``result`` came from,
      with per-label moments);
    * ``heldout`` — a :class:`~neuronscope.sources.text.Corpus` with the language label
      (default: the tiny LM's held-out split, :func:`neuronscope.testing.tinylm.tinylm_corpus`);
      ``languages`` restricts the evaluated languages (default: all of its values);
    * ``langid`` — the identifier (default: :func:`~neuronscope.analyses.langid.default_langid`,
      trained on the tiny LM's training split);
    * prompts: the first ``prompt_chars`` characters of the first ``n_prompts`` held-out
      texts of each language of ``prompt_languages`` (default: every evaluated language),
      continued greedily by ``max_new_tokens`` tokens; ``prob`` is NaN for a language without
      prompts and ``share`` counts the generations from the prompts made. ``n_prompts=0``
      skips generation (``prob`` and ``share`` all NaN; the held-out losses only).

    ``progress(k)`` is called after each of the ``1 + len(steered)`` conditions.
    """
    if mode not in MODES:
        raise NeuronscopeError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(n_prompts, int | np.integer) or n_prompts < 0:
        raise NeuronscopeError(f"n_prompts must be a non-negative integer, not {n_prompts!r}")
    for name, v in (("prompt_chars", prompt_chars), ("max_new_tokens", max_new_tokens),
                    ("max_tokens", max_tokens), ("batch_size", batch_size)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise NeuronscopeError(f"{name} must be a positive integer, not {v!r}")
    if not hasattr(result, "units_for"):
        raise NeuronscopeError("result must be a LocateResult (e.g. neuronscope.analyses.locate.lape(run, 'lang'))")
    if mode == "activate" and run is None:
        raise NeuronscopeError("mode='activate' needs run= (the run with per-label moments the result came from)")
    if heldout is None:
        from neuronscope.testing.tinylm import tinylm_corpus

        heldout = tinylm_corpus("heldout")
    if result.field not in heldout.labels:
        raise NeuronscopeError(f"the held-out corpus has no label {result.field!r}; give one labelled by language")
    lab_all = [str(v) for v in heldout.labels[result.field]]
    langs = sorted(set(lab_all)) if languages is None else [str(v) for v in languages]
    missing = [v for v in langs if v not in set(lab_all)]
    if missing:
        raise NeuronscopeError(f"no held-out texts for {', '.join(missing)}; languages: {', '.join(sorted(set(lab_all)))}")
    if steered is None:
        steered = [v for v in result.labels if sum(len(u) for u in result.units_for(v).values())]
    steered = [str(v) for v in steered]
    unknown = [v for v in steered if v not in result.labels]
    if unknown:
        raise NeuronscopeError(f"no language {', '.join(unknown)} in the result; its values: {', '.join(result.labels)}")
    if not steered:
        raise NeuronscopeError("no language has specific neurons in the result; nothing to steer")
    units = {a: {s: u for s, u in result.units_for(a).items() if len(u)} for a in steered}
    empty = [a for a in steered if not units[a]]
    if empty:
        raise NeuronscopeError(f"no neurons specific to {', '.join(empty)}; pick languages with neurons")
    lid = langid or default_langid()
    unknown = [v for v in langs if v not in lid.languages]
    if unknown:
        raise NeuronscopeError(f"the language identifier does not know {', '.join(unknown)}")
    keep = [i for i, v in enumerate(lab_all) if v in set(langs)]
    texts = [heldout.texts[i] for i in keep]
    labels = [lab_all[i] for i in keep]
    plangs = langs if prompt_languages is None else [str(v) for v in prompt_languages]
    bad = [v for v in plangs if v not in langs]
    if bad:
        raise NeuronscopeError(f"prompt language(s) {', '.join(bad)} are not evaluated; use some of {', '.join(langs)}")
    prompts, prompt_lang = [], []
    for v in plangs if n_prompts else []:
        sel = [t for t, lab in zip(texts, labels, strict=True) if lab == v and t.strip()][:n_prompts]
        prompts += [t[:prompt_chars] for t in sel]
        prompt_lang += [v] * len(sel)
    plang = np.array(prompt_lang)
    cols = [lid.languages.index(v) for v in langs]

    def measure() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[str]]]:
        loss = loss_by_label(model, tokenizer, texts, labels, batch_size=batch_size, max_tokens=max_tokens)
        nan = np.full(len(langs), np.nan)
        if not prompts:
            return np.array([loss[v] for v in langs]), nan, nan.copy(), {}
        gens = generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
        post = lid.predict_proba(gens)
        pred = post.argmax(1)
        prob = np.array([post[plang == v, cols[j]].mean() if (plang == v).any() else np.nan
                         for j, v in enumerate(langs)])
        share = np.array([np.mean(pred == c) for c in cols])
        ex = {v: [g for g, p in zip(gens, prompt_lang, strict=True) if p == v][:examples] for v in plangs}
        return np.array([loss[v] for v in langs]), prob, share, ex

    with _eval(model):
        c_loss, c_prob, c_share, c_ex = measure()
        if progress is not None:
            progress(1)
        rows = []
        gens: dict[str, dict[str, list[str]]] = {}
        for k, a in enumerate(steered):
            if mode == "deactivate":
                iv = ablate(model, units[a], how="zero")
            else:
                means = _activation_means(run, result, a)
                iv = compose(clamp(model, s, u, value=means[s][u]) for s, u in units[a].items())
            with iv:
                lo, pr, sh, ex = measure()
            rows.append((lo, pr, sh))
            gens[a] = ex
            if progress is not None:
                progress(k + 2)
    return LanguageSteering(
        mode, result.field, langs, steered, {a: int(sum(len(u) for u in units[a].values())) for a in steered},
        c_loss, c_prob, c_share,
        np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
        info={"method": getattr(result, "method", ""), "prompts": len(prompts), "n_prompts": n_prompts,
              "prompt_chars": prompt_chars, "max_new_tokens": max_new_tokens, "heldout_texts": len(texts),
              "heldout": getattr(heldout, "name", "")},
        clean_generations=c_ex, generations=gens,
    )


def save_language_steering(run: Any, result: LanguageSteering, *, name: str | None = None,
                           attrs: dict[str, Any] | None = None) -> str:
    """Store a language-steering result in ``run`` as ``extras/<name>`` (default
    ``langsteer-<mode>``; an earlier result of that name is replaced): the (steered ×
    languages) arrays ``loss_change``, ``prob`` and ``share`` (the atlas shows them as
    heatmaps), the clean per-language values, and a summary table (per steered language:
    neurons, own loss change, largest other loss change, own-language probability clean →
    steered). Returns the extras name."""
    from neuronscope.analyses.extras import check_extra_name
    from neuronscope.store import Run, open_run

    r = run if isinstance(run, Run) else open_run(Path(run))
    name = check_extra_name(name or f"langsteer-{result.mode}")
    rows, cols = list(result.steered), list(result.languages)
    heat = {"loss_change": {"title": f"held-out loss change (nats/token) per {result.mode}d language (rows) and language (columns)",
                            "rows": rows, "cols": cols},
            "prob": {"title": "P(language | generation) of continuations of each language's prompts", "rows": rows,
                     "cols": cols, "vmin": 0.0, "vmax": 1.0},
            "share": {"title": "share of all continuations identified as each language", "rows": rows, "cols": cols,
                      "vmin": 0.0, "vmax": 1.0}}
    table = {"title": f"{result.mode} each language's neurons",
             "columns": ["language", "neurons", "Δ loss (own)", "max Δ loss (other)", "other language", "own rank",
                         "P(own) clean", "P(own) steered"],
             "rows": [[row["steered"], int(row["neurons"]), _num(row["loss_change"]), _num(row["other_max_loss_change"]),
                       row["other_max_language"], int(row["loss_rank"]), _num(row["prob_clean"]), _num(row["prob"])]
                      for row in result.summary().to_dict("records")]}
    meta = {"title": f"language steering: {result.mode} language-specific neurons", "kind": "language_steering",
            "mode": result.mode, "field": result.field, "steered": rows, "languages": cols,
            "neurons": {k: int(v) for k, v in result.neurons.items()}, "heatmaps": heat, "tables": [table],
            **{k: v for k, v in result.info.items() if isinstance(v, str | int | float)}, **dict(attrs or {})}
    arrays = {"loss_change": result.loss_change,
              "clean_loss": result.clean_loss}
    if np.isfinite(result.prob).any():
        arrays["prob"] = result.prob
        arrays["share"] = result.share
        arrays["clean_prob"] = result.clean_prob
        arrays["clean_share"] = result.clean_share
    r.write_extras(name, arrays, meta)
    return name
