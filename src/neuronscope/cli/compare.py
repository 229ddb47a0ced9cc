"""``neuronscope compare A B --metric …``: compare two representations from the command line.

``A`` and ``B`` are each ``RUN:SITE_GLOB`` (sites of a recorded run with stored activations,
one population per site) or a file: response arrays (``.npy``, ``.npz``, ``.h5``, ``.csv``,
see :func:`neuronscope.sources.brain.load_responses`) or precomputed RDMs (``.mat``, or an
``.npz`` holding ``rdms``; RSA only) — resolved by :func:`neuronscope.specs.load_populations`.
Two text runs are compared row by row at the ``--align`` level (token, word, char-span or
doc; :func:`neuronscope.specs.load_population_pair`), checked before anything is loaded.
One population per side prints one number; several sites print the matrix (rows A, columns
B) as a table, or JSON with ``--json``.

Metric options go to :func:`neuronscope.analyses.compare.compare_all` only when given, so
the metric's own defaults apply otherwise and the API says which options a metric takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from neuronscope.cli.checks import open_interval, writable_run
from neuronscope.cli.output import console, emit_json, matrix_table
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
    save: Path = typer.Option(None, "--save",
                              help="Store the matrix in this run (extras/compare-<metric>) so its atlas shows the heatmap."),
    align: str = typer.Option(None, "--align", show_default=False,
                              help="Rows of two text runs: token (default; same tokenization), word, char-span "
                                   "(tokens pooled per aligned span) or doc (pooled per document)."),
    pool: str = typer.Option("mean", "--pool", help="Pooling for --align word/char-span/doc: mean, max or last."),
) -> None:
    """Compare representations (networks with networks, networks with brains)."""
    from neuronscope.analyses.compare import compare_all
    from neuronscope.specs import load_population_pair

    if metric not in METRIC_CHOICES:
        raise NeuronscopeError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_CHOICES)}")
    given = {"rdm_method": rdm_method, "compare": comparator, "alpha": alpha, "keep": keep, "cv": cv}
    options = {k: v for k, v in given.items() if v is not None}
    if save is not None:
        writable_run(save, "--save")  # before loading and comparing, not after
    pa, pb = load_population_pair(a, b, align, pool)  # alignment checked before any activation is read
    mat = compare_all(pa, metric, others=pb, **options)
    values = mat.values
    if save is not None:
        from neuronscope.analyses.extras import save_comparison

        save_comparison(save, mat, metric, title=f"{metric}: {a} vs {b}")
    if json_out:
        if values.shape == (1, 1):
            payload: dict[str, Any] = {"metric": metric, "a": a, "b": b, "value": float(values[0, 0])}
        else:
            payload = {"metric": metric, "rows": list(map(str, mat.a.values)),
                       "cols": list(map(str, mat.b.values)), "values": values}
        emit_json(payload)
        return
    if values.shape == (1, 1):
        console.print(f"{metric}({mat.a.values[0]}, {mat.b.values[0]}) = {values[0, 0]:.6f}")
        return
    console.print(matrix_table(mat, f"{metric}: rows {a}, columns {b}"))
