"""``neuronscope compare A B --metric …``: compare two representations from the command line.

``A`` and ``B`` are each ``RUN:SITE_GLOB`` (sites of a recorded run with stored activations,
one population per site) or a file: response arrays (``.npy``, ``.npz``, ``.h5``, ``.csv``,
see :func:`neuronscope.sources.brain.load_responses`), precomputed RDMs (``.mat``, or an
``.npz`` holding ``rdms``; RSA only; ``--key``/``--field`` pick the variable and struct field)
or an NWB file (one population per brain area) — resolved by
:func:`neuronscope.specs.load_populations`. Two text runs are compared row by row at the
``--align`` level (token, word, char-span or doc;
:func:`neuronscope.specs.load_population_pair`), checked before anything is loaded.
One population per side prints one number, named with its run (``RUN:site``); several sites
print the matrix (rows A, columns B) as tables with full site names, or JSON with ``--json``.
Populations of a run are read lazily: linear CKA, CCA and shape metrics stream them from the
store (a progress bar on stderr, none with ``--json``). ``--save RUN`` stores the matrix in a
run under ``--name`` (default ``compare-METRIC-A-vs-B``), refusing to replace a result of the
same name without ``--overwrite``, and says where it went (JSON field ``saved``).

Metric options go to :func:`neuronscope.analyses.compare.compare_all` only when given, so
the metric's own defaults apply otherwise and the API says which options a metric takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from neuronscope.cli.checks import open_interval, writable_run
from neuronscope.cli.output import console, emit_json, matrix_tables
from neuronscope.errors import NeuronscopeError

#: Metrics offered on the command line.
METRIC_CHOICES = ("cka", "debiased_cka", "rbf_cka", "rsa", "trsa", "cca", "svcca", "pwcca",
                  "procrustes", "shape", "encoding")


def compare(
    a: str = typer.Argument(..., help="First representation: RUN:SITE_GLOB or a response/RDM file."),
    b: str = typer.Argument(..., help="Second representation: RUN:SITE_GLOB or a response/RDM file."),
    metric: str = typer.Option("cka", "--metric", "-m",
                               help=f"Metric: {', '.join(METRIC_CHOICES)}."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    rdm_method: str = typer.Option(None, "--rdm-method", show_default=False,
                                   help="RDM dissimilarity for rsa/trsa: correlation (default), euclidean, cosine."),
    comparator: str = typer.Option(None, "--compare", show_default=False,
                                   help="RDM comparator for rsa/trsa: spearman, pearson, kendall, cosine "
                                        "(default: spearman for rsa, pearson for trsa)."),
    alpha: float = typer.Option(None, "--alpha", show_default=False,
                                help="Partial whitening for procrustes/shape (1 = none, the default; 0 = full)."),
    keep: float = typer.Option(None, "--keep", show_default=False, callback=open_interval(0.0, 1.0),
                               help="Variance fraction kept by svcca, in (0, 1] (default 0.99)."),
    cv: int = typer.Option(None, "--cv", show_default=False, min=2,
                           help="Cross-validation folds for the encoding metric (default 5)."),
    key: str = typer.Option(None, "--key", show_default=False,
                            help="RDM files: the variable holding the RDMs (e.g. RDMs or Models in RSA-toolbox .mat files)."),
    field: str = typer.Option("RDM", "--field", help="RDM files: the struct field holding each matrix (RSA-toolbox: RDM)."),
    save: Path = typer.Option(None, "--save",
                              help="Store the matrix in this run (extras/NAME) so its atlas shows the heatmap."),
    name: str = typer.Option(None, "--name", show_default=False,
                             help="Name of the saved result (default: compare-METRIC-A-vs-B from both specs)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace a saved result of the same name (otherwise an error)."),
    align: str = typer.Option(None, "--align", show_default=False,
                              help="Rows of two text runs: token (default; same tokenization), word, char-span "
                                   "(tokens pooled per aligned span) or doc (pooled per document)."),
    pool: str = typer.Option("mean", "--pool", help="Pooling for --align word/char-span/doc: mean, max or last."),
) -> None:
    """Compare representations (networks with networks, networks with brains)."""
    from neuronscope.analyses.compare import compare_all
    from neuronscope.analyses.extras import check_extra_name, comparison_name, save_comparison
    from neuronscope.specs import load_population_pair

    if metric not in METRIC_CHOICES:
        raise NeuronscopeError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_CHOICES)}")
    if name is not None and save is None:
        raise NeuronscopeError("--name names a saved result; give --save RUN too")
    given = {"rdm_method": rdm_method, "compare": comparator, "alpha": alpha, "keep": keep, "cv": cv}
    options = {k: v for k, v in given.items() if v is not None}
    target = None
    if save is not None:  # refuse before any data is read
        from neuronscope.store import open_run

        writable_run(save, "--save")
        target = open_run(save)
        name = check_extra_name(name) if name is not None else comparison_name(metric, a, b)
        if not overwrite and name in target.extra_names():
            raise NeuronscopeError(
                f"run {save} already holds a result named {name!r}; pass --overwrite to replace it, "
                "or --name to save beside it"
            )
    # alignment checked before any activation is read
    pa, pb = load_population_pair(a, b, align, pool, key=key, field=field)
    mat = compare_all(pa, metric, others=pb, progress=not json_out, **options)
    values = mat.values
    saved = None
    if target is not None:
        name = save_comparison(target, mat, metric, title=f"{metric}: {a} vs {b}", name=name, overwrite=overwrite)
        saved = {"run": str(save), "name": name, "path": str(Path(save) / "extras" / name)}
    if json_out:
        if values.shape == (1, 1):
            payload: dict[str, Any] = {"metric": metric, "a": a, "b": b,
                                       "a_population": _label(a, mat.a.values[0]),
                                       "b_population": _label(b, mat.b.values[0]),
                                       "value": float(values[0, 0])}
        else:
            payload = {"metric": metric, "a": a, "b": b, "rows": list(map(str, mat.a.values)),
                       "cols": list(map(str, mat.b.values)), "values": values}
        payload["saved"] = saved
        emit_json(payload)
        return
    if values.shape == (1, 1):
        console.print(Text(f"{metric}({_label(a, mat.a.values[0])}, {_label(b, mat.b.values[0])}) = "
                           f"{values[0, 0]:.6f}"), soft_wrap=True)
    else:
        for table in matrix_tables(mat, f"{metric}: rows {a}, columns {b}"):
            console.print(table)
    if saved is not None:
        console.print(Text(f"saved in run {saved['run']} as {saved['name']!r} ({saved['path']}); "
                           f"`neuronscope atlas {saved['run']} --out DIR` shows it"), soft_wrap=True)


def _label(spec: str, population: Any) -> str:
    """A population named with its run: ``RUN:site`` for a run spec, the file for a file."""
    run, sep, _ = spec.rpartition(":")
    if not sep or not run or Path(spec).exists():
        return spec
    return f"{run}:{population}"
