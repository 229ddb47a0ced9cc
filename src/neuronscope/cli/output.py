"""Everything the CLI prints: JSON on stdout and rich tables.

* :func:`emit_json` — the one JSON emitter of every ``--json`` flag (numpy scalars and
  arrays, paths and tuples converted; NaN and infinities become ``null`` so the output is
  strict JSON).
* :func:`print_info` — a run's info (``Run.info()``) as a table.
* :func:`frame_table` — a DataFrame as a table (floats to three decimals).
* :func:`matrix_tables` / :func:`matrix_table` — a rows × columns metric matrix
  (``compare_all``'s result) with full labels: common prefixes moved to the caption, long
  column names numbered with a legend, wide matrices split into column groups.
* :func:`site_table` — the per-site characterization table (site names shortened by
  :func:`neuronscope.population.short_site_names`, re-exported here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from neuronscope.population import short_site_names

__all__ = [
    "console",
    "emit_json",
    "frame_table",
    "matrix_table",
    "matrix_tables",
    "print_info",
    "short_site_names",
    "site_table",
    "to_jsonable",
]

#: The console every verb prints its tables and messages to (stdout).
console = Console()


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python numbers/lists, paths as strings, tuples
    as lists, and non-finite floats as None (JSON ``null``), recursively."""
    import numpy as np

    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def emit_json(obj: Any) -> None:
    """Print ``obj`` as indented, strict JSON on stdout (see :func:`to_jsonable`)."""
    typer.echo(json.dumps(to_jsonable(obj), indent=2, allow_nan=False))


def print_info(info: dict[str, Any]) -> None:
    """Render ``Run.info()`` as a rich table: the run's configuration, then its sites."""
    head = Table(show_header=False, box=None)
    for key in ("path", "status", "model", "samples", "items", "activation_rows", "keep", "dtype", "sample_rate", "seconds"):
        head.add_row(f"[bold]{key}", str(info.get(key)))
    src = info.get("source") or {}
    bst = info.get("batching")
    if isinstance(bst, dict) and "padding" in bst:
        head.add_row("[bold]batching", f"{bst.get('batching')}: {bst.get('batches')} forward passes, "
                     f"{float(bst['padding']):.1%} padding ({bst.get('tokens')} tokens in {bst.get('padded_tokens')} slots)")
    head.add_row("[bold]corpus", f"{src.get('corpus') or src.get('name')} ({src.get('documents') or src.get('items')} items)")
    console.print(head)
    t = Table(title="sites")
    t.add_column("site")
    t.add_column("units", justify="right")
    t.add_column("non-finite", justify="right")
    for site, units in info["sites"].items():
        t.add_row(site, str(units), str(info.get("nonfinite", {}).get(site, 0)))
    console.print(t)


def frame_table(title: str, df: Any, floats: str = "{:.3f}") -> Table:
    """A rich table of a DataFrame: text columns left-aligned, numbers right-aligned,
    floats formatted with ``floats``."""
    from pandas.api.types import is_numeric_dtype

    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c), justify="right" if is_numeric_dtype(df[c].dtype) else "left")
    for _, row in df.iterrows():
        t.add_row(*[floats.format(v) if isinstance(v, float) else str(v) for v in row])
    return t


def _matrix_labels(names: list[str]) -> tuple[list[str], str]:
    """Labels of one side of a matrix: the names without their common dotted prefix and
    suffix when that leaves every name distinct (and the glob they share), else the names."""
    short, glob = short_site_names(names)
    if glob and len(set(short)) == len(short) and all(short):
        return short, glob
    return list(names), ""


def matrix_tables(mat: Any, title: str, width: int | None = None, floats: str = "{:.4f}") -> list[Any]:
    """Rich renderables of a metric matrix (an ``xarray.DataArray`` with dims ``a`` × ``b``, as
    :func:`neuronscope.analyses.compare.compare_all` returns), never cutting a label.

    Rows and columns are named in full, without the dotted prefix and suffix every name of a
    side shares (``encoder.layer.3.intermediate`` → ``3`` under ``encoder.layer.*.intermediate``,
    said in the caption). Column headers longer than the values become numbers ``[1]``,
    ``[2]``, … with a legend (rows of a square matrix carry the same numbers). When the
    columns do not fit in ``width`` (default: the console's) the matrix is split into several
    tables of consecutive columns, so nothing is squeezed into "…".
    """
    import numpy as np
    from rich.text import Text

    width = width or console.width
    rows_full = [str(x) for x in mat["a"].values]
    cols_full = [str(x) for x in mat["b"].values]
    rows, rglob = _matrix_labels(rows_full)
    cols, cglob = _matrix_labels(cols_full)
    values = np.asarray(mat.values, dtype=np.float64)
    cells = [[floats.format(v) if np.isfinite(v) else "–" for v in r] for r in values]
    value_w = max((len(c) for r in cells for c in r), default=1)
    numbered = max(map(len, cols), default=0) > max(value_w, 8)
    same = rows_full == cols_full
    if numbered:
        headers = [f"[{j + 1}]" for j in range(len(cols))]
        if same:
            rows = [f"[{i + 1}] {r}" for i, r in enumerate(rows)]
    else:
        headers = cols
    row_w = max(map(len, rows), default=1)
    col_w = [max(len(h), value_w) for h in headers]
    # greedy column groups that fit: borders take 3 characters a column plus 4 for the table
    groups: list[list[int]] = []
    used = row_w + 4
    for j, w in enumerate(col_w):
        if groups and used + w + 3 <= width:
            groups[-1].append(j)
            used += w + 3
        else:
            groups.append([j])
            used = row_w + 4 + w + 3
    notes = []
    if rglob and rglob == cglob:
        notes.append(f"sites: {rglob}")
    else:
        if rglob:
            notes.append(f"rows: {rglob}")
        if cglob:
            notes.append(f"columns: {cglob}")
    out: list[Any] = []
    for g, cols_in in enumerate(groups):
        part = "" if len(groups) == 1 else f" (columns {cols_in[0] + 1}–{cols_in[-1] + 1} of {len(cols)})"
        # the title on its own line, never wrapped inside a word (specs are long paths)
        out.append(Text(title + part, style="bold", no_wrap=True, overflow="ignore"))
        t = Table(caption=Text(" · ".join(notes)) if notes and g == len(groups) - 1 else None)
        t.add_column("", no_wrap=True, min_width=min(row_w, max(8, width // 2)), overflow="fold")
        for j in cols_in:
            t.add_column(Text(headers[j]), justify="right", no_wrap=True, min_width=col_w[j])
        for i, r in enumerate(rows):
            t.add_row(Text(r), *[cells[i][j] for j in cols_in])
        out.append(t)
    if numbered and not same:
        legend = Table(title=Text("columns"), show_header=False, box=None)
        legend.add_column(no_wrap=True)
        legend.add_column(overflow="fold")
        for j, c in enumerate(cols):
            legend.add_row(Text(headers[j]), Text(c))
        out.append(legend)
    return out


def matrix_table(mat: Any, title: str, floats: str = "{:.4f}") -> Any:
    """:func:`matrix_tables` as one renderable (a ``rich.console.Group``)."""
    from rich.console import Group

    return Group(*matrix_tables(mat, title, floats=floats))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def site_table(sites: Any, neurons: Any) -> Table:
    """A rich table of :func:`~neuronscope.analyses.characterize.site_summary` rows plus the
    count of positional neurons per site (from the per-neuron ``characterize`` table)."""
    labels, glob = short_site_names([str(x) for x in sites["site"]])
    t = Table(title=f"neurons per site ({glob})" if glob else "neurons per site")
    for col, justify in (("site", "left"), ("units", "right"), ("samples", "right"),
                         ("% act.", "right"), ("dead", "right"), ("dorm.", "right"),
                         ("pos.", "right"), ("α", "right"), ("top20", "right")):
        t.add_column(col, justify=justify, no_wrap=col == "site")
    t.caption = ("% act.: neurons active per token · pos.: positional neurons · α: power-law exponent of "
                 "firing by rank · top20: share of firing by the hottest 20% (PowerInfer)")
    flags = neurons.groupby("site", sort=False)[["positional"]].sum()
    for label, row in zip(labels, sites.itertuples(index=False), strict=True):
        t.add_row(
            label,
            str(row.units),
            str(row.samples),
            _fmt(row.pct_active_per_token, 2),
            f"{row.dead_frac:.1%}",
            f"{row.dormant_frac:.1%}",
            str(int(flags.loc[row.site, "positional"])) if row.site in flags.index else "0",
            _fmt(row.powerlaw_exponent),
            _fmt(row.top20_share),
        )
    return t
