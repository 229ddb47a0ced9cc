"""Lockstep recording: several models on the same samples, cross-products between them.

Two or more models run batch by batch over the same inputs (the same images/features, or
the same corpus read by each model's own tokenizer, with samples aligned across tokenizers
by :mod:`neuronscope.sources.align`: token, word, char-span or document); for every pair of
models the streamed cross-products of their neurons (``CrossProducts``: ``n, Σx, Σy, Σx², Σy², ΣxᵀY`` and, with ``within=True``, ``ΣxᵀX, ΣyᵀY``)
are accumulated with float32 GEMMs into float64, so the full neuron × neuron Pearson
correlation between models (and within each model) is available without storing
activations. Memory is bounded by the correlation matrices, never by the corpus.

For each model the neurons of all its selected sites are concatenated, in site order, into
one population; ``Lockstep.columns`` maps a site glob to columns of that population.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.population import select_sites
from neuronscope.summaries.crossprod import CrossProducts


@dataclass
class Lockstep:
    """Cross-products between every pair of models recorded in lockstep.

    ``models``: model names in order; ``sites[m]``: {site: units} of model ``m`` in column
    order; ``pairs[(a, b)]`` (``a`` before ``b`` in ``models``): the ``CrossProducts`` of model
    ``a``'s concatenated neurons (x) with model ``b``'s (y); ``within``: whether the pairs hold
    within-model Gram matrices too; ``source``: the source's description.
    """

    models: list[str]
    sites: dict[str, dict[str, int]]
    pairs: dict[tuple[str, str], CrossProducts]
    within: bool = True
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Samples seen (the same for every pair)."""
        cp = next(iter(self.pairs.values()))
        cp.flush()
        return int(cp.n)

    def _check_model(self, model: str) -> None:
        if model not in self.sites:
            raise NeuronscopeError(
                f"model {model!r} is not in this lockstep recording; choose one of {', '.join(self.models)}"
            )

    def units(self, model: str) -> int:
        """Total neurons of ``model`` over its recorded sites."""
        self._check_model(model)
        return int(sum(self.sites[model].values()))

    def columns(self, model: str, sites: str | None = None) -> np.ndarray:
        """Column indices of ``model``'s neurons at sites matching the glob(s) ``sites``
        (comma-separated, :func:`~neuronscope.population.select_sites`; None = all sites)."""
        self._check_model(model)
        bounds = np.cumsum([0, *self.sites[model].values()])
        names = list(self.sites[model])
        if sites is None:
            return np.arange(bounds[-1])
        chosen = set(select_sites(names, sites, where=f"of model {model!r}"))
        keep = [i for i, n in enumerate(names) if n in chosen]
        return np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in keep])

    def labels(self, model: str, sites: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(site, unit)`` of each column returned by ``columns(model, sites)``."""
        cols = self.columns(model, sites)
        site = np.concatenate([np.full(u, s, dtype=object) for s, u in self.sites[model].items()])
        unit = np.concatenate([np.arange(u) for u in self.sites[model].values()])
        return site[cols], unit[cols]

    def cross(self, a: str, b: str, sites_a: str | None = None, sites_b: str | None = None) -> CrossProducts:
        """The ``CrossProducts`` of model ``a`` (x, sites ``sites_a``) with model ``b`` (y).

        With no site globs and ``a`` before ``b`` this is the stored pair itself (no copy;
        do not update it); otherwise a sliced (and, for ``b`` before ``a``, transposed) copy."""
        self._check_model(a)
        self._check_model(b)
        if a == b:
            raise NeuronscopeError(
                "cross needs two different models; within-model correlations come from "
                "cross(a, b).corr_xx() (recorded with within=True)"
            )
        if sites_a is None and sites_b is None and (a, b) in self.pairs:
            return self.pairs[(a, b)]  # the whole pair: no copy
        ca, cb = self.columns(a, sites_a), self.columns(b, sites_b)
        if (a, b) in self.pairs:
            return self.pairs[(a, b)].subset(ca, cb)
        return self.pairs[(b, a)].subset(cb, ca).transpose()

    def correlation(self, a: str, b: str, sites_a: str | None = None, sites_b: str | None = None) -> np.ndarray:
        """Pearson correlation (units of a × units of b); NaN for zero-variance neurons."""
        return self.cross(a, b, sites_a, sites_b).correlation()

    def within_correlation(self, model: str, sites: str | None = None) -> np.ndarray:
        """Pearson correlation among ``model``'s own neurons (needs ``within=True``)."""
        other = next(m for m in self.models if m != model)
        return self.cross(model, other, sites_a=sites).corr_xx()

    @classmethod
    def from_arrays(
        cls,
        acts: Mapping[str, Mapping[str, np.ndarray] | np.ndarray],
        within: bool = True,
        block_rows: int | None = None,
    ) -> Lockstep:
        """Lockstep cross-products of in-memory populations on the same samples:
        ``acts[model][site]`` is ``(n_samples, units)`` (a bare array is site ``"all"``)."""
        acts = {m: (a if isinstance(a, Mapping) else {"all": a}) for m, a in acts.items()}
        lens = {len(a) for per in acts.values() for a in per.values()}
        if len(lens) != 1:
            raise NeuronscopeError("all populations given to Lockstep.from_arrays need the same samples (rows)")
        n = lens.pop()
        lock = _empty(acts, {m: {s: a.shape[1] for s, a in per.items()} for m, per in acts.items()},
                      within, block_rows)
        step = 4096
        for r0 in range(0, n, step):
            _fold(lock, {m: {s: np.asarray(a[r0 : r0 + step], dtype=np.float32) for s, a in per.items()}
                         for m, per in acts.items()})
        return lock

    def merge(self, other: Lockstep) -> Lockstep:
        """Fold in a lockstep recording of the same models and sites on disjoint samples."""
        if other.models != self.models or other.sites != self.sites:
            raise NeuronscopeError("can only merge lockstep recordings of the same models and sites")
        for k, cp in self.pairs.items():
            cp.merge(other.pairs[k])
        return self

    def save(self, path: str | Path) -> Path:
        """Write to one ``.npz`` file (arrays of every pair plus JSON metadata)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        pair_attrs = []
        for i, ((a, b), cp) in enumerate(self.pairs.items()):
            arr, attrs = cp.state()
            arrays.update({f"p{i}.{k}": v for k, v in arr.items()})
            pair_attrs.append({"a": a, "b": b, "attrs": attrs})
        meta = {"models": self.models, "sites": self.sites, "within": self.within,
                "source": self.source, "pairs": pair_attrs, "format": "neuronscope.lockstep/1"}
        arrays["meta"] = np.array(json.dumps(meta, default=str))
        try:
            with open(path, "wb") as f:
                np.savez(f, **arrays)
        except OSError as e:
            raise NeuronscopeError(f"cannot write {path} ({e.strerror}); choose a writable path") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Lockstep:
        """Read a file written by ``save``."""
        try:
            z = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NeuronscopeError(f"cannot read lockstep file {path} ({e}); pass a file written by Lockstep.save") from None
        with z:
            meta = json.loads(str(z["meta"]))
            pairs = {}
            for i, p in enumerate(meta["pairs"]):
                arr = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith(f"p{i}.")}
                pairs[(p["a"], p["b"])] = CrossProducts.from_state(arr, p["attrs"])
        return cls(meta["models"], meta["sites"], pairs, meta["within"], meta["source"])


def _empty(
    models: Iterable[str], sites: dict[str, dict[str, int]], within: bool, block_rows: int | None
) -> Lockstep:
    names = list(models)
    if len(names) < 2:
        raise NeuronscopeError("lockstep recording needs at least two models; pass two or more")
    units = {m: sum(sites[m].values()) for m in names}
    pairs = {(a, b): CrossProducts(units[a], units[b], gram=within, block_rows=block_rows)
             for a, b in itertools.combinations(names, 2)}
    return Lockstep(names, {m: dict(sites[m]) for m in names}, pairs, within)


def _fold(lock: Lockstep, acts: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    pops = {}
    for m in lock.models:
        per = [acts[m][s] for s in lock.sites[m]]
        pops[m] = per[0] if len(per) == 1 else np.concatenate(per, axis=1)
    for (a, b), cp in lock.pairs.items():
        cp.update_pair(pops[a], pops[b])


def _same_samples(first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> bool:
    keys = set(first) & set(other)
    return bool(keys) and all(np.array_equal(first[k], other[k]) for k in keys)


def _is_text(source: Any) -> bool:
    return hasattr(source, "corpus") and hasattr(source, "tokenizer")


def _same_tokenization(a: Any, b: Any) -> bool:
    """Sources that certainly tokenize alike: one object, or one tokenizer over one corpus."""
    same = ("tokenizer", "corpus")
    return a is b or (all(getattr(a, k) is getattr(b, k) for k in same)
                      and all(getattr(a, k, None) == getattr(b, k, None) for k in _BATCHING_ATTRS))


#: Source attributes that decide how a text source batches its corpus.
_BATCHING_ATTRS = ("max_tokens", "batch_size", "batching", "max_batch_tokens", "window", "pack")


def share_plan(names: list[str], sources: Mapping[str, Any]) -> dict[str, Any]:
    """Text sources of the same corpus with different tokenizers batch by the first model's
    plan (:meth:`~neuronscope.sources.text.TextSource.with_plan`): length bucketing sorts by
    each tokenizer's own lengths, and lockstep needs the same documents in every batch."""
    out = dict(sources)
    first = sources[names[0]]
    if not (_is_text(first) and callable(getattr(first, "with_plan", None))) or getattr(first, "batching", "") == "pack":
        return out
    for m in names[1:]:
        src = sources[m]
        if (src is first or not callable(getattr(src, "with_plan", None)) or getattr(src, "batching", "") == "pack"
                or _same_tokenization(first, src) or src.corpus.fingerprint() != first.corpus.fingerprint()):
            continue
        out[m] = src.with_plan(first.plan())
    return out


def _check_vocab(name: str, model: Any, source: Any) -> None:
    """A tokenizer with more ids than the model has token embeddings feeds the model ids it
    was not trained on (or crashes it minutes later): refuse before any forward pass."""
    get = getattr(model, "get_input_embeddings", None)  # the Hugging Face convention
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return
    rows = getattr(emb, "num_embeddings", None)
    try:
        size = len(source.tokenizer)
    except TypeError:
        return
    if isinstance(rows, int) and size > rows:
        raise NeuronscopeError(
            f"model {name!r} has {rows} token embeddings but its source's tokenizer has {size} tokens; give "
            "each model a TextSource with its own tokenizer ({name: TextSource(corpus, tokenizer)})"
        )


def check_lockstep_sources(models: Mapping[str, Any], sources: Mapping[str, Any], align: str) -> None:
    """Everything that can be checked before a forward pass, with one-line errors:

    * text sources: each model's tokenizer fits its vocabulary (:func:`_check_vocab`); sources
      that differ read the same corpus (fingerprint) in batches of the same number of
      documents; ``word`` / ``char-span`` need character offsets from every tokenizer;
      ``token`` needs the tokenizations to agree — checked by tokenizing the whole corpus with
      every tokenizer (no forward pass) and comparing document by document
      (:func:`~neuronscope.sources.align.first_disagreement`);
    * other sources (images, features) support only ``align='token'`` (rows are items).
    """
    from neuronscope.sources.align import first_disagreement

    names = list(sources)
    text = [m for m in names if _is_text(sources[m])]
    if len(text) != len(names):
        if align != "token":
            raise NeuronscopeError(f"align={align!r} aligns text by document and character span; "
                                   "image and feature sources align item by item (align='token')")
        return
    for m in names:
        _check_vocab(m, models[m], sources[m])
    first = sources[names[0]]
    for m in names[1:]:
        src = sources[m]
        if src is first:
            continue
        if src.corpus.fingerprint() != first.corpus.fingerprint():
            raise NeuronscopeError(f"the sources of {names[0]!r} and {m!r} hold different corpora; "
                                   "give every model a source over the same corpus")
        if src.batch_size != first.batch_size:
            raise NeuronscopeError(f"the sources of {names[0]!r} and {m!r} batch {first.batch_size} and "
                                   f"{src.batch_size} documents; give every source the same batch_size")
        mine = {k: getattr(first, k, None) for k in _BATCHING_ATTRS}
        theirs = {k: getattr(src, k, None) for k in _BATCHING_ATTRS}
        if mine != theirs:
            diff = next(k for k in _BATCHING_ATTRS if mine[k] != theirs[k])
            raise NeuronscopeError(f"the sources of {names[0]!r} and {m!r} batch differently ({diff}: {mine[diff]} vs "
                                   f"{theirs[diff]}); give every source the same batching options")
        if getattr(src, "batching", None) == "pack" and not _same_tokenization(first, src):
            raise NeuronscopeError(f"packed contexts of {names[0]!r} and {m!r} hold different tokens (different "
                                   "tokenizers); record lockstep with bucket or docs batching")
    if align in ("word", "char-span"):
        for m in names:
            if not getattr(sources[m], "offsets", False):
                raise NeuronscopeError(
                    f"align={align!r} needs character offsets, and the tokenizer of {m!r} gives none "
                    "(use a Hugging Face fast tokenizer); or align by doc"
                )
    if align != "token":
        return
    others = [m for m in names[1:] if not _same_tokenization(first, sources[m])]
    if not others:
        return
    gens = {m: sources[m].batches() for m in [names[0], *others]}
    for ref in gens[names[0]]:
        for m in others:
            batch = next(gens[m], None)
            why = "it has fewer documents" if batch is None else first_disagreement(ref.samples, batch.samples)
            if why is not None:
                raise NeuronscopeError(
                    f"models {names[0]!r} and {m!r} tokenize the corpus differently ({why}); token-level "
                    "alignment needs identical tokenizations: align by word, char-span or doc instead "
                    "(align='word' / 'char-span' / 'doc'; CLI --align)"
                )


def record_lockstep(
    models: Mapping[str, Any],
    source: Any,
    sites: str | Mapping[str, str],
    *,
    within: bool = True,
    max_samples: int | None = None,
    conv: str = "positions",
    block_rows: int | None = None,
    progress: bool = False,
    align: str = "token",
    pool: str = "mean",
) -> Lockstep:
    """Run ``models`` ({name: torch module}) over ``source`` in lockstep and accumulate the
    cross-products of every pair of models' neurons.

    ``source`` is one source shared by all models (a ``TensorSource``, or a ``TextSource``
    when all models share its tokenizer) or a {name: source} dict — for text models, each
    model's own ``TextSource`` (its own tokenizer) over the same corpus with the same
    ``batch_size``. ``sites`` is a module glob for every model or a {name: glob} dict (same
    syntax as recording). ``within=True`` also accumulates each model's own Gram matrix
    (needed for rotation baselines, lasso and spectral matching, linear CKA). ``max_samples``
    stops after that many (aligned) samples (the last batch is cut).

    ``align`` says what a sample (a row of the cross-products) is when models tokenize
    differently (:mod:`neuronscope.sources.align`): ``token`` (default; every model must
    tokenize the corpus identically — checked by tokenizing it with every tokenizer before
    any forward pass), ``word`` / ``char-span`` (activations pooled over the tokens of each
    segment of the coarsest common segmentation of the tokenizations' character spans;
    ``word`` merges touching segments into whitespace-separated words) or ``doc`` (pooled per
    document). ``pool`` is ``mean``, ``max`` or ``last`` (the last token). Special tokens
    (``[CLS]``, ``<s>``, BOS) are left out of pooled rows. Images and features align item by
    item (``token``). Every check that needs no forward pass runs before the first one
    (:func:`check_lockstep_sources`); problems are one-line ``NeuronscopeError`` messages.
    """
    import torch

    from neuronscope.recording import forward_batches
    from neuronscope.sources.align import check_align
    from neuronscope.sources.torch_sites import sites as resolve_sites

    names = list(models)
    if len(names) < 2:
        raise NeuronscopeError("lockstep recording needs at least two models; pass two or more")
    if max_samples is not None and max_samples < 2:
        raise NeuronscopeError("max_samples must be at least 2 to define correlations")
    check_align(align, pool)
    if isinstance(source, Mapping):
        missing = [m for m in names if m not in source]
        if missing:
            raise NeuronscopeError(f"no source given for model {missing[0]!r}; give one source per model")
    site_globs = {m: (sites[m] if isinstance(sites, Mapping) else sites) for m in names}
    sources = {m: (source[m] if isinstance(source, Mapping) else source) for m in names}
    site_lists = {m: resolve_sites(models[m], site_globs[m]) for m in names}
    sources = share_plan(names, sources)
    check_lockstep_sources(models, sources, align)
    # each forward_batches generator holds torch.inference_mode() open while suspended and
    # the generators end in interleaved order; one outer context restores the caller's mode
    with torch.inference_mode():
        return _record(names, models, sources, site_lists, forward_batches, within, max_samples,
                       conv, block_rows, progress, align, pool)


def _aligned(
    names: list[str], sources: Mapping[str, Any], step: Mapping[str, Any], align: str, pool: str, text: bool
) -> dict[str, dict[str, np.ndarray]]:
    """The batch's activations of every model as rows aligned across models."""
    from neuronscope.sources.align import first_disagreement, plan_alignment

    acts = {m: step[m][1] for m in names}
    first = step[names[0]][0].samples
    if not text:
        for m in names[1:]:
            if not _same_samples(first, step[m][0].samples):
                raise NeuronscopeError(
                    f"models {names[0]!r} and {m!r} saw different samples in a batch (different "
                    "sources?); lockstep needs the same samples for every model"
                )
        return acts
    docs = np.unique(first["doc"])
    for m in names[1:]:
        other = step[m][0].samples
        if not np.array_equal(docs, np.unique(other["doc"])):
            raise NeuronscopeError(f"models {names[0]!r} and {m!r} saw different documents in a batch; "
                                   "give every model a source over the same corpus and batch_size")
        if align == "token":
            why = first_disagreement(first, other)
            if why is not None:
                raise NeuronscopeError(f"models {names[0]!r} and {m!r} tokenize differently ({why}); "
                                       "align by word, char-span or doc instead")
    if align == "token":
        return acts
    plans, _ = plan_alignment([step[m][0].samples for m in names], align,
                              [getattr(sources[m], "max_tokens", None) for m in names])
    return {m: {s: plan.apply(a, pool) for s, a in acts[m].items()} for m, plan in zip(names, plans, strict=True)}


def _record(
    names: list[str],
    models: Mapping[str, Any],
    sources: Mapping[str, Any],
    site_lists: Mapping[str, list[Any]],
    forward_batches: Any,
    within: bool,
    max_samples: int | None,
    conv: str,
    block_rows: int | None,
    progress: bool,
    align: str,
    pool: str,
) -> Lockstep:
    gens = {m: forward_batches(models[m], sources[m], site_lists[m], conv=conv) for m in names}
    text = all(_is_text(sources[m]) for m in names)
    lock: Lockstep | None = None
    seen = 0
    bar = _bar(progress, sources[names[0]])
    try:
        while True:
            step = {}
            for m in names:
                step[m] = next(gens[m], None)
            done = [m for m in names if step[m] is None]
            if done:
                if len(done) != len(names):
                    raise NeuronscopeError(
                        f"models {', '.join(done)} ran out of batches before the others; "
                        "give every model the same source"
                    )
                break
            acts = _aligned(names, sources, step, align, pool, text)
            if lock is None:
                units = {m: {s: a.shape[1] for s, a in acts[m].items()} for m in names}
                lock = _empty(names, units, within, block_rows)
                lock.source = _describe(names, sources, align, pool)
            n = len(next(iter(acts[names[0]].values())))
            if max_samples is not None and seen + n > max_samples:
                n = max_samples - seen
                acts = {m: {s: a[:n] for s, a in per.items()} for m, per in acts.items()}
            if n:
                _fold(lock, acts)
            seen += n
            if bar is not None:
                bar.update(step[names[0]][0].items)
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        for g in reversed(list(gens.values())):
            g.close()
        if bar is not None:
            bar.close()
    if lock is None or seen < 2:
        raise NeuronscopeError("the source gave fewer than 2 samples; lockstep needs a longer corpus")
    lock.source = {**lock.source, "samples": seen}
    for cp in lock.pairs.values():
        cp.flush()
    return lock


def _describe(names: list[str], sources: Mapping[str, Any], align: str, pool: str) -> dict[str, Any]:
    """The first model's source description, the alignment, and each model's tokenizer."""
    first = sources[names[0]]
    out = dict(first.describe()) if hasattr(first, "describe") else {}
    out["align"] = align
    if align != "token":
        out["pool"] = pool
    if all(_is_text(sources[m]) for m in names):
        out["tokenizers"] = {m: sources[m].describe().get("tokenizer") for m in names}
    return out


class _Bar:
    def __init__(self, total: int):
        from rich.progress import Progress

        self._p = Progress(transient=True)
        self._p.start()
        self._t = self._p.add_task("lockstep", total=total)

    def update(self, k: int) -> None:
        self._p.advance(self._t, k)

    def close(self) -> None:
        self._p.stop()


def _bar(enabled: bool, source: Any) -> _Bar | None:
    if not enabled:
        return None
    try:
        total = len(source)
    except TypeError:
        return None
    return _Bar(total)
