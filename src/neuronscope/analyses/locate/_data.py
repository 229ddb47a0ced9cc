"""What locating reads: per-label summaries of a run, and (for fits) the activations themselves.

* :func:`label_summaries` — per site, the per-label firing counts (``labels.<field>``) and
  per-label moments (``label_moments.<field>``) of a run or of ``{site: SiteSummaries}``,
  with the labels that have samples; the errors for a missing or degenerate label.
* :func:`rest_moments` — for every label ``l`` the moments of all other labels together
  (one-vs-rest), by Chan et al.'s combination of the per-label moments.
* Activations for the probe fits, streamed in batches ``(acts per site, label codes, split
  groups, sample ids)``: :class:`StoredActivations` (the run's stored activations, only the
  needed columns), :class:`ModelActivations` (a second pass of the model over the source,
  for ``keep=summaries`` runs), :class:`ArrayActivations` (arrays in memory).
* :func:`collect` — the chosen columns of a deterministic per-label subsample, split into
  train and test by document.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.population import select_sites

#: One batch of a stream: ``({site: acts (n, cols)}, label codes (n,), split groups (n,), sample ids (n,))``.
Chunk = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]


@dataclass
class LabelSummaries:
    """The per-label summaries of one site for one label field.

    ``labels`` are the values with at least one sample (in the run's category order; values
    without samples are left out), ``codes[i]`` the run's code of ``labels[i]``. Per label
    ``i`` and neuron ``u``: ``n[i]`` samples, ``fire[i, u] = #{a_u > 0}``, ``mean[i, u]`` and
    ``var[i, u]`` (ddof 0; None when the run has no per-label moments). ``unlabeled`` counts
    the site's samples whose label is missing (they enter no per-label statistic).
    """

    site: str
    field: str
    labels: list[str]
    codes: np.ndarray
    n: np.ndarray
    fire: np.ndarray
    mean: np.ndarray | None
    var: np.ndarray | None
    unlabeled: int
    all_labels: list[str]

    @property
    def units(self) -> int:
        return int(self.fire.shape[1])

    @property
    def prob(self) -> np.ndarray:
        """Activation probability ``P(a_u > 0 | label) = fire / n``, (labels, units)."""
        return self.fire / self.n[:, None]

    def code_map(self) -> np.ndarray:
        """Lookup from the run's label code (index into ``all_labels``) to the row of
        ``labels`` (-1 for a value without samples); index ``len(all_labels)`` is -1 too, so
        ``code_map()[codes]`` maps missing labels (code -1) to -1."""
        out = np.full(len(self.all_labels) + 1, -1, dtype=np.int64)
        out[self.codes] = np.arange(len(self.codes))
        return out


def _is_run(obj: Any) -> bool:
    return callable(getattr(obj, "summaries", None)) and hasattr(obj, "sites")


def _adds_labels_hint(run: Any, field: str) -> str:
    """The command that gives a run per-label summaries for ``field``."""
    path = getattr(run, "path", "RUN")
    cats = getattr(run, "label_categories", {}) or {}
    if field in cats and getattr(run, "has_activations", False):
        return f"run `neuronscope summarize {path}` to recompute its summaries from the stored activations"
    return (f"record the run again with `neuronscope record --labels FILE` (one {field!r} value per document) "
            f"or from a .jsonl corpus whose documents carry a {field!r} field")


def label_summaries(
    run_or_summaries: Any,
    label: str,
    site: str | Sequence[str] | None = None,
    *,
    moments: bool = True,
) -> list[LabelSummaries]:
    """Per-label summaries of ``label`` for the sites selected by ``site`` (a name, glob or
    comma-separated globs; default all), from a run or ``{site: SiteSummaries}``.

    Raises :class:`NeuronscopeError` naming the fix when a site has no summaries, when the
    summaries hold no per-label firing (or, with ``moments``, no per-label moments) for
    ``label`` — the message names the command that adds them — or when fewer than two label
    values have samples.
    """
    if _is_run(run_or_summaries):
        names = list(run_or_summaries.sites)
        get = run_or_summaries.summaries
        where = f"of run {getattr(run_or_summaries, 'path', '')}"
    elif isinstance(run_or_summaries, Mapping):
        names = list(run_or_summaries)
        get = run_or_summaries.get
        where = "of the summaries"
    else:
        raise NeuronscopeError("pass a Run (neuronscope.open_run) or a dict {site: SiteSummaries}")
    chosen = select_sites(names, site, where=where)
    out: list[LabelSummaries] = []
    for name in chosen:
        ss = get(name)
        if ss is None:
            raise NeuronscopeError(
                f"site {name!r} has no summaries; record with --keep both or summaries "
                "(or run `neuronscope summarize RUN` on its stored activations)"
            )
        fields = sorted(k.split(".", 1)[1] for k in ss.parts if k.startswith("labels."))
        if f"labels.{label}" not in ss.parts:
            known = ", ".join(fields) if fields else "none"
            raise NeuronscopeError(
                f"site {name!r} has no per-label firing for label {label!r} (its label fields: {known}); "
                + _adds_labels_hint(run_or_summaries, label)
            )
        fire_part = ss.parts[f"labels.{label}"].result()
        mom = ss.parts.get(f"label_moments.{label}")
        if moments and mom is None:
            raise NeuronscopeError(
                f"site {name!r} has per-label firing but no per-label moments for {label!r} (recorded by an "
                "older neuronscope); " + _adds_labels_hint(run_or_summaries, label)
            )
        categories = list(ss.parts[f"labels.{label}"].grouping.categories or [])
        n = np.asarray(fire_part["n"], dtype=np.int64)
        used = np.flatnonzero(n > 0)
        total = int(ss.parts["moments"].count) if "moments" in ss.parts else int(n.sum())
        if len(used) < 2:
            have = ", ".join(repr(categories[i]) for i in used) or "none"
            raise NeuronscopeError(
                f"label {label!r} has {len(used)} value(s) with samples at site {name!r} ({have}); locating "
                "neurons specific to a label needs at least two values — use a label with several values"
            )
        mean = var = None
        if mom is not None:
            mr = mom.result()
            mean, var = np.asarray(mr["mean"])[used], np.asarray(mr["var"])[used]
        out.append(LabelSummaries(
            site=name, field=label, labels=[categories[i] for i in used], codes=used, n=n[used],
            fire=np.asarray(fire_part["count"], dtype=np.int64)[used], mean=mean, var=var,
            unlabeled=max(total - int(n.sum()), 0), all_labels=categories,
        ))
    if not out:
        raise NeuronscopeError("no site selected; pass a site glob that matches the run's sites")
    labels = {tuple(ls.labels) for ls in out}
    if len(labels) > 1:
        raise NeuronscopeError(f"sites disagree on the values of label {label!r}; locate one site at a time")
    return out


def rest_moments(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each label ``l``, the count, mean and variance (ddof 0) of all other labels'
    samples together: ``n_r = N − n_l``, ``m_r = (Σ_g n_g m_g − n_l m_l) / n_r`` and
    ``M2_r = Σ_{g≠l} [M2_g + n_g (m_g − m_r)²]`` (Chan et al.'s combination, exact in
    float64). Returns ``(n_r (L,), mean_r (L, units), var_r (L, units))``."""
    n = np.asarray(n, dtype=np.float64)
    total = n.sum()
    m2 = var * n[:, None]
    s = (n[:, None] * mean).sum(axis=0)
    n_r = total - n
    mean_r = (s[None, :] - n[:, None] * mean) / np.maximum(n_r, 1)[:, None]
    var_r = np.empty_like(mean)
    for lab in range(len(n)):
        others = np.arange(len(n)) != lab
        dev = mean[others] - mean_r[lab]
        var_r[lab] = (m2[others] + n[others, None] * dev**2).sum(axis=0) / max(n_r[lab], 1)
    return n_r.astype(np.int64), mean_r, var_r


# --------------------------------------------------------------------------- activations


class ActivationSource(Protocol):
    """Where the fits read activations from: batches of chosen columns with label codes."""

    field: str
    categories: list[str]

    def stream(self, columns: Mapping[str, np.ndarray | None]) -> Iterator[Chunk]:
        """Yield ``({site: acts[:, columns[site]]}, codes, groups, sample ids)`` batch by
        batch (``None`` = all columns); codes index ``categories`` (-1 = missing)."""


class ArrayActivations:
    """Activations held in memory: ``acts`` ``{site: (n, units)}``, label ``codes`` (n,)
    indexing ``categories`` (-1 = missing) and the split ``groups`` (n,; default: each
    sample its own group)."""

    def __init__(self, acts: Mapping[str, np.ndarray], codes: Any, categories: Sequence[str], field: str = "label",
                 groups: Any = None) -> None:
        self.acts = {s: np.asarray(a, dtype=np.float32) for s, a in acts.items()}
        n = {a.shape[0] for a in self.acts.values()}
        self.codes = np.asarray(codes, dtype=np.int64)
        if len(n) != 1 or n.pop() != len(self.codes):
            raise NeuronscopeError("every site's activations need one row per label code")
        self.groups = np.arange(len(self.codes)) if groups is None else np.asarray(groups, dtype=np.int64)
        self.categories = [str(c) for c in categories]
        self.field = field

    def stream(self, columns: Mapping[str, np.ndarray | None]) -> Iterator[Chunk]:
        ids = np.arange(len(self.codes), dtype=np.int64)
        for a in range(0, len(self.codes), 65536):
            sl = slice(a, a + 65536)
            yield ({s: (self.acts[s][sl] if c is None else self.acts[s][sl][:, c]) for s, c in columns.items()},
                   self.codes[sl], self.groups[sl], ids[sl])


class StoredActivations:
    """The run's stored activations, ``chunk_rows`` rows at a time, only the requested columns
    (Zarr reads just the column chunks that hold them). Label codes and documents come from
    the run's sample coordinates; non-finite values become 0 (the recording's NaN policy)."""

    def __init__(self, run: Any, field: str, chunk_rows: int = 16384) -> None:
        if not getattr(run, "has_activations", False):
            raise NeuronscopeError(
                f"run {getattr(run, 'path', '')} kept no activations; pass model and source for a second pass "
                "over the corpus (the CLI does this for runs of named models), or record with --keep both"
            )
        cats = run.label_categories
        if field not in cats:
            raise NeuronscopeError(f"run {run.path} has no label {field!r}; its labels: {', '.join(cats) or 'none'}")
        self.run = run
        self.field = field
        self.categories = list(cats[field])
        self.chunk_rows = int(chunk_rows)

    def stream(self, columns: Mapping[str, np.ndarray | None]) -> Iterator[Chunk]:
        run = self.run
        n = run.n_rows
        rows = np.asarray(run.group["rows"][:n])
        coords = run.attrs.get("sample_coords", [])
        codes_all = np.asarray(run.group["samples"][self.field][: run.n_samples]) if self.field in coords else None
        if codes_all is None:
            raise NeuronscopeError(f"run {run.path} stored no {self.field!r} codes")
        key = "doc" if "doc" in coords else ("item" if "item" in coords else None)
        groups_all = np.asarray(run.group["samples"][key][: run.n_samples]) if key else None
        arrays = {s: run.group["sites"][s]["activations"] for s in columns}
        for a in range(0, n, self.chunk_rows):
            b = min(n, a + self.chunk_rows)
            ids = rows[a:b]
            out = {}
            for s, c in columns.items():
                block = arrays[s][a:b] if c is None else arrays[s].get_orthogonal_selection((slice(a, b), np.asarray(c)))
                block = np.asarray(block, dtype=np.float32)
                if not np.isfinite(block.sum()):
                    block = np.where(np.isfinite(block), block, np.float32(0))
                out[s] = block
            yield out, codes_all[ids], (groups_all[ids] if groups_all is not None else ids), ids


class ModelActivations:
    """A second pass of ``model`` over ``source`` (``keep=summaries`` runs): the requested
    columns of each batch, label codes from the source's samples, documents (or items) as
    split groups. Nothing but the requested columns is kept."""

    def __init__(self, model: Any, source: Any, field: str, conv: str = "positions") -> None:
        cats = getattr(source, "label_categories", {}) or {}
        if field not in cats:
            raise NeuronscopeError(f"the source has no label {field!r}; its labels: {', '.join(cats) or 'none'}")
        self.model = model
        self.source = source
        self.field = field
        self.categories = list(cats[field])
        self.conv = conv

    def stream(self, columns: Mapping[str, np.ndarray | None]) -> Iterator[Chunk]:
        from neuronscope.recording import finite_or_zero, forward_batches

        done = 0
        sites = list(columns)
        for batch, acts in forward_batches(self.model, self.source, ",".join(sites), conv=self.conv):
            missing = [s for s in sites if s not in acts]
            if missing:
                raise NeuronscopeError(f"the model has no site {missing[0]!r}; pass the model the run was recorded from")
            n = len(next(iter(acts.values())))
            ids = np.arange(done, done + n, dtype=np.int64)
            done += n
            out = {}
            for s, c in columns.items():
                a, _ = finite_or_zero(acts[s])
                out[s] = np.ascontiguousarray(a if c is None else a[:, np.asarray(c)])
            samples = batch.samples
            key = "doc" if "doc" in samples else ("item" if "item" in samples else None)
            yield out, np.asarray(samples[self.field], dtype=np.int64), (samples[key] if key else ids), ids


def check_categories(source: ActivationSource, ls: LabelSummaries) -> None:
    """Refuse activations whose label categories differ from the summaries'."""
    if list(source.categories) != list(ls.all_labels):
        raise NeuronscopeError(
            f"the activations' {ls.field!r} values {source.categories[:5]}… differ from the run's "
            f"{ls.all_labels[:5]}…; use the source the run was recorded from"
        )


def split_mask(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Test-set membership by group (document): ``splitmix64(group + seed·2³²) / 2⁶⁴ <
    test_fraction``, so every token of a document is on the same side (no leak of a
    document's tokens between train and test) and the split is reproducible."""
    from neuronscope.recording import keep_mask

    g = np.asarray(groups, dtype=np.int64) + (np.int64(seed) << np.int64(32))
    return keep_mask(g, test_fraction)


@dataclass
class Collected:
    """Columns of a per-label subsample: ``acts[site]`` (n, len(columns[site])) float32,
    ``y`` the row of ``labels`` of each sample, ``test`` the held-out mask."""

    acts: dict[str, np.ndarray]
    y: np.ndarray
    test: np.ndarray


def collect(
    source: ActivationSource,
    columns: Mapping[str, np.ndarray],
    ls: LabelSummaries,
    *,
    per_label: int,
    test_fraction: float,
    seed: int,
) -> Collected:
    """Stream ``source`` once and keep the ``columns`` of a deterministic subsample of at
    most about ``per_label`` samples per label value: sample ``i`` of label ``l`` is kept iff
    ``splitmix64(i) / 2⁶⁴ < per_label / n_l`` (``n_l`` from the summaries). Samples with a
    missing label are skipped. Memory: kept samples × chosen columns."""
    check_categories(source, ls)
    lookup = ls.code_map()
    rate = np.minimum(1.0, per_label / np.maximum(ls.n, 1))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in columns}
    ys: list[np.ndarray] = []
    gs: list[np.ndarray] = []
    for acts, codes, groups, ids in source.stream(columns):
        y = lookup[np.where(codes >= 0, codes, len(ls.all_labels))]
        keep = y >= 0
        if keep.any():
            r = np.zeros(len(y))
            r[keep] = rate[y[keep]]
            keep &= _keep_by_rate(ids, r)
        if not keep.any():
            continue
        for s in columns:
            parts[s].append(acts[s][keep])
        ys.append(y[keep])
        gs.append(np.asarray(groups)[keep])
    if not ys:
        raise NeuronscopeError(f"no labelled sample of {ls.field!r} in the activations")
    y = np.concatenate(ys)
    groups = np.concatenate(gs)
    return Collected({s: np.concatenate(p) for s, p in parts.items()}, y, split_mask(groups, test_fraction, seed))


def _keep_by_rate(ids: np.ndarray, rate: np.ndarray) -> np.ndarray:
    from neuronscope.recording import keep_mask

    out = np.zeros(len(ids), dtype=bool)
    for r in np.unique(rate):
        sel = rate == r
        if r > 0:
            out[sel] = keep_mask(ids[sel], float(r))
    return out


def replay_source(run: Any, model: str | None = None) -> tuple[Any, Any]:
    """``(model, source)`` that reproduce a run's samples: the run's model by name (or the
    model named ``model``; :func:`neuronscope.specs.load_model`) over its corpus file (and
    labels file), tokenized with the run's batch size and truncation, label categories fixed
    to the run's. Refuses when the corpus was not a file or changed since the recording."""
    from neuronscope.sources.text import TextSource, load_corpus
    from neuronscope.specs import load_model

    cfg = run.config
    src = cfg.get("source") or {}
    if src.get("kind") != "text" or not src.get("corpus") or str(src["corpus"]).startswith("<"):
        raise NeuronscopeError(
            f"run {run.path} kept no activations and its corpus is not a file to read again; "
            "pass model= and source= for a second pass"
        )
    corpus = load_corpus(src["corpus"])
    if corpus.fingerprint() != src.get("fingerprint"):
        raise NeuronscopeError(f"corpus {src['corpus']} changed since run {run.path} was recorded; pass the original")
    added = src.get("added_labels") or {}
    if any(v.get("per") == "token" for v in added.values()) or (added and not src.get("label_file")):
        raise NeuronscopeError(
            f"run {run.path} was recorded with labels given in Python (not a labels file); pass model= and "
            "source= for a second pass"
        )
    net, tok = load_model(model or cfg["model"])
    own = {k: v for k, v in run.label_categories.items() if k not in added}
    source: Any = TextSource(corpus, tok, label_categories=own, **TextSource.options(src))
    if added:
        from neuronscope.sources.labels import LabeledSource

        source = LabeledSource(source, src["label_file"])
        if source.describe() != src:
            raise NeuronscopeError(f"labels file {src['label_file']} changed since run {run.path} was recorded")
    return net, source
