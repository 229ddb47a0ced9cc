"""Build the static neuron atlas of a run: HTML + one JS/CSS bundle + compact data scripts.

The atlas is what Neuroscope's per-neuron pages and OpenAI's neuron viewer (Bills et al. 2023,
"Language models can explain neurons in language models") show, built offline from a run's
streaming summaries: an index of sites with their characterization headline figures, one
sortable table per site, one page per neuron (statistics, activation histogram, top-k
examples with context coloured by activation), and heatmaps of comparison/matching results.

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
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.analyses.characterize import characterize, site_examples, site_summary
from neuronscope.errors import NeuronscopeError

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
    """Examples of one neuron as compact rows ``[activation, sample, doc, pos, token ids, q, peak]``.

    ``q`` is each context activation as an integer ``round(QLEVELS * a / s)`` with the neuron's
    scale ``s`` = max |a| over its examples (null outside the document); the viewer colours
    tokens by ``q`` and shows ``q / QLEVELS * s`` on hover. The example's own activation is
    kept to 6 significant digits.
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
        ])
    return _sig(scale, 6) or 0.0, packed


# --------------------------------------------------------------------------- run -> data

#: Columns of ``characterize`` shipped to the atlas (in this order, those present).
TABLE_COLUMNS = ("unit", "freq", "mean", "std", "mean_abs", "min", "max", "dead", "dormant_score",
                 "dormant", "positional_score", "positional", "token_score", "top_token", "hot_rank")
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
    return {"name": name, "title": str(attrs.get("title", name)), "notes": notes, "heatmaps": heatmaps}


def _outside(res: Mapping[str, np.ndarray], side: str, n: int) -> np.ndarray:
    """Counts below the first / above the last histogram edge (zeros if not reported)."""
    for key in (f"histogram.{side}", f"histogram.{side}flow"):
        if key in res:
            return np.asarray(res[key], dtype=np.int64)
    return np.zeros(n, dtype=np.int64)


def collect_atlas_data(run: Any, examples: int | None = 16) -> dict[str, Any]:
    """Everything the atlas shows, gathered from a run (a ``Run`` or its path).

    Per site: the characterization table (``characterize``: firing frequency, moments, dead
    and tau-dormant neurons, positional and token-detector scores, hot rank), the headline
    figures of ``site_summary``, the activation histogram of every neuron
    (``run.summaries(site).result()``: ``histogram.edges`` / ``histogram.counts``) and its
    ``examples`` highest-activating contexts (``analyses.characterize.site_examples``, the
    ``top_examples`` of every neuron at once; ``None`` keeps all k). Each site's summaries are
    read once. Extras
    (comparison / matching results stored in the run) become heatmap pages.
    """
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
    table = characterize(summaries, vocab=run.vocab)
    heads = site_summary(summaries).set_index("site")
    sites = []
    for site, ss in summaries.items():
        res = ss.result()
        examples_all = site_examples(res, run.samples, run.vocab, examples)
        df = table[table["site"] == site].sort_values("unit")
        units = df["unit"].to_numpy()
        cols = {c: df[c].to_numpy() for c in TABLE_COLUMNS if c in df.columns}
        modules = run.extras(f"modules-{site}") if f"modules-{site}" in run.extra_names() else None
        if modules is not None and len(modules["arrays"].get("labels", ())) == ss.units:
            cols["module"] = np.asarray(modules["arrays"]["labels"])[units]  # -1: unassigned (dead / isolated)
        head = heads.loc[site]
        counts = np.asarray(res["histogram.counts"])
        sites.append({
            "name": site,
            "summary": {c: _jsonable(head[c]) for c in SUMMARY_COLUMNS if c in head.index},
            "table": cols,
            "hist_edges": np.asarray(res["histogram.edges"]),
            "hist_counts": counts[units],
            "hist_under": _outside(res, "under", counts.shape[0])[units],
            "hist_over": _outside(res, "over", counts.shape[0])[units],
            "examples": [examples_all[u] for u in units],
        })
    src = run.config.get("source") or {}
    model = run.config.get("model")
    corpus = src.get("corpus") or src.get("name")
    if corpus and ("/" in corpus or "\\" in corpus):
        corpus = Path(corpus).name  # a shared atlas should not carry the recording machine's paths
    meta = {
        "model": model,
        "corpus": corpus,
        "documents": src.get("documents") or src.get("items"),
        "samples (tokens)": run.n_samples,
        "sites": len(run.sites),
        "neurons": sum(run.sites.values()),
        "status": run.status,
        "recording seconds": run.attrs.get("seconds"),
        "run": run.path.name,
    }
    extras = []
    for name in run.extra_names():
        page = extra_heatmaps(name, run.extras(name) or {})
        if page["heatmaps"]:
            extras.append(page)
    return {
        "title": f"{model} on {corpus}" if corpus else str(model),
        "meta": {k: v for k, v in meta.items() if v is not None},
        "sites": sites,
        "extras": extras,
    }


def build_atlas(run: Any, out: Path, examples: int | None = 16) -> Path:
    """Build the static atlas of ``run`` (a ``Run`` or its path) in ``out``; returns index.html.

    ``collect_atlas_data`` then ``write_site``; open the result from the file system.
    """
    return write_site(collect_atlas_data(run, examples=examples), Path(out))


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
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir()
    (out / MARKER).write_text("written by neuronscope.atlas.build.write_site\n")
    return out


def write_site(data: Mapping[str, Any], out: Path) -> Path:
    """Write the static atlas for ``data`` (the dict of :func:`collect_atlas_data`) into ``out``.

    ``data`` holds ``title`` (str), ``meta`` (flat dict shown on the index), ``sites`` (list of
    dicts with ``name``, ``summary`` (headline figures of ``site_summary``), ``table`` (column
    name -> one value per neuron; needs ``unit`` and ``freq``), ``hist_edges`` (n_bins+1,),
    ``hist_counts`` (units, n_bins), optional ``hist_under``/``hist_over`` (units,), and
    ``examples`` (per neuron, a list of ``top_examples`` dicts)) and ``extras`` (list of dicts
    with ``name``, ``title``, ``notes`` and ``heatmaps``: dicts of ``title``, 2-D ``matrix``,
    optional ``rows``/``cols`` labels, ``vmin``/``vmax``, ``note``).

    Writes ``index.html``, ``app.js``, ``style.css`` and ``data/*.js`` (index, one table per site,
    neuron chunks of :data:`CHUNK`, the interned token strings, one file per extra). Returns
    the path of ``index.html``.
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
        (ddir / f"{key}.js").write_text(_data_script(key, table_obj), encoding="utf-8")
        for c0 in range(0, n, CHUNK):
            neurons = []
            for i in range(c0, min(n, c0 + CHUNK)):
                scale, packed = _pack_examples(examples[i], vocab)
                neurons.append({"h": counts[i].tolist(), "u": int(under[i]), "o": int(over[i]),
                                "s": scale, "e": packed})
            ckey = f"{key}-{c0 // CHUNK}"
            (ddir / f"{ckey}.js").write_text(
                _data_script(ckey, {"start": c0, "neurons": neurons}), encoding="utf-8")
        summary = {k: _jsonable(v) for k, v in dict(site.get("summary", {})).items()}
        index_sites.append({"name": str(site["name"]), "key": key, "units": n, "summary": summary,
                            "rank": rank_curve(table["freq"])})
    (ddir / "vocab.js").write_text(_data_script("vocab", vocab.strings), encoding="utf-8")

    index_extras = []
    for xi, extra in enumerate(data.get("extras", [])):
        key = f"extra-{xi}"
        obj = {"notes": {str(k): _jsonable(v) for k, v in dict(extra.get("notes", {})).items()},
               "heatmaps": [_heatmap(h) for h in extra.get("heatmaps", [])]}
        (ddir / f"{key}.js").write_text(_data_script(key, obj), encoding="utf-8")
        index_extras.append({"name": str(extra["name"]), "title": str(extra.get("title", extra["name"])),
                             "key": key})

    index_obj = {"title": str(data.get("title", "")),
                 "meta": {str(k): _jsonable(v) for k, v in dict(data.get("meta", {})).items()},
                 "sites": index_sites, "extras": index_extras}
    index_js = _data_script("index", index_obj)
    (ddir / "index.js").write_text(index_js, encoding="utf-8")

    static = resources.files("neuronscope.atlas") / "static"
    for name in _STATIC:
        (out / name).write_text(static.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    build = hashlib.sha256((index_js + str(time.time_ns())).encode()).hexdigest()[:12]
    html = static.joinpath("index.html").read_text(encoding="utf-8").replace("{{BUILD}}", build)
    index_html = out / "index.html"
    index_html.write_text(html, encoding="utf-8")
    return index_html


def site_bytes(out: Path) -> int:
    """Total size in bytes of the files under an atlas directory."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
