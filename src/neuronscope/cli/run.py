"""``neuronscope record``, ``info``, ``verify``, ``summarize`` and ``demo``: make and inspect runs.

Thin over :func:`neuronscope.recording.record`,
:func:`neuronscope.distributed.record_distributed` / :func:`~neuronscope.distributed.summarize_run`
and :func:`neuronscope.store.open_run`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from neuronscope.cli.checks import open_interval, output_dir, writable_run
from neuronscope.cli.output import console, emit_json, print_info, site_table


def record(
    model: str = typer.Option("minilm", help="'minilm' (the packaged all-MiniLM-L6-v2) or a local Hugging Face model directory."),
    corpus: str = typer.Option("default", help="Corpus: a .txt file (one document per line), a .jsonl file with a 'text' field and optional label fields such as 'lang', or 'default' for the bundled multilingual corpus."),
    sites: str = typer.Option("encoder.layer.*.intermediate", help="Module-name glob(s), comma-separated, e.g. 'encoder.layer.*.intermediate'."),
    out: Path = typer.Option(..., help="Run directory to write (a Zarr v3 store); re-running into an unfinished run resumes it."),
    keep: str = typer.Option("both", help="What to keep: 'both' (activations + summaries), 'activations', or 'summaries' (no activations stored). All three work with --workers/--scheduler: the run reads like a single-process one."),
    dtype: str = typer.Option("float16", help="Storage dtype of activations: float16 or float32."),
    batch_size: int = typer.Option(32, min=1, help="Documents per forward pass with --batching docs; otherwise sets the default token budget (batch-size × max-tokens)."),
    max_tokens: int = typer.Option(128, min=1, help="Truncate each document to this many tokens."),
    batching: str = typer.Option("bucket", help="How documents become forward passes: 'bucket' (default: documents of similar length together, up to --max-batch-tokens padded tokens per pass, sorted by length within windows of --window documents; padding a few percent), 'docs' (--batch-size documents in corpus order, padded to the longest; the old way, 2-4x slower on short texts) or 'pack' (set by --pack). Part of the run's configuration."),
    max_batch_tokens: int = typer.Option(0, min=0, help="Token budget of one forward pass (documents × longest document, padding included); 0 = batch-size × max-tokens (4096 by default). Must be at least --max-tokens."),
    window: int = typer.Option(2048, min=1, help="With --batching bucket: documents are sorted by length only within windows of this many consecutive documents."),
    pack: int = typer.Option(None, help="Pack the corpus into contexts of this many tokens (documents' tokens, each followed by the separator token, concatenated and cut, as TransformerLens' tokenize_and_concatenate): no padding; samples keep doc and pos (the position in the document) and gain ctx (the context). Items and resume count contexts. Not with --workers."),
    threads: int = typer.Option(0, min=0, help="Torch intra-op threads of each forward pass in process (0 = the cores torch uses shared out between the lanes: 1 per lane by default; --workers use 1 each)."),
    lanes: int = typer.Option(0, min=0, help="Forward passes side by side in process: each lane takes the next batch, runs its forward pass with --threads torch threads and then summarizes and stores it, batches consumed in corpus order, so the run equals a one-lane run (0 = one lane per --threads threads of the cores torch uses: one per core by default, which beat one forward pass on every core by 1.05-1.11x for the bare MiniLM forward pass and recorded summaries-only 1.10x faster than one lane on the 2-core development machine, benchmarks/RESULTS.md). Each lane holds one batch's activations in memory."),
    sample_rate: float = typer.Option(1.0, callback=open_interval(0.0, 1.0), help="Store activations of this deterministic fraction of samples, in (0, 1] (summaries see all; the same samples with --workers). Needs --keep both or activations."),
    workers: int = typer.Option(0, min=0, help="Shard the corpus over a local Dask cluster with this many workers (0 = in process). Each worker records whole batches of the corpus and, with --keep both/activations, writes its rows straight into the run; the result is one run equal to a single-process record (samples, activations, summaries). An interrupted run starts over when re-run (a run partly recorded in one process is resumed without --workers). Not with --pack."),
    scheduler: str = typer.Option("", help="Address of a running Dask scheduler to shard the corpus over (as --workers). With --keep both/activations every worker writes into --out: it must be on a filesystem all workers share, at the same path (checked before recording)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run with a different configuration."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the run info as JSON."),
    labels: Path = typer.Option(None, "--labels", help="Per-document labels file (.jsonl objects, .csv with a header, or .txt named by its field), one line per document: per-label summaries for `neuronscope locate`."),
) -> None:
    """Record the neurons of a model over a corpus into a resumable run."""
    from neuronscope.recording import check_record_options
    from neuronscope.recording import record as record_run
    from neuronscope.sources.text import TextSource, check_batching, load_corpus
    from neuronscope.specs import load_model

    check_record_options(keep, dtype, sample_rate)  # option, path and corpus errors come
    check_batching("pack" if pack is not None else batching, max_tokens, max_batch_tokens or None, window, pack,
                   batch_size)
    if pack is not None and (workers or scheduler):
        from neuronscope.errors import NeuronscopeError

        raise NeuronscopeError("record --workers shards documents and --pack splits them across contexts; "
                               "drop --workers or drop --pack")
    if (workers or scheduler) and keep == "summaries" and sample_rate != 1.0:
        from neuronscope.errors import NeuronscopeError

        raise NeuronscopeError("record --workers stores no activations to subsample; drop --sample-rate or drop --workers")
    output_dir(out, "--out")  # before the seconds of loading a model
    docs = load_corpus(corpus)
    if labels is not None:
        from neuronscope.sources.labels import read_doc_labels

        read_doc_labels(labels)  # a bad labels file fails before the model loads
    m, tok = load_model(model)
    source = TextSource(docs, tok, batch_size=batch_size, max_tokens=max_tokens,
                        batching="pack" if pack is not None else batching, max_batch_tokens=max_batch_tokens or None,
                        window=window, pack=pack)
    if labels is not None:
        from neuronscope.sources.labels import LabeledSource

        source = LabeledSource(source, labels)
    if workers or scheduler:
        from neuronscope.distributed import record_distributed

        run = record_distributed(
            model, source, sites, out=out, workers=workers or None, scheduler=scheduler or None,
            keep=keep, dtype=dtype, sample_rate=sample_rate,
            overwrite=overwrite, progress=progress and not json_out,
        )
    else:
        run = record_run(
            m, source, sites, out=out, keep=keep, dtype=dtype, sample_rate=sample_rate,
            overwrite=overwrite, progress=progress and not json_out, threads=threads or None, lanes=lanes or None,
        )
    if json_out:
        emit_json(run.info())
    else:
        print_info(run.info())


def info(
    run: Path = typer.Argument(..., help="A run directory written by `neuronscope record`."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a run's sites, units, samples, status and configuration. Runs the cheap checks
    of `verify` (the commit record against the arrays): a damaged run is reported, exit 2."""
    from neuronscope.store import open_run

    i = open_run(run).info()
    if json_out:
        emit_json(i)
    else:
        print_info(i)
    if i["problems"]:
        for p in i["problems"]:
            typer.echo(f"damaged: {p}", err=True)
        typer.echo(f"run `neuronscope verify {run}` for a full report", err=True)
        raise typer.Exit(2)


def verify(
    run: Path = typer.Argument(..., help="A run directory written by `neuronscope record`."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a run for damage: the commit record against the arrays, every chunk the
    committed counters imply present and passing its crc32c checksum. Exit 0 when healthy,
    2 when damaged (one line per problem)."""
    from neuronscope.store import verify_run

    report = verify_run(run)
    if json_out:
        emit_json(report)
    elif report["healthy"]:
        typer.echo(f"{run}: healthy (status {report['status']}, {report['chunks_checked']} chunks checked)")
    else:
        for p in report["problems"]:
            typer.echo(f"{run}: {p}")
    if not report["healthy"]:
        raise typer.Exit(2)


def summarize(
    run: Path = typer.Argument(..., help="A run with stored activations."),
    sites: str = typer.Option("", help="Site glob(s) to summarize (default: all)."),
    workers: int = typer.Option(2, min=1, help="Workers of the local Dask cluster."),
    scheduler: str = typer.Option("", help="Address of a running Dask scheduler (instead of a local cluster)."),
    chunk_rows: int = typer.Option(0, min=0, help="Rows per task (0 = an even share per worker, at most 1,048,576; chunks never split a document). A task reads its rows in steps into one buffer, so its memory does not grow with this."),
    json_out: bool = typer.Option(False, "--json", help="Print the run info as JSON."),
) -> None:
    """Compute the streaming summaries of a stored run chunk by chunk with Dask and store them
    in the run (the same summaries `record` computes in its one pass)."""
    from neuronscope.distributed import summarize_run
    from neuronscope.store import open_run

    r = writable_run(run, "RUN")  # the summaries are written into the run: check before computing
    result = summarize_run(r, sites or None, workers=workers, scheduler=scheduler or None, chunk_rows=chunk_rows or None)
    r.write_summaries(result)
    if json_out:
        emit_json(open_run(run).info())
    else:
        console.print(f"summaries of {len(result)} site(s) written to {run}")


def demo(
    out: Path = typer.Option(Path("demo_output"), help="Directory for the demo's run, tables and atlas."),
    docs: int = typer.Option(0, min=0, help="Use only the first N documents of the bundled corpus (0 = all 2,852)."),
    sample_rate: float = typer.Option(0.05, callback=open_interval(0.0, 1.0), help="Fraction of samples whose activations are stored, in (0, 1] (summaries see all)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """The main job on the embedded default: record MiniLM's 6 FFN sites over the bundled
    multilingual corpus with summaries, characterize every neuron, and build the atlas."""
    from neuronscope.analyses.characterize import characterize as characterize_run
    from neuronscope.analyses.characterize import site_summary
    from neuronscope.analyses.compare import compare_all
    from neuronscope.analyses.extras import save_comparison
    from neuronscope.atlas.build import build_atlas
    from neuronscope.recording import record as record_run
    from neuronscope.sources.models import BERT_FFN_SITES
    from neuronscope.sources.text import TextSource, load_corpus
    from neuronscope.specs import load_model

    output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model("minilm")
    corpus = load_corpus("default")
    if docs:
        corpus = corpus.head(docs)
    source = TextSource(corpus, tok, batch_size=32, max_tokens=128)
    run = record_run(model, source, BERT_FFN_SITES, out=out / "minilm.zarr", keep="both",
                     dtype="float16", sample_rate=sample_rate, progress=not json_out)
    # layer × layer linear CKA on the stored activations, kept in the run for the atlas
    cka = compare_all({s.split(".")[2]: run.population(s) for s in run.sites}, "cka", progress=not json_out)
    save_comparison(run, cka, "cka", title="linear CKA between MiniLM's FFN layers (stored tokens)",
                    overwrite=True)
    table = characterize_run(run)
    table.to_parquet(out / "neurons.parquet")
    sites_df = site_summary(run)
    sites_df.to_csv(out / "sites.csv", index=False)
    index = build_atlas(run, out / "atlas", progress=not json_out)
    if json_out:
        emit_json({"run": run.path, "neurons": out / "neurons.parquet", "sites": sites_df.to_dict("records"),
                   "atlas": index.resolve()})
        return
    print_info(run.info())
    console.print(site_table(sites_df, table))
    console.print(f"per-neuron table: {out / 'neurons.parquet'} ({len(table)} neurons)")
    console.print(f"atlas: [bold]{index.resolve()}[/bold]")
