"""``neuronscope characterize RUN``: per-site summary table, per-neuron table to a file.

Thin over :func:`neuronscope.analyses.characterize.characterize` and
:func:`~neuronscope.analyses.characterize.site_summary`; the lead registers
:func:`characterize_command` in ``cli.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from neuronscope.errors import NeuronscopeError

OUT_SUFFIXES = (".parquet", ".csv")


def write_table(df: pd.DataFrame, out: Path) -> Path:
    """Write the per-neuron table as Parquet or CSV, chosen by ``out``'s suffix."""
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise NeuronscopeError(f"--out must end in .parquet or .csv, not {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.to_parquet(out, index=False)
    else:
        df.to_csv(out, index=False)
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def short_site_names(names: list[str]) -> tuple[list[str], str]:
    """Site names without their common dotted prefix and suffix, and the glob they share
    (``encoder.layer.3.intermediate`` → ``layer.3`` under ``encoder.*.intermediate``)."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return list(names), ""
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) > pre + suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    if not pre and not suf:
        return list(names), ""
    short = [".".join(p[pre : len(p) - suf]) for p in parts]
    glob = ".".join([*parts[0][:pre], "*", *(parts[0][len(parts[0]) - suf :] if suf else [])])
    return short, glob


def site_table(sites: pd.DataFrame, neurons: pd.DataFrame) -> Table:
    """A rich table of :func:`site_summary` rows plus counts of flagged neurons."""
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


def report(
    run_or_summaries: Any,
    site: str | None = None,
    out: Path | None = None,
    threshold: float | None = None,
    json_out: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Characterize ``run_or_summaries``, print the site table (or JSON) and write ``out``.

    Returns the JSON-able report: ``sites`` (site_summary records), ``neurons`` (row
    count), ``out`` (path written or None), ``threshold``.
    """
    from neuronscope.analyses.characterize import characterize, site_summary

    neurons = characterize(run_or_summaries, site=site, threshold=threshold)
    sites = site_summary(run_or_summaries, site=site, threshold=threshold)
    written = write_table(neurons, out) if out is not None else None
    doc = {
        "threshold": threshold,
        "sites": json.loads(sites.to_json(orient="records")),
        "neurons": len(neurons),
        "out": str(written) if written is not None else None,
    }
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
    else:
        console = console or Console()
        console.print(site_table(sites, neurons))
        if written is not None:
            console.print(f"wrote {len(neurons)} neurons to {written}")
    return doc


def characterize_command(
    run: Path = typer.Argument(..., help="Run directory (a recorded run with summaries)."),
    site: str | None = typer.Option(
        None, "--site", help="Only sites matching this name or glob (default: all sites)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the per-neuron table here (.parquet or .csv)."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help="Count a neuron active when |a| > THRESHOLD (one of the recorded magnitude "
        "thresholds; for GELU/SwiGLU nets) instead of a > 0.",
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the per-site summary as JSON (machine-readable)."
    ),
) -> None:
    """Characterize every neuron of a run: firing frequency, dead / dormant / positional
    neurons, token detectors, hot/cold power law; print a per-site table."""
    import neuronscope

    if not Path(run).exists():
        raise NeuronscopeError(f"run {run} does not exist; pass the directory given to record --out")
    report(neuronscope.open_run(run), site=site, out=out, threshold=threshold, json_out=json_out)
