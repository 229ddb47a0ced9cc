"""``neuronscope`` command line: thin verbs over the Python API.

Every verb takes ``--json`` for machine-readable output. Errors are one line on stderr
that names the fix, with exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from neuronscope.errors import NeuronscopeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="neuronscope: record, characterize, compare and browse the neurons of any network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (numpy scalars and paths converted)."""
    typer.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def print_info(info: dict[str, Any]) -> None:
    """Render ``Run.info()`` as a rich table."""
    head = Table(show_header=False, box=None)
    for key in ("path", "status", "model", "samples", "items", "activation_rows", "keep", "dtype", "sample_rate", "seconds"):
        head.add_row(f"[bold]{key}", str(info.get(key)))
    src = info.get("source") or {}
    head.add_row("[bold]corpus", f"{src.get('corpus') or src.get('name')} ({src.get('documents') or src.get('items')} items)")
    console.print(head)
    t = Table(title="sites")
    t.add_column("site")
    t.add_column("units", justify="right")
    t.add_column("non-finite", justify="right")
    for site, units in info["sites"].items():
        t.add_row(site, str(units), str(info.get("nonfinite", {}).get(site, 0)))
    console.print(t)


@app.command()
def record(
    model: str = typer.Option("minilm", help="'minilm' (the packaged all-MiniLM-L6-v2) or a local Hugging Face model directory."),
    corpus: str = typer.Option("default", help="Corpus: a .txt file (one document per line), a .jsonl file with a 'text' field and optional label fields such as 'lang', or 'default' for the bundled multilingual corpus."),
    sites: str = typer.Option("encoder.layer.*.intermediate", help="Module-name glob(s), comma-separated, e.g. 'encoder.layer.*.intermediate'."),
    out: Path = typer.Option(..., help="Run directory to write (a Zarr v3 store); re-running into an unfinished run resumes it."),
    keep: str = typer.Option("both", help="What to keep: 'both' (activations + summaries), 'activations', or 'summaries' (no activations stored)."),
    dtype: str = typer.Option("float16", help="Storage dtype of activations: float16 or float32."),
    batch_size: int = typer.Option(32, help="Documents per forward pass."),
    max_tokens: int = typer.Option(128, help="Truncate each document to this many tokens."),
    sample_rate: float = typer.Option(1.0, help="Store activations of this deterministic fraction of samples (summaries see all)."),
    workers: int = typer.Option(0, help="Shard the corpus over a local Dask cluster with this many workers (summaries only; 0 = in process)."),
    scheduler: str = typer.Option("", help="Address of a running Dask scheduler to shard the corpus over (summaries only)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run with a different configuration."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the run info as JSON."),
) -> None:
    """Record the neurons of a model over a corpus into a resumable run."""
    from neuronscope.recording import record as record_run
    from neuronscope.sources.models import load_model
    from neuronscope.sources.text import TextSource, load_corpus

    docs = load_corpus(corpus)  # corpus errors come before the seconds of loading a model
    m, tok = load_model(model)
    source = TextSource(docs, tok, batch_size=batch_size, max_tokens=max_tokens)
    if workers or scheduler:
        from neuronscope.distributed import record_distributed

        run = record_distributed(
            model, source, sites, out=out, workers=workers or None, scheduler=scheduler or None,
            overwrite=overwrite, progress=progress and not json_out,
        )
    else:
        run = record_run(
            m, source, sites, out=out, keep=keep, dtype=dtype, sample_rate=sample_rate,
            overwrite=overwrite, progress=progress and not json_out,
        )
    if json_out:
        emit_json(run.info())
    else:
        print_info(run.info())


@app.command()
def info(
    run: Path = typer.Argument(..., help="A run directory written by `neuronscope record`."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a run's sites, units, samples, status and configuration."""
    from neuronscope.store import open_run

    i = open_run(run).info()
    if json_out:
        emit_json(i)
    else:
        print_info(i)


@app.command()
def summarize(
    run: Path = typer.Argument(..., help="A run with stored activations."),
    sites: str = typer.Option("", help="Site glob(s) to summarize (default: all)."),
    workers: int = typer.Option(2, help="Workers of the local Dask cluster."),
    scheduler: str = typer.Option("", help="Address of a running Dask scheduler (instead of a local cluster)."),
    chunk_rows: int = typer.Option(0, help="Rows per task (0 = an even share per worker, at most 32768; chunks never split a document)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run info as JSON."),
) -> None:
    """Compute the streaming summaries of a stored run chunk by chunk with Dask and store them
    in the run (the same summaries `record` computes in its one pass)."""
    from neuronscope.distributed import summarize_run
    from neuronscope.store import open_run

    r = open_run(run)
    result = summarize_run(r, sites or None, workers=workers, scheduler=scheduler or None, chunk_rows=chunk_rows or None)
    r.write_summaries(result)
    if json_out:
        emit_json(open_run(run).info())
    else:
        console.print(f"summaries of {len(result)} site(s) written to {run}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), help="Directory for the demo's run, tables and atlas."),
    docs: int = typer.Option(0, help="Use only the first N documents of the bundled corpus (0 = all 2,852)."),
    sample_rate: float = typer.Option(0.05, help="Fraction of samples whose activations are stored (summaries see all)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """The main job on the embedded default: record MiniLM's 6 FFN sites over the bundled
    multilingual corpus with summaries, characterize every neuron, and build the atlas."""
    from neuronscope.analyses.characterize import characterize as characterize_run
    from neuronscope.analyses.characterize import site_summary
    from neuronscope.atlas.build import build_atlas
    from neuronscope.recording import record as record_run
    from neuronscope.sources.models import BERT_FFN_SITES, load_model
    from neuronscope.sources.text import TextSource, load_corpus

    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model("minilm")
    corpus = load_corpus("default")
    if docs:
        corpus.texts = corpus.texts[:docs]
        corpus.labels = {k: v[:docs] for k, v in corpus.labels.items()}
    source = TextSource(corpus, tok, batch_size=32, max_tokens=128)
    run = record_run(model, source, BERT_FFN_SITES, out=out / "minilm.zarr", keep="both",
                     dtype="float16", sample_rate=sample_rate, progress=not json_out)
    # layer × layer linear CKA on the stored activations, kept in the run for the atlas
    from neuronscope.analyses.compare import compare_all
    from neuronscope.analyses.extras import save_comparison

    cka = compare_all({s.split(".")[2]: run.population(s).values for s in run.sites}, "cka")
    save_comparison(run, cka, "cka", title="linear CKA between MiniLM's FFN layers (stored tokens)")
    table = characterize_run(run)
    table.to_parquet(out / "neurons.parquet")
    sites_df = site_summary(run)
    sites_df.to_csv(out / "sites.csv", index=False)
    index = build_atlas(run, out / "atlas")
    if json_out:
        emit_json({"run": str(run.path), "neurons": str(out / "neurons.parquet"), "sites": sites_df.to_dict("records"),
                   "atlas": str(index.resolve())})
        return
    from neuronscope.cli_characterize import site_table

    print_info(run.info())
    console.print(site_table(sites_df, table))
    console.print(f"per-neuron table: {out / 'neurons.parquet'} ({len(table)} neurons)")
    console.print(f"atlas: [bold]{index.resolve()}[/bold]")


def _register() -> None:
    from neuronscope.cli_atlas import atlas_command, serve_command
    from neuronscope.cli_characterize import characterize_command
    from neuronscope.cli_compare import compare_command
    from neuronscope.cli_match import match_command, sysid_command

    app.command("characterize")(characterize_command)
    app.command("atlas")(atlas_command)
    app.command("serve")(serve_command)
    app.command("compare")(compare_command)
    app.command("match")(match_command)
    app.command("sysid")(sysid_command)


_register()


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except NeuronscopeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
