"""``neuronscope compare A B --metric …``: compare two representations from the command line.

``A`` and ``B`` are each ``RUN:SITE_GLOB`` (sites of a recorded run with stored activations,
one population per site) or a file: response arrays (``.npy``, ``.npz``, ``.h5``, ``.csv``,
see :func:`neuronscope.sources.brain.load_responses`) or precomputed RDMs (``.mat``, or an
``.npz`` holding ``rdms``; RSA only). One population per side prints one number; several
sites print the matrix (rows A, columns B) as a table, or JSON with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from neuronscope.errors import NeuronscopeError

METRIC_CHOICES = ("cka", "debiased_cka", "rbf_cka", "rsa", "trsa", "cca", "svcca", "pwcca",
                  "procrustes", "shape", "encoding")


def _is_rdm_file(p: Path) -> bool:
    if p.suffix.lower() == ".mat":
        return True
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return any(k in z.files for k in ("rdms", "rdm", "RDMs", "RDM"))
    return False


def load_spec(spec: str) -> dict[str, Any]:
    """Populations named by a CLI spec: ``RUN:SITE_GLOB`` -> {site: DataArray}, or a file ->
    {file stem: population or RDMs}."""
    from neuronscope.sources.brain import load_rdms, load_responses

    path = Path(spec)
    if path.is_file():
        return {path.stem: load_rdms(path) if _is_rdm_file(path) else load_responses(path)}
    run_path, sep, glob = spec.rpartition(":")
    if not sep or not run_path:
        raise NeuronscopeError(f"{spec!r} is neither a file nor RUN:SITE_GLOB; check the path")
    if not Path(run_path).exists():
        raise NeuronscopeError(f"run {run_path!r} does not exist; give RUN:SITE_GLOB of a recorded run")
    import neuronscope

    run = neuronscope.open_run(run_path)
    if not getattr(run, "has_activations", True):
        raise NeuronscopeError(f"run {run_path} kept no activations; record with activations to compare")
    pop = run.population(glob or None)
    sites = np.asarray(pop.coords["site"].values)
    if sites.size == 0:
        raise NeuronscopeError(f"no site of {run_path} matches {glob!r}; see `run.sites` for names")
    out: dict[str, Any] = {}
    for site in dict.fromkeys(sites.tolist()):
        out[str(site)] = pop.isel(neuron=np.flatnonzero(sites == site)).load()
    return out


def compare_command(
    a: str = typer.Argument(..., help="First representation: RUN:SITE_GLOB or a response/RDM file."),
    b: str = typer.Argument(..., help="Second representation: RUN:SITE_GLOB or a response/RDM file."),
    metric: str = typer.Option("cka", "--metric", "-m",
                               help=f"Metric: {', '.join(METRIC_CHOICES)}."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    rdm_method: str = typer.Option("correlation", "--rdm-method",
                                   help="RDM dissimilarity for rsa/trsa: correlation, euclidean, cosine."),
    comparator: str = typer.Option(None, "--compare",
                                   help="RDM comparator for rsa/trsa: spearman, pearson, kendall, cosine."),
    alpha: float = typer.Option(1.0, "--alpha",
                                help="Partial whitening for procrustes/shape (1 = none, 0 = full)."),
    keep: float = typer.Option(0.99, "--keep", help="Variance fraction kept by svcca."),
    cv: int = typer.Option(5, "--cv", help="Cross-validation folds for the encoding metric."),
    save: Path = typer.Option(None, "--save",
                              help="Store the matrix in this run (extras/compare-<metric>) so its atlas shows the heatmap."),
) -> None:
    """Compare representations (networks with networks, networks with brains)."""
    from rich.console import Console
    from rich.table import Table

    from neuronscope.analyses.compare import compare_all

    if metric not in METRIC_CHOICES:
        raise NeuronscopeError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_CHOICES)}")
    kw: dict[str, Any] = {}
    if metric in ("rsa", "trsa"):
        kw["rdm_method"] = rdm_method
        if comparator:
            kw["compare"] = comparator
    elif metric in ("procrustes", "shape") and alpha != 1.0:
        kw["alpha"] = alpha
    elif metric == "svcca":
        kw["keep"] = keep
    elif metric == "encoding":
        kw["cv"] = cv
    pa, pb = load_spec(a), load_spec(b)
    mat = compare_all(pa, metric, others=pb, **kw)
    values = mat.values
    if save is not None:
        from neuronscope.analyses.extras import save_comparison

        save_comparison(save, mat, metric, title=f"{metric}: {a} vs {b}")
    if json_out:
        if values.shape == (1, 1):
            payload: dict[str, Any] = {"metric": metric, "a": a, "b": b, "value": float(values[0, 0])}
        else:
            payload = {"metric": metric, "rows": list(map(str, mat.a.values)),
                       "cols": list(map(str, mat.b.values)), "values": values.tolist()}
        typer.echo(json.dumps(payload))
        return
    console = Console()
    if values.shape == (1, 1):
        console.print(f"{metric}({mat.a.values[0]}, {mat.b.values[0]}) = {values[0, 0]:.6f}")
        return
    table = Table(title=f"{metric}: rows {a}, columns {b}")
    table.add_column("")
    for c in mat.b.values:
        table.add_column(str(c), justify="right")
    for i, r in enumerate(mat.a.values):
        table.add_row(str(r), *[f"{v:.4f}" for v in values[i]])
    console.print(table)
