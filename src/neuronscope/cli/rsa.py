"""``neuronscope rsa --models … --data SUBJECT_RDMS``: the RSA model comparison.

Thin over :func:`neuronscope.analyses.rsa_workflow.rsa_models`. Each ``--models`` spec is
an RDM file (MATLAB RSA-toolbox structs, rsatoolbox HDF5, ``.npy``/``.npz``/``.h5`` arrays:
every RDM in it is one model, named by its ``name``), a response file (one model: its RDM)
or ``RUN:SITE_GLOB`` (every matching site of a recorded run is one model: the RDM of its
population, :func:`~neuronscope.analyses.rsa.rdm` with ``--rdm-method``). ``--data`` is an
RDM file with one RDM per subject (``--average-sessions`` averages a subjects × sessions
struct over sessions). Printed: each model's mean score over subjects with its bootstrap
confidence interval and p-values, the per-subject scores, the noise ceiling and the
pairwise model tests; ``--plot`` writes the bar figure, ``--save RUN`` stores the scores in a
run (its atlas shows the heatmap), ``--json`` prints everything as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from neuronscope.cli.checks import open_interval, output_file, writable_run
from neuronscope.cli.output import console, emit_json, frame_table
from neuronscope.errors import NeuronscopeError

_MODELS_HELP = ("Model RDMs: RDM files (every RDM in a file is a model), response files, or RUN:SITE_GLOB "
                "(every matching site of a recorded run is a model). Space-separate after one --models, "
                "repeat the flag, or comma-separate files.")


def _specs(models: list[str] | None, more: list[str] | None) -> list[str]:
    """Model specs in order; commas separate specs except inside a RUN:GLOB's glob."""
    out: list[str] = []
    for m in [*(models or []), *(more or [])]:
        if Path(m).exists() or ":" in m:
            out.append(m.strip())
        else:
            out += [x.strip() for x in m.split(",") if x.strip()]
    return [s for s in out if s]


def _load_models(specs: list[str], key: str | None, field: str) -> dict[str, Any]:
    """{model name: RDMs or population} from the specs (names prefixed by their file or run
    when two specs give the same name)."""
    from neuronscope.rdms import RDMs
    from neuronscope.specs import load_populations

    parts: list[tuple[str, str, Any]] = []
    for spec in specs:
        p = Path(spec)
        label = p.stem if p.is_file() else Path(spec.rpartition(":")[0]).stem
        for name, value in load_populations(spec, key=key, field=field).items():
            if isinstance(value, RDMs):
                for i, nm in enumerate(value.names):
                    parts.append((label, nm if len(value) > 1 else (nm if nm != p.stem else name),
                                  value.select([i])))
            else:
                parts.append((label, name, value))
    names = [n for _, n, _ in parts]
    clash = {n for n in names if names.count(n) > 1}
    out: dict[str, Any] = {}
    for label, name, value in parts:
        full = f"{label}:{name}" if name in clash else name
        if full in out:
            raise NeuronscopeError(f"model {full!r} is given twice; list each model once")
        out[full] = value
    return out


def rsa(
    models: list[str] = typer.Option(..., "--models", help=_MODELS_HELP),
    more: list[str] = typer.Argument(None, help="More model specs (the continuation of --models).",
                                     show_default=False, metavar="MODEL"),
    data: str = typer.Option(..., "--data", help="Subjects' RDMs: an RDM file with one RDM per subject (or per subject and session)."),
    comparator: str = typer.Option("corr", "--compare", help="RDM comparator: corr (pearson), spearman, kendall (tau-a), rho-a, cosine, corr_cov, cosine_cov, bures."),
    bootstrap: str = typer.Option("subjects", "--bootstrap", help="Resample subjects, stimuli, both, or none for the confidence interval."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap samples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap samples."),
    ci: float = typer.Option(0.95, "--ci", callback=open_interval(0.0, 1.0, hi_open=True),
                             help="Confidence level of the interval, in (0, 1)."),
    key: str = typer.Option(None, "--key", show_default=False, help="The variable holding the subjects' RDMs in --data (default: the first RSA-toolbox struct, else rdms or RDMs)."),
    field: str = typer.Option("RDM", "--field", help="The struct field holding each matrix in --data."),
    model_key: str = typer.Option(None, "--model-key", show_default=False, help="The variable holding the RDMs in the model files (default: as --key's default)."),
    model_field: str = typer.Option(None, "--model-field", show_default=False, help="The struct field of the model files (default: --field)."),
    average_sessions: bool = typer.Option(False, "--average-sessions", help="Average --data over its last struct axis (sessions): one RDM per subject."),
    rdm_method: str = typer.Option("correlation", "--rdm-method", help="Dissimilarity of run sites and response files: correlation, euclidean, cosine."),
    plot: Path = typer.Option(None, "--plot", help="Write the bar figure (models, CI error bars, noise ceiling band) to this .png or .svg."),
    save: Path = typer.Option(None, "--save", help="Store the scores in this run (extras/rsa) so its atlas shows the heatmap."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compare model RDMs with subjects' RDMs: scores per model and subject, mean with a
    bootstrap CI, noise ceiling, pairwise model tests and the bar figure."""
    from neuronscope.analyses.rsa import RDM_METHODS
    from neuronscope.analyses.rsa_workflow import BOOTSTRAPS, rsa_models
    from neuronscope.rdms import RDMs
    from neuronscope.specs import load_populations

    if bootstrap not in BOOTSTRAPS:
        raise NeuronscopeError(f"unknown --bootstrap {bootstrap!r}; use one of {', '.join(BOOTSTRAPS)}")
    if n_boot < 1 and bootstrap != "none":
        raise NeuronscopeError("--n-boot must be at least 1 (or --bootstrap none)")
    if rdm_method not in RDM_METHODS or rdm_method == "crossnobis":
        raise NeuronscopeError("--rdm-method must be correlation, euclidean or cosine")
    if plot is not None:  # before any file is read or anything computed
        output_file(plot, "--plot", (".png", ".svg"))
    if save is not None:
        writable_run(save, "--save")
    specs = _specs(models, more)
    if not specs:
        raise NeuronscopeError("no model given; pass --models FILE_OR_RUN:SITES [...]")
    loaded = load_populations(data, key=key, field=field, average_sessions=average_sessions)
    subjects = next(iter(loaded.values()))
    if not isinstance(subjects, RDMs):
        raise NeuronscopeError(f"--data {data} holds responses, not RDMs; give an RDM file "
                               "(one RDM per subject: .mat, .npz with rdms, .h5)")
    model_map = _load_models(specs, model_key, model_field or field)
    result = rsa_models(model_map, subjects, method=comparator, bootstrap=bootstrap, n_boot=n_boot, seed=seed,
                        ci=ci, rdm_method=rdm_method)
    written = result.plot(plot) if plot is not None else None
    saved = result.save(save) if save is not None else None
    if json_out:
        emit_json({**result.to_dict(), "data": data, "model_specs": specs, "plot": written,
                   "saved": None if saved is None else f"{save}/extras/{saved}"})
        return
    df = result.to_frame().reset_index()
    ci_txt = f"{round(100 * ci)}% CI over {bootstrap}" if bootstrap != "none" else "no CI"
    console.print(frame_table(f"RSA ({result.method}): {len(result.models)} models vs "
                              f"{len(result.subjects)} subjects, {ci_txt}",
                              df[["model", "mean", "ci_low", "ci_high", "p_zero", "p_noise"]]))
    if len(result.subjects) <= 6:
        scores = df[["model", *[c for c in df.columns if c.startswith("score[")]]]
        console.print(frame_table("score per subject", scores.rename(columns=lambda c: c[6:-1] if
                                                                   c.startswith("score[") else c)))
    else:
        console.print(f"per-subject scores of {len(result.subjects)} subjects: --json")
    if result.noise_ceiling is not None:
        lo, up = result.noise_ceiling
        console.print(f"noise ceiling: lower {lo:.3f}, upper {up:.3f}")
    if len(result.models) > 1:
        console.print(frame_table("pairwise model tests", result.pairwise_frame()))
    if written is not None:
        console.print(f"figure: {written}")
    if saved is not None:
        console.print(f"saved to {save} (extras/{saved})")
