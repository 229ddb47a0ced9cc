"""``neuronscope locate RUN --label lang --by lape|stats|probe|diffmeans|vocab``: which neurons
carry each value of a label, printed per site and stored in the run for the atlas.

Thin over :mod:`neuronscope.analyses.locate`: :func:`~neuronscope.analyses.locate.lape`,
:func:`~neuronscope.analyses.locate.label_statistics`,
:func:`~neuronscope.analyses.locate.sparse_probe`, :func:`~neuronscope.analyses.locate.diffmeans`
and :func:`~neuronscope.analyses.locate.vocab_projection`. The probe and difference-in-means
fits read the stored activations, or — for a ``keep=summaries`` run — pass the run's model
over its corpus again (:func:`~neuronscope.analyses.locate.replay_source`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from neuronscope.cli.output import console, emit_json, short_site_names
from neuronscope.errors import NeuronscopeError

#: Methods of ``--by``.
BY_CHOICES = ("lape", "stats", "probe", "diffmeans", "vocab")


def _ks(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NeuronscopeError(f"--ks must be comma-separated integers such as 1,2,4,8, not {text!r}") from None


def _show(table: Table) -> None:
    """Print a table's title as its own line (a title inside a narrow table wraps), then the table."""
    title, table.title = table.title, None
    console.print(f"[bold]{title}")
    console.print(table)


def _counts_table(res: Any) -> Table:
    """Rows: label values; columns: sites (short names); cells: specific neurons."""
    counts = res.counts()
    short, glob = short_site_names(list(counts["site"]))
    what = {"lape": "LAPE", "stats": "statistics", "probe": "k-sparse probe", "diffmeans": "difference in means"}
    t = Table(title=f"{what.get(res.method, res.method)}: neurons specific to each {res.field} value"
              + (f" ({glob})" if glob else ""))
    t.add_column(res.field)
    for s in short:
        t.add_column(s, justify="right")
    for lab in res.labels:
        t.add_row(lab, *[str(int(v)) for v in counts[lab]])
    t.add_row("[bold]any", *[f"[bold]{int(v)}" for v in counts["neurons"]])
    t.add_row("units", *[str(int(v)) for v in counts["units"]])
    return t


def _probe_table(res: Any) -> Table:
    """Rows: k; columns: sites; cells: mean held-out balanced accuracy over the probes."""
    import numpy as np

    curves = res.info["curves"]
    short, glob = short_site_names(list(curves))
    t = Table(title=f"k-sparse probe ({res.info['task']}): held-out balanced accuracy by k"
              + (f" ({glob})" if glob else "") + ", mean over probes")
    t.add_column("k", justify="right")
    for s in short:
        t.add_column(s, justify="right")
    ks = sorted({k for c in curves.values() for p in c.values() for k in p["k"]})
    for k in ks:
        row = []
        for c in curves.values():
            accs = [p["accuracy"][p["k"].index(k)] for p in c.values() if k in p["k"]]
            row.append(f"{np.mean(accs):.3f}" if accs else "–")
        t.add_row(str(k), *row)
    return t


def _k1_table(res: Any) -> Table:
    """Rows: label values; columns: sites; cells: the k=1 neuron and its accuracy."""
    curves = res.info["curves"]
    short, _ = short_site_names(list(curves))
    t = Table(title="k = 1: the single best neuron per value (held-out balanced accuracy)")
    t.add_column(res.field)
    for s in short:
        t.add_column(s, justify="right")
    for name in next(iter(curves.values())):
        t.add_row(name, *[f"{c[name]['neurons'][0]} ({c[name]['accuracy'][0]:.2f})" for c in curves.values()])
    return t


def _diffmeans_table(res: Any) -> Table:
    short, glob = short_site_names(list(res.sites))
    t = Table(title="difference in means: held-out balanced accuracy of the 1-d projection, one value vs rest"
              + (f" ({glob})" if glob else ""))
    t.add_column(res.field)
    for s in short:
        t.add_column(s, justify="right")
    for j, lab in enumerate(res.labels):
        t.add_row(lab, *[f"{res.arrays[s]['accuracy'][j]:.3f}" for s in res.sites])
    return t


def _vocab(run: Any, site: str | None, model_name: str | None, top: int, save: bool, json_out: bool) -> None:
    import numpy as np

    from neuronscope.analyses.locate import (
        load_causal_lm,
        save_vocab_projection,
        token_counts,
        vocab_projection,
    )

    name = model_name or run.config.get("model")
    model, _tok = load_causal_lm(name)
    sites = site or ",".join(run.sites)
    projs = vocab_projection(model, sites, token_counts=token_counts(run), top=top)
    if save:
        save_vocab_projection(run, projs)
    vocab = run.vocab or []
    if json_out:
        emit_json({"model": name, "saved": save, "sites": {
            s: {"families": {f: np.flatnonzero(m).tolist() for f, m in p.families.items()}, "params": p.params,
                "norm_mean": float(p.norm.mean())} for s, p in projs.items()}})
        return
    short, glob = short_site_names(list(projs))
    t = Table(title="what neurons write: weight families (Gurnee et al. 2024; Stolfo et al. 2024)"
              + (f" ({glob})" if glob else ""))
    t.add_column("family")
    for s in short:
        t.add_column(s, justify="right")
    for fam in next(iter(projs.values())).families:
        t.add_row(fam, *[str(int(p.families[fam].sum())) for p in projs.values()])
    _show(t)
    for s, p in projs.items():
        u = int(np.argmax(p.kurtosis))
        console.print(f"{s}: unit {u} (highest kurtosis {p.kurtosis[u]:.1f}) promotes "
                      f"{p.tokens(vocab, u, 'top')[:5]!r}, suppresses {p.tokens(vocab, u, 'bottom')[:5]!r}")


def locate(
    run: Path = typer.Argument(..., help="Run directory with per-label summaries (a corpus with a label field)."),
    label: str = typer.Option("lang", "--label", help="Label field (a .jsonl corpus field, or one from record --labels)."),
    by: str = typer.Option("lape", "--by", help=f"Method: {', '.join(BY_CHOICES)}."),
    site: str = typer.Option(None, "--site", help="Only sites matching this name or glob (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the result in the run (extras/locate-<label>-<by>) for the atlas."),
    top_rate: float = typer.Option(0.01, "--top-rate", help="lape: share of all neurons kept by lowest entropy."),
    filter_rate: float = typer.Option(0.95, "--filter-rate", help="lape: quantile a neuron's activation probability must exceed for some value."),
    test: str = typer.Option("t", "--test", help="stats: 't' (Welch, one value vs rest) or 'f' (ANOVA)."),
    alpha: float = typer.Option(0.05, "--alpha", help="stats: false discovery rate (Benjamini–Hochberg)."),
    min_effect: float = typer.Option(0.8, "--min-effect", help="stats: smallest Cohen's d of a specific neuron."),
    ks: str = typer.Option(None, "--ks", help="probe: probe sizes, comma-separated (default: powers of two from 1 to 256)."),
    task: str = typer.Option("one_vs_rest", "--task", help="probe: one_vs_rest (a probe per value) or multiclass."),
    rank: str = typer.Option("meandiff", "--rank", help="probe: neuron ranking, meandiff or f."),
    per_label: int = typer.Option(1000, "--per-label", help="probe: samples kept per value for the fits."),
    values: str = typer.Option(None, "--values", help="probe: only these values, comma-separated."),
    model: str = typer.Option(None, "--model", help="Model for a second pass or the vocabulary projection (default: the run's)."),
    top: int = typer.Option(10, "--top", help="vocab: promoted / suppressed tokens kept per neuron."),
) -> None:
    """Locate the neurons that carry each value of a label (languages, classes, concepts)."""
    from neuronscope.analyses import locate as loc
    from neuronscope.store import open_run

    if by not in BY_CHOICES:
        raise NeuronscopeError(f"unknown method {by!r}; use --by with one of {', '.join(BY_CHOICES)}")
    r = open_run(run)
    if by == "vocab":
        _vocab(r, site, model, top, save, json_out)
        return
    options: dict[str, Any] = {}
    if by == "lape":
        options = {"top_rate": top_rate, "filter_rate": filter_rate}
    elif by == "stats":
        options = {"test": test, "alpha": alpha, "min_effect": min_effect}
    elif by == "probe":
        options = {"ks": _ks(ks), "task": task, "rank": rank, "per_label": per_label,
                   "values": [v.strip() for v in values.split(",")] if values else None}
    if by in ("probe", "diffmeans") and not r.has_activations:
        options["model"], options["source"] = loc.replay_source(r, model)
        if not json_out:
            console.print("the run kept no activations: reading the selected neurons in a second pass over its corpus")
    res = loc.locate(r, label, by, site, **options)
    saved = res.save(r) if save else None
    if json_out:
        emit_json({**res.to_dict(), "saved": saved})
        return
    if by == "probe":
        _show(_probe_table(res))
        if res.info["task"] == "one_vs_rest":
            _show(_k1_table(res))
    elif by == "diffmeans":
        _show(_diffmeans_table(res))
    _show(_counts_table(res))
    if saved:
        console.print(f"saved into {r.path} as extras/{saved} (the atlas shows it)")
