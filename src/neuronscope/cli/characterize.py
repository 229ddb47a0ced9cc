"""``neuronscope characterize RUN``: per-site summary table, per-neuron table to a file.

Thin over :func:`neuronscope.analyses.characterize.characterize` and
:func:`~neuronscope.analyses.characterize.site_summary`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

from neuronscope.cli.checks import output_file
from neuronscope.cli.output import console, emit_json, site_table
from neuronscope.errors import NeuronscopeError

#: File types the per-neuron table can be written as.
OUT_SUFFIXES = (".parquet", ".csv")


def write_table(df: pd.DataFrame, out: Path) -> Path:
    """Write the per-neuron table as Parquet or CSV, chosen by ``out``'s suffix."""
    suffix = output_file(out, "--out", OUT_SUFFIXES).suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.to_parquet(out, index=False)
    else:
        df.to_csv(out, index=False)
    return out


def _label_summary(neurons: pd.DataFrame, label: str | None) -> dict:
    """The label field and, per site, how many neurons LAPE finds specific to a value."""
    if label is None or "lape_labels" not in neurons:
        return {}
    spec = neurons["lape_labels"].fillna("").ne("")
    return {"label": label, "label_specific": {str(s): int(n) for s, n in spec.groupby(neurons["site"], sort=False).sum().items()}}


def characterize(
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
    label: str = typer.Option(
        None, "--label", help="Add label columns (top_label, top_label_prob, lape_entropy, lape_labels) for "
        "this label field; default: the run's label field when it has exactly one; 'none' to skip."
    ),
) -> None:
    """Characterize every neuron of a run: firing frequency, dead / dormant / positional
    neurons, token detectors, hot/cold power law; print a per-site table."""
    from neuronscope.analyses.characterize import characterize as characterize_run
    from neuronscope.analyses.characterize import site_summary
    from neuronscope.store import open_run

    if not Path(run).exists():
        raise NeuronscopeError(f"run {run} does not exist; pass the directory given to record --out")
    if out is not None:
        output_file(out, "--out", OUT_SUFFIXES)  # kind and writability before the work, not after it
    r = open_run(run)
    if label is None:
        fields = sorted(r.label_categories)
        label = fields[0] if len(fields) == 1 else None
    elif label == "none":
        label = None
    neurons = characterize_run(r, site=site, threshold=threshold, label=label)
    sites = site_summary(r, site=site, threshold=threshold)
    written = write_table(neurons, out) if out is not None else None
    spikes = None
    if "spikes" in r.extra_names():  # a spiking network's run: its spike statistics too
        from neuronscope.analyses.spikes import spike_site_summary

        spikes = spike_site_summary(r)
    if json_out:
        emit_json({
            "threshold": threshold,
            "sites": json.loads(sites.to_json(orient="records")),
            "neurons": len(neurons),
            "out": written,
            **_label_summary(neurons, label),
            **({"spikes": json.loads(spikes.to_json(orient="records"))} if spikes is not None else {}),
        })
        return
    console.print(site_table(sites, neurons))
    if spikes is not None:
        from neuronscope.cli.output import frame_table

        console.print(frame_table("spike statistics (rate: spikes per bin)", spikes))
    if label is not None:
        per = _label_summary(neurons, label)["label_specific"]
        console.print(f"LAPE ({label}): " + ", ".join(f"{s}: {n}" for s, n in per.items())
                      + f" neurons specific to a {label} value (lape_labels column)")
    if written is not None:
        console.print(f"wrote {len(neurons)} neurons to {written}")
