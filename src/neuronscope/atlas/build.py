"""Build the static neuron atlas of a run: HTML + one JS/CSS bundle + compact data scripts.

The atlas is what Neuroscope's per-neuron pages and OpenAI's neuron viewer (Bills et al. 2023,
"Language models can explain neurons in language models") show, built offline from a run's
streaming summaries: an index of sites with their characterization headline figures, one
sortable table per site, one page per neuron (statistics, activation histogram, top-k
examples with context coloured by activation, firing per label value, the label values the
neuron is specific to, what it writes into the vocabulary), one page per label field (neurons
specific to each value per site, probe accuracy against k), heatmaps of
comparison/matching results, and the causal results saved into the run: per-neuron importance
(mean |conductance|) as a column of the site table, a page per influential neuron path (its
neurons per layer with their influence), per ablation and per steering curve (line plots).

It opens from the file system: Chromium refuses ``fetch()`` on ``file://``, so every data file
is a classic script ``data/<key>.js`` that assigns ``window.NS_DATA[key] = {...}`` and is loaded
on demand. Data is split so a neuron page loads only the index, its site's table, one chunk of
``CHUNK`` neurons and the token table. The JSON inside those scripts escapes ``<``, ``>``,
``&``, U+2028 and U+2029, and the viewer inserts every string as a text node, so hostile corpus
text stays text.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.analyses._progress import ProgressArg, progress_bar
from neuronscope.analyses.characterize import characterize, site_examples, site_summary
from neuronscope.errors import NeuronscopeError
from neuronscope.store import durable_write

#: Neurons per data chunk file (a neuron page loads exactly one chunk).
CHUNK = 64
#: Largest heatmap side shipped to the browser; larger matrices are block-averaged.
MAX_HEATMAP = 160
#: Points of the firing-frequency-by-rank curve (log-spaced ranks).
RANK_POINTS = 240
#: Context activations are shipped as integers in [-QLEVELS, QLEVELS] of the neuron's scale.
QLEVELS = 999
#: Marker file that identifies a directory written by ``write_site``.
MARKER = ".neuronscope-atlas"

_STATIC = ("app.js", "style.css")
_JS_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


# --------------------------------------------------------------------------- serialisation


def js_literal(obj: Any) -> str:
    """JSON text of ``obj`` that is also safe inside a ``<script>`` element.

    ``<``, ``>``, ``&``, U+2028 and U+2029 become ``\\u003c``-style escapes (JSON string escapes,
    so the value is unchanged), which means no ``</script>`` or ``<!--`` can appear and the
    text is a valid JavaScript expression even on engines older than ES2019.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_JS_ESCAPES)


def _data_script(key: str, obj: Any) -> str:
    return (
        "window.NS_DATA=window.NS_DATA||{};window.NS_DATA["
        + js_literal(key)
        + "]="
        + js_literal(obj)
        + ";\n"
    )


def _round_sig(values: Any, sig: int = 4) -> list[float | None]:
    """Round to ``sig`` significant digits; NaN/inf become None (JSON null)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    out = np.full(a.shape, np.nan)
    finite = np.isfinite(a)
    nz = finite & (a != 0)
    mag = np.floor(np.log10(np.abs(a[nz])))
    scale = 10.0 ** (sig - 1 - mag)
    out[nz] = np.round(a[nz] * scale) / scale
    out[finite & (a == 0)] = 0.0
    return [None if not np.isfinite(v) else float(v) for v in out.tolist()]


def _jsonable(v: Any) -> Any:
    """Plain JSON value for metadata: numpy scalars unwrapped, non-finite floats to None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.ndarray | Sequence):
        return [_jsonable(x) for x in list(v)]
    return str(v)


def _column(values: Any) -> list[Any]:
    """One table column as a JSON list: floats rounded, ints and bools kept, strings as text."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return [bool(x) for x in arr.tolist()]
    if arr.dtype.kind in "iu":
        return [int(x) for x in arr.tolist()]
    if arr.dtype.kind == "f":
        return _round_sig(arr, 4)
    return [None if (x is None or (isinstance(x, float) and not math.isfinite(x))) else str(x)
            for x in arr.tolist()]


# --------------------------------------------------------------------------- derived data


def rank_curve(freq: Any, points: int = RANK_POINTS) -> dict[str, list]:
    """Firing frequency against rank (1 = most frequent) at ~``points`` log-spaced ranks.

    The hot/cold split of PowerInfer (Song et al. 2023) shows as a straight line of this curve on
    log-log axes; sampling log-spaced ranks keeps the plot's shape at any neuron count.
    """
    f = np.sort(np.nan_to_num(np.asarray(freq, dtype=np.float64), nan=0.0))[::-1]
    n = f.size
    if n == 0:
        return {"r": [], "f": []}
    if n <= points:
        ranks = np.arange(1, n + 1)
    else:
        ranks = np.unique(np.round(np.geomspace(1, n, points)).astype(np.int64))
    return {"r": ranks.tolist(), "f": _round_sig(f[ranks - 1], 4)}


def _block_mean(matrix: np.ndarray, labels: list[str] | None, axis: int, limit: int
                ) -> tuple[np.ndarray, list[str] | None]:
    n = matrix.shape[axis]
    if n <= limit:
        return matrix, labels
    bounds = np.linspace(0, n, limit + 1).round().astype(int)
    parts = []
    new_labels = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        block = matrix[a:b] if axis == 0 else matrix[:, a:b]
        with np.errstate(all="ignore"):
            parts.append(np.nanmean(block, axis=axis, keepdims=True))
        if labels is not None:
            new_labels.append(f"{labels[a]} … {labels[b - 1]}" if b - a > 1 else labels[a])
    return np.concatenate(parts, axis=axis), (new_labels if labels is not None else None)


def _heatmap(hm: Mapping[str, Any]) -> dict[str, Any]:
    m = np.asarray(hm["matrix"], dtype=np.float64)
    if m.ndim != 2:
        raise NeuronscopeError(f"heatmap {hm.get('title')!r} needs a 2-D matrix, got shape {m.shape}")
    rows = [str(x) for x in hm["rows"]] if hm.get("rows") is not None else None
    cols = [str(x) for x in hm["cols"]] if hm.get("cols") is not None else None
    shape = m.shape
    m, rows = _block_mean(m, rows, 0, MAX_HEATMAP)
    m, cols = _block_mean(m, cols, 1, MAX_HEATMAP)
    note = hm.get("note")
    if m.shape != shape:
        extra = f"block-averaged from {shape[0]} × {shape[1]} to {m.shape[0]} × {m.shape[1]}"
        note = f"{note} ({extra})" if note else extra.capitalize() + "."
    return {
        "title": str(hm.get("title", "")),
        "matrix": [_round_sig(r, 4) for r in m],
        "rows": rows,
        "cols": cols,
        "vmin": _jsonable(hm.get("vmin")),
        "vmax": _jsonable(hm.get("vmax")),
        "note": note,
    }


class _Vocab:
    """Interns the token strings of all examples; the atlas ships each distinct string once."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []

    def __call__(self, tok: Any) -> int:
        s = "" if tok is None else str(tok)
        i = self.ids.get(s)
        if i is None:
            i = self.ids[s] = len(self.strings)
            self.strings.append(s)
        return i


def _finite(a: Any) -> bool:
    return a is not None and a == a and a not in (math.inf, -math.inf)


def _sig(x: Any, digits: int) -> float | None:
    return float(f"{float(x):.{digits}g}") if _finite(x) else None


def _pack_examples(examples: Sequence[Mapping[str, Any]], vocab: _Vocab
                   ) -> tuple[float, list[list[Any]]]:
    """Examples of one neuron as compact rows
    ``[activation, sample, doc, pos, token ids, q, peak, item, labels]``.

    ``q`` is each context activation as an integer ``round(QLEVELS * a / s)`` with the neuron's
    scale ``s`` = max |a| over its examples (null outside the document); the viewer colours
    tokens by ``q`` and shows ``q / QLEVELS * s`` on hover. The example's own activation is
    kept to 6 significant digits. ``item`` is the example's item id (image and tensor runs) and
    ``labels`` its label values in the order of the index's ``labels`` (null when absent).
    """
    scale = 0.0
    for ex in examples:
        for a in (ex.get("activation"), *ex["acts"]):
            if _finite(a) and abs(a) > scale:
                scale = abs(float(a))
    inv = QLEVELS / scale if scale > 0 else 0.0
    ids = vocab.ids
    packed = []
    for ex in examples:
        packed.append([
            _sig(ex["activation"], 6),
            int(ex["sample"]) if ex.get("sample") is not None else None,
            int(ex["doc"]) if ex.get("doc") is not None else None,
            int(ex["pos"]) if ex.get("pos") is not None else None,
            [ids[t] if t in ids else vocab(t) for t in ex["tokens"]],
            [round(float(a) * inv) if _finite(a) else None for a in ex["acts"]],
            int(ex["peak"]),
            int(ex["item"]) if ex.get("item") is not None else None,
            [str(v) for v in ex["labels"]] if ex.get("labels") is not None else None,
        ])
    return _sig(scale, 6) or 0.0, packed


# --------------------------------------------------------------------------- run -> data

#: Columns of ``characterize`` shipped to the atlas (in this order, those present).
TABLE_COLUMNS = ("unit", "freq", "mean", "std", "mean_abs", "min", "max", "dead", "dormant_score",
                 "dormant", "positional_score", "positional", "token_score", "top_token", "hot_rank")
#: Added to a site's table when the run holds them: ``module`` (``modules --save``) and
#: ``importance`` (mean |conductance| per neuron, ``attribute --save``).
#: Headline figures of ``site_summary`` shown on the index.
SUMMARY_COLUMNS = ("samples", "pct_active_per_token", "dead_frac", "dormant_frac",
                   "powerlaw_exponent", "top20_share")
_RESERVED_EXTRA_ATTRS = {"title", "heatmaps", "rows", "cols"}


def extra_heatmaps(name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """An ``extras/<name>`` result (``{"arrays", "attrs"}``) as a page of heatmaps.

    Every 2-D numeric array becomes a heatmap. Labels and titles come from
    ``attrs["heatmaps"][key]`` (``title``, ``rows``, ``cols``, ``vmin``, ``vmax``, ``note``) when
    the analysis gave them, else from 1-D arrays ``<key>.rows`` / ``<key>.cols`` or
    ``attrs["rows"]`` / ``attrs["cols"]`` of matching length. Scalar attrs become notes.
    """
    arrays = dict(extra.get("arrays", {}))
    attrs = dict(extra.get("attrs", {}))
    specs = attrs.get("heatmaps") if isinstance(attrs.get("heatmaps"), Mapping) else {}
    heatmaps = []
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        if a.ndim != 2 or a.dtype.kind not in "biuf" or a.size == 0:
            continue
        spec = dict(specs.get(key, {}))

        def labels(axis: str, n: int, spec=spec, key=key) -> list[str] | None:
            for cand in (spec.get(axis), arrays.get(f"{key}.{axis}"), attrs.get(axis)):
                if cand is not None and len(cand) == n:
                    return [str(x) for x in np.asarray(cand).tolist()]
            return None

        heatmaps.append({
            "title": str(spec.get("title", key)),
            "matrix": a.astype(np.float64),
            "rows": labels("rows", a.shape[0]),
            "cols": labels("cols", a.shape[1]),
            "vmin": spec.get("vmin"),
            "vmax": spec.get("vmax"),
            "note": spec.get("note"),
        })
    notes = {k: v for k, v in attrs.items()
             if k not in _RESERVED_EXTRA_ATTRS and isinstance(v, str | int | float | bool)}
    return {"name": name, "title": str(attrs.get("title", name)), "notes": notes, "heatmaps": heatmaps,
            "curves": extra_curves(arrays, attrs), "tables": extra_tables(attrs)}


def extra_curves(arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Line plots of an extras result: each entry of ``attrs["curves"]`` names 1-D arrays
    ``x``, ``y`` and optionally ``err`` (± band) of equal length, with ``title``, ``xlabel``,
    ``ylabel``, an optional horizontal ``baseline`` (and ``baseline_label``) and ``note``
    (e.g. a steering curve: target against coefficient; a path's joint influence by layer).
    Entries naming missing or mismatched arrays are skipped."""
    specs = attrs.get("curves")
    out: list[dict[str, Any]] = []
    if not isinstance(specs, Sequence) or isinstance(specs, str):
        return out
    for spec in specs:
        if not isinstance(spec, Mapping):
            continue
        x, y = arrays.get(str(spec.get("x"))), arrays.get(str(spec.get("y")))
        if x is None or y is None:
            continue
        x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        if len(x) != len(y) or not len(x):
            continue
        err = arrays.get(str(spec.get("err"))) if spec.get("err") is not None else None
        err = np.asarray(err, dtype=np.float64).ravel() if err is not None else None
        base = spec.get("baseline")
        out.append({
            "title": str(spec.get("title", spec.get("y"))),
            "x": _round_sig(x, 6), "y": _round_sig(y, 6),
            "err": _round_sig(err, 4) if err is not None and len(err) == len(y) else None,
            "xlabel": str(spec.get("xlabel", spec.get("x"))), "ylabel": str(spec.get("ylabel", spec.get("y"))),
            "baseline": _jsonable(float(base)) if isinstance(base, int | float) else None,
            "baseline_label": str(spec.get("baseline_label", "baseline")),
            "note": str(spec["note"]) if spec.get("note") is not None else None,
        })
    return out


def extra_tables(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tables of an extras result: each entry of ``attrs["tables"]`` has a ``title``,
    ``columns`` (header strings) and ``rows`` (lists of numbers, strings or null, one per
    column) and optionally ``link`` = ``{"site": column, "unit": column}`` (a unit of a recorded
    site links to its neuron page); e.g. the neurons of an influential path per layer with
    their influence."""
    specs = attrs.get("tables")
    out: list[dict[str, Any]] = []
    if not isinstance(specs, Sequence) or isinstance(specs, str):
        return out
    for spec in specs:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("columns"), Sequence):
            continue
        cols = [str(c) for c in spec["columns"]]
        rows = [[_jsonable(v) for v in row] for row in spec.get("rows", []) if isinstance(row, Sequence)
                and not isinstance(row, str) and len(row) == len(cols)]
        table: dict[str, Any] = {"title": str(spec.get("title", "")), "columns": cols, "rows": rows}
        link = spec.get("link")
        if isinstance(link, Mapping) and str(link.get("site")) in cols and str(link.get("unit")) in cols:
            table["link"] = {"site": str(link["site"]), "unit": str(link["unit"])}
        out.append(table)
    return out


def _importance(run: Any) -> dict[str, np.ndarray]:
    """Per-neuron importance (mean |conductance|) per site from the run's conductance result
    (``attribute --save``: ``extras/conductance``, else the first other extras of kind
    ``conductance``)."""
    names = [n for n in run.extra_names() if n == "conductance" or n.startswith("conductance")]
    names.sort(key=lambda n: n != "conductance")
    for name in names:
        extra = run.extras(name) or {}
        if dict(extra.get("attrs", {})).get("kind") != "conductance":
            continue
        arrays = extra.get("arrays", {})
        return {k[: -len(".mean_abs")]: np.asarray(v, dtype=np.float64) for k, v in arrays.items()
                if k.endswith(".mean_abs")}
    return {}


def _outside(res: Mapping[str, np.ndarray], side: str, n: int) -> np.ndarray:
    """Counts below the first / above the last histogram edge (zeros if not reported)."""
    for key in (f"histogram.{side}", f"histogram.{side}flow"):
        if key in res:
            return np.asarray(res[key], dtype=np.int64)
    return np.zeros(n, dtype=np.int64)


def sample_words(source: Mapping[str, Any], sample_coords: Sequence[str], images: bool = False
                 ) -> dict[str, str]:
    """What one sample of a run is called on its pages: ``{"kind", "one", "many"}`` — tokens
    for text, stimuli for brain data (a ``stimulus`` coordinate), images for image inputs
    (thumbnails given, or a recorded input shape of 3 or more dimensions), items otherwise."""
    kind = source.get("kind")
    if kind == "text":
        return {"kind": "text", "one": "token", "many": "tokens"}
    if "stimulus" in sample_coords:
        return {"kind": "stimulus", "one": "stimulus", "many": "stimuli"}
    if images or len(source.get("shape") or []) >= 3:
        return {"kind": "image", "one": "image", "many": "images"}
    return {"kind": "item", "one": "item", "many": "items"}


def _with_items_and_labels(examples: list[list[dict[str, Any]]], samples: Mapping[str, np.ndarray],
                           labels: Sequence[str]) -> None:
    """Add each example's ``item`` id (when the run has one) and its label values, in place."""
    items = np.asarray(samples["item"]) if "item" in samples else None
    columns = [np.asarray(samples[k]) for k in labels]
    for exs in examples:
        for ex in exs:
            i = ex.get("sample")
            if i is None or i < 0:
                continue
            if items is not None and i < len(items):
                ex["item"] = int(items[i])
            if columns:
                ex["labels"] = [str(c[i]) if i < len(c) else "" for c in columns]


def collect_atlas_data(run: Any, examples: int | None = 16, inputs: Any = "auto",
                       advance: Callable[..., None] | None = None) -> dict[str, Any]:
    """Everything the atlas shows, gathered from a run (a ``Run`` or its path).

    Per site: the characterization table (``characterize``: firing frequency, moments, dead
    and tau-dormant neurons, positional and token-detector scores, hot rank), the headline
    figures of ``site_summary``, the activation histogram of every neuron
    (``run.summaries(site).result()``: ``histogram.edges`` / ``histogram.counts``) and its
    ``examples`` highest-activating contexts (``analyses.characterize.site_examples``, the
    ``top_examples`` of every neuron at once; ``None`` keeps all k), each with its item id and
    label values. Each site's summaries are read once. Extras (comparison / matching results
    stored in the run) become heatmap pages.

    ``inputs`` gives image runs thumbnails of their top examples (see
    :func:`neuronscope.atlas.images.resolve_inputs`: an array or ``TensorSource`` of the
    recorded inputs, checked against the run's fingerprint; ``"auto"`` finds the scikit-learn
    digits; ``None``: no thumbnails): only the referenced items are rendered, each once.
    ``advance(done, detail)`` is called after each step (1 + number of sites).
    """
    from neuronscope.atlas.images import render_thumbnails, resolve_inputs
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    summaries = {site: run.summaries(site) for site in run.sites}
    missing = [s for s, ss in summaries.items() if ss is None]
    if missing:
        raise NeuronscopeError(
            f"run {run.path} has no summaries for {', '.join(missing)} (status {run.status}); "
            "finish the recording, run `neuronscope summarize RUN` on its stored activations, "
            "or re-record with keep='both' or 'summaries'"
        )
    if examples is not None and examples < 0:
        raise NeuronscopeError(f"examples must be >= 0, not {examples}")
    src = run.config.get("source") or {}
    images = resolve_inputs(src, inputs)
    samples = run.samples
    labels = list(run.label_categories)
    words = sample_words(src, list(samples), images is not None)
    table = characterize(summaries, vocab=run.vocab)
    heads = site_summary(summaries).set_index("site")
    if advance is not None:
        advance(1, "characterized")
    sites = []
    thumbs: dict[int, str] = {}
    importance = _importance(run)
    for si, (site, ss) in enumerate(summaries.items()):
        res = ss.result()
        examples_all = site_examples(res, samples, run.vocab, examples)
        df = table[table["site"] == site].sort_values("unit")
        units = df["unit"].to_numpy()
        cols = {c: df[c].to_numpy() for c in TABLE_COLUMNS if c in df.columns}
        modules = run.extras(f"modules-{site}") if f"modules-{site}" in run.extra_names() else None
        if modules is not None and len(modules["arrays"].get("labels", ())) == ss.units:
            cols["module"] = np.asarray(modules["arrays"]["labels"])[units]  # -1: unassigned (dead / isolated)
        if site in importance and len(importance[site]) == ss.units:
            cols["importance"] = importance[site][units]  # mean |conductance| (attribute --save)
        head = heads.loc[site]
        counts = np.asarray(res["histogram.counts"])
        site_ex = [examples_all[u] for u in units]
        _with_items_and_labels(site_ex, samples, labels)
        site_thumbs: dict[int, str] = {}
        if images is not None:
            wanted = {ex["item"] for exs in site_ex for ex in exs if ex.get("item") is not None}
            thumbs.update(render_thumbnails(images, wanted - set(thumbs)))
            site_thumbs = {i: thumbs[i] for i in wanted if i in thumbs}
        sites.append({
            "name": site,
            "summary": {c: _jsonable(head[c]) for c in SUMMARY_COLUMNS if c in head.index},
            "table": cols,
            "hist_edges": np.asarray(res["histogram.edges"]),
            "hist_counts": counts[units],
            "hist_under": _outside(res, "under", counts.shape[0])[units],
            "hist_over": _outside(res, "over", counts.shape[0])[units],
            "examples": site_ex,
            "thumbs": site_thumbs,
        })
        if advance is not None:
            advance(si + 2, site)
    model = run.config.get("model")
    corpus = src.get("corpus") or src.get("name")
    # a shared atlas should not carry the recording machine's paths (a local model directory
    # or corpus file): their last component names them
    model, corpus = (Path(v).name if isinstance(v, str) and ("/" in v or "\\" in v) else v for v in (model, corpus))
    meta = {
        "model": model,
        "corpus": corpus,
        "documents": src.get("documents") or src.get("items"),
        f"samples ({words['many']})": run.n_samples,
        "sites": len(run.sites),
        "neurons": sum(run.sites.values()),
        "status": run.status,
        "recording seconds": run.attrs.get("seconds"),
        "run": run.path.name,
    }
    extras = []
    for name in run.extra_names():
        extra = run.extras(name) or {}
        if name.startswith(LOCATE_PREFIX):
            extra = _locate_extra(extra)
            if extra is None:
                continue
        page = extra_heatmaps(name, extra)
        if page["heatmaps"] or page["curves"] or page["tables"]:
            extras.append(page)
    label_pages = collect_label_data(run, summaries, sites)
    return {
        "title": f"{model} on {corpus}" if corpus else str(model),
        "meta": {k: v for k, v in meta.items() if v is not None},
        "words": words,
        "labels": labels,
        "sites": sites,
        "extras": extras,
        "label_pages": label_pages,
    }


# --------------------------------------------------------------------------- labels (locate)

#: Extras written by ``neuronscope.analyses.locate`` (results and vocabulary projections).
LOCATE_PREFIX = "locate-"
#: Promoted / suppressed tokens per neuron shipped for the vocabulary projection.
VOCAB_TOP = 8


def _locate_extra(extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stored locate result as an extras page: only its sites × values ``counts`` heatmap
    (its per-neuron arrays are on the labels page and the neuron pages); None for the
    vocabulary projection (shown on neuron pages)."""
    attrs = dict(extra.get("attrs", {}))
    if "vocab_projection" in attrs or "counts" not in extra.get("arrays", {}):
        return None
    return {"arrays": {"counts": extra["arrays"]["counts"]},
            "attrs": {k: v for k, v in attrs.items() if k in ("title", "heatmaps")}}


def collect_label_data(run: Any, summaries: Mapping[str, Any], sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label pages and per-neuron label data of the atlas (``sites`` gain them in place).

    For every label field of the run: each neuron's activation probability per value
    (``labels.<field>`` summaries) as ``site["label_firing"][field]``; LAPE (Tang et al.
    2024) with the paper's defaults unless the run stores a LAPE result
    (``neuronscope locate --save``), plus every other stored locate result of that field,
    as badges per neuron (``site["badges"]``) and per-site counts of specific neurons per
    value on the label page, with the accuracy-vs-k curves of a stored probe result.
    Stored vocabulary projections become ``site["vocab"]`` (promoted / suppressed tokens,
    families). Returns the label pages (``field``, ``values``, ``results``, ``curves``).
    """
    from neuronscope.analyses.locate import (
        label_summaries,
        lape,
        load_vocab_projection,
        stored_results,
    )

    by_name = {s["name"]: s for s in sites}
    for s in sites:
        n = len(s["table"]["unit"])
        s["badges"] = [[] for _ in range(n)]
    saved = stored_results(run)
    pages = []
    for field in sorted(run.label_categories):
        try:
            parts = label_summaries(summaries, field, moments=False)
        except NeuronscopeError:
            continue  # a field with one value, or not summarized
        for ls in parts:
            units = np.asarray(by_name[ls.site]["table"]["unit"], dtype=np.int64)
            by_name[ls.site].setdefault("label_firing", {})[field] = {"values": ls.labels, "prob": ls.prob.T[units]}
        results = [r for r in saved if r.field == field]
        if not any(r.method == "lape" for r in results):
            results.insert(0, lape(summaries, field))
        page_results = []
        curves: dict[str, Any] = {}
        for res in results:
            for site in res.sites:
                if site not in by_name:
                    continue
                units = np.asarray(by_name[site]["table"]["unit"], dtype=np.int64)
                spec = res.specific[site]
                for row, u in enumerate(units):
                    js = np.flatnonzero(spec[u])
                    if len(js):
                        by_name[site]["badges"][row].append(
                            {"field": field, "method": res.method, "values": [res.labels[j] for j in js]})
            counts = res.counts()
            page_results.append({
                "method": res.method,
                "info": {k: v for k, v in res.info.items() if isinstance(v, str | int | float | bool) or v is None},
                "values": list(res.labels),
                "sites": [{"name": r["site"], "units": int(r["units"]), "neurons": int(r["neurons"]),
                           "counts": [int(r[v]) for v in res.labels]} for r in counts.to_dict("records")],
            })
            if res.method == "probe":
                for site, per in res.info.get("curves", {}).items():
                    curves[site] = {v: {"k": c["k"], "accuracy": _round_sig(c["accuracy"], 4),
                                        "neuron": int(c["neurons"][0]), "chance": c.get("chance")}
                                    for v, c in per.items()}
        pages.append({"field": field, "values": list(parts[0].labels), "results": page_results, "curves": curves,
                      "label_counts": [int(x) for x in parts[0].n], "unlabeled": int(parts[0].unlabeled)})
    proj = load_vocab_projection(run)
    vocab = run.vocab or []
    for site, p in (proj or {}).items():
        if site not in by_name:
            continue
        units = np.asarray(by_name[site]["table"]["unit"], dtype=np.int64)
        k = min(VOCAB_TOP, p.top_ids.shape[1])

        def toks(ids: np.ndarray) -> list[str]:
            return [str(vocab[i]) if 0 <= i < len(vocab) else str(int(i)) for i in ids.tolist()]

        by_name[site]["vocab"] = [{
            "top": toks(p.top_ids[u, :k]), "top_v": _round_sig(p.top_values[u, :k], 3),
            "bottom": toks(p.bottom_ids[u, :k]), "bottom_v": _round_sig(p.bottom_values[u, :k], 3),
            "families": p.family_of(int(u)), "norm": _sig(p.norm[u], 4), "kurtosis": _sig(p.kurtosis[u], 4),
            "null_fraction": _sig(p.null_fraction[u], 3), "freq_corr": _sig(p.freq_corr[u], 3),
        } for u in units]
    return pages


def build_atlas(run: Any, out: Path, examples: int | None = 16, inputs: Any = "auto",
                progress: ProgressArg = True) -> Path:
    """Build the static atlas of ``run`` (a ``Run`` or its path) in ``out``; returns index.html.

    ``collect_atlas_data`` then ``write_site``; open the result from the file system.
    ``inputs``: the recorded inputs of an image run, for thumbnails of the top examples (see
    :func:`collect_atlas_data`). ``progress=True`` shows a bar on stderr counting sites read
    and written (a callable gets ``(done, total, detail)``; ``False``: nothing).
    """
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    n = len(run.sites)
    with progress_bar(f"atlas: {n} sites", 1 + 2 * n, progress, unit="steps") as advance:
        data = collect_atlas_data(run, examples=examples, inputs=inputs, advance=advance)
        return write_site(data, Path(out), advance=lambda i, detail="": advance(1 + n + i, detail))


# --------------------------------------------------------------------------- site writer


def _prepare_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NeuronscopeError(f"--out {out} is a file; give a directory for the atlas")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise NeuronscopeError(
            f"--out {out} exists and is not an atlas directory; choose a new or empty directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    # The marker first (a build that stops after it can be redone into the same --out);
    # index.html goes next and comes back last, atomically: a build that stops half-way
    # leaves no index.html over a mix of old and new data (nor a stale temporary file).
    (out / MARKER).write_text("written by neuronscope.atlas.build.write_site\n")
    (out / "index.html").unlink(missing_ok=True)
    for stale in out.glob("index.html.*.partial"):
        stale.unlink()
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir()
    return out


def write_site(data: Mapping[str, Any], out: Path, advance: Callable[..., None] | None = None) -> Path:
    """Write the static atlas for ``data`` (the dict of :func:`collect_atlas_data`) into ``out``.

    ``data`` holds ``title`` (str), ``meta`` (flat dict shown on the index), ``sites`` (list of
    dicts with ``name``, ``summary`` (headline figures of ``site_summary``), ``table`` (column
    name -> one value per neuron; needs ``unit`` and ``freq``), ``hist_edges`` (n_bins+1,),
    ``hist_counts`` (units, n_bins), optional ``hist_under``/``hist_over`` (units,), and
    ``examples`` (per neuron, a list of ``top_examples`` dicts)) and ``extras`` (list of dicts
    with ``name``, ``title``, ``notes`` and ``heatmaps``: dicts of ``title``, 2-D ``matrix``,
    optional ``rows``/``cols`` labels, ``vmin``/``vmax``, ``note``; optional ``curves``
    (:func:`extra_curves`) and ``tables`` (:func:`extra_tables`)). Optional label data
    (:func:`collect_label_data`): ``label_pages`` and per site ``label_firing``
    (field -> ``values`` and ``prob`` (units, values)), ``badges`` (per neuron, a list of
    ``{field, method, values}``) and ``vocab`` (per neuron, the vocabulary projection).

    Optional: ``words`` (what a sample is called, :func:`sample_words`; default tokens),
    ``labels`` (names of the examples' label values), per site ``thumbs`` (item id -> PNG data
    URI; each neuron chunk ships the thumbnails of its own examples).

    Writes ``index.html``, ``app.js``, ``style.css`` and ``data/*.js`` (index, one table per site,
    neuron chunks of :data:`CHUNK`, the interned token strings, one file per extra). Returns
    the path of ``index.html``. ``advance(done, detail)`` is called after each site.
    """
    out = _prepare_out(Path(out))
    ddir = out / "data"
    vocab = _Vocab()
    index_sites = []
    for si, site in enumerate(data["sites"]):
        key = f"site-{si}"
        table = site["table"]
        if "unit" not in table or "freq" not in table:
            raise NeuronscopeError(f"site {site['name']!r}: the neuron table needs 'unit' and 'freq'")
        units = [int(u) for u in np.asarray(table["unit"]).tolist()]
        n = len(units)
        columns = list(table.keys())
        rows = {c: _column(table[c]) for c in columns}
        for c, col in rows.items():
            if len(col) != n:
                raise NeuronscopeError(f"site {site['name']!r}: column {c!r} has {len(col)} rows, not {n}")
        counts = np.asarray(site["hist_counts"], dtype=np.int64).reshape(n, -1)
        edges = _round_sig(site["hist_edges"], 6)
        if len(edges) != counts.shape[1] + 1:
            raise NeuronscopeError(f"site {site['name']!r}: histogram edges do not match the counts")
        under = np.asarray(site.get("hist_under", np.zeros(n)), dtype=np.int64).reshape(n)
        over = np.asarray(site.get("hist_over", np.zeros(n)), dtype=np.int64).reshape(n)
        examples = site["examples"]
        if len(examples) != n:
            raise NeuronscopeError(f"site {site['name']!r}: {len(examples)} example lists for {n} neurons")
        table_obj = {"name": str(site["name"]), "columns": columns, "rows": rows,
                     "edges": edges, "chunk": CHUNK}
        label_firing = dict(site.get("label_firing") or {})
        if label_firing:
            table_obj["label_values"] = {str(f): [str(v) for v in lf["values"]] for f, lf in label_firing.items()}
        badges = site.get("badges")
        vocab_rows = site.get("vocab")
        (ddir / f"{key}.js").write_text(_data_script(key, table_obj), encoding="utf-8")
        thumbs = {int(k): str(v) for k, v in dict(site.get("thumbs") or {}).items()}
        for c0 in range(0, n, CHUNK):
            neurons = []
            img: dict[str, str] = {}
            for i in range(c0, min(n, c0 + CHUNK)):
                scale, packed = _pack_examples(examples[i], vocab)
                entry = {"h": counts[i].tolist(), "u": int(under[i]), "o": int(over[i]), "s": scale, "e": packed}
                if label_firing:
                    entry["lf"] = {str(f): _round_sig(np.asarray(lf["prob"])[i], 3) for f, lf in label_firing.items()}
                if badges is not None and badges[i]:
                    entry["bd"] = [{"field": str(b["field"]), "method": str(b["method"]),
                                    "values": [str(v) for v in b["values"]]} for b in badges[i]]
                if vocab_rows is not None and vocab_rows[i] is not None:
                    entry["vp"] = _jsonable(vocab_rows[i])
                neurons.append(entry)
                for ex in examples[i]:
                    item = ex.get("item")
                    if item is not None and int(item) in thumbs:
                        img[str(int(item))] = thumbs[int(item)]
            chunk_obj: dict[str, Any] = {"start": c0, "neurons": neurons}
            if img:
                chunk_obj["img"] = img
            ckey = f"{key}-{c0 // CHUNK}"
            (ddir / f"{ckey}.js").write_text(_data_script(ckey, chunk_obj), encoding="utf-8")
        summary = {k: _jsonable(v) for k, v in dict(site.get("summary", {})).items()}
        index_sites.append({"name": str(site["name"]), "key": key, "units": n, "summary": summary,
                            "rank": rank_curve(table["freq"])})
        if advance is not None:
            advance(si + 1, str(site["name"]))
    (ddir / "vocab.js").write_text(_data_script("vocab", vocab.strings), encoding="utf-8")

    index_extras = []
    for xi, extra in enumerate(data.get("extras", [])):
        key = f"extra-{xi}"
        obj = {"notes": {str(k): _jsonable(v) for k, v in dict(extra.get("notes", {})).items()},
               "heatmaps": [_heatmap(h) for h in extra.get("heatmaps", [])],
               "curves": [_jsonable(c) for c in extra.get("curves", [])],
               "tables": [_jsonable(t) for t in extra.get("tables", [])]}
        (ddir / f"{key}.js").write_text(_data_script(key, obj), encoding="utf-8")
        index_extras.append({"name": str(extra["name"]), "title": str(extra.get("title", extra["name"])),
                             "key": key})

    index_labels = []
    for li, page in enumerate(data.get("label_pages") or []):
        key = f"labels-{li}"
        (ddir / f"{key}.js").write_text(_data_script(key, _jsonable(page)), encoding="utf-8")
        index_labels.append({"field": str(page["field"]), "key": key, "values": len(page.get("values", []))})

    words = dict(data.get("words") or {"kind": "text", "one": "token", "many": "tokens"})
    index_obj = {"title": str(data.get("title", "")),
                 "meta": {str(k): _jsonable(v) for k, v in dict(data.get("meta", {})).items()},
                 "words": {str(k): str(v) for k, v in words.items()},
                 "labels": [str(x) for x in data.get("labels") or []],
                 "sites": index_sites, "extras": index_extras, "label_pages": index_labels}
    index_js = _data_script("index", index_obj)
    (ddir / "index.js").write_text(index_js, encoding="utf-8")

    static = resources.files("neuronscope.atlas") / "static"
    for name in _STATIC:
        (out / name).write_text(static.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    build = hashlib.sha256((index_js + str(time.time_ns())).encode()).hexdigest()[:12]
    html = static.joinpath("index.html").read_text(encoding="utf-8").replace("{{BUILD}}", build)
    index_html = out / "index.html"
    durable_write(index_html, html.encode("utf-8"))
    return index_html


def site_bytes(out: Path) -> int:
    """Total size in bytes of the files under an atlas directory."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
