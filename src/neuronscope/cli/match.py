"""``neuronscope match`` and ``neuronscope sysid``: models side by side.

Thin over :func:`neuronscope.specs.load_zoo` (model names → models and the source they
share), :func:`neuronscope.lockstep.record_lockstep`,
:func:`neuronscope.analyses.match.match_report` and :mod:`neuronscope.analyses.sysid`.

Model names: ``minilm`` (the packaged all-MiniLM-L6-v2), ``e5-small``, ``tinylm:SEED``, a
local Hugging Face model directory (text models run on ``--corpus``, each through its own
tokenizer; ``--align`` says how their samples line up), or ``digits-mlp:SEED`` / ``digits-cnn:SEED``
(small networks trained on scikit-learn's digits from that seed in a few seconds; add
``:untrained`` for the untrained network) which run on the 1,797 digit images. Models may
be listed after one ``--models`` separated by spaces (``--models A B C``), by repeating the
flag, or comma-separated.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from neuronscope.cli.checks import PLOT_SUFFIXES, open_interval, output_dir, output_file
from neuronscope.cli.output import console, emit_json, frame_table
from neuronscope.errors import NeuronscopeError

_MODELS_HELP = (
    "Models: 'minilm', 'e5-small', 'tinylm:SEED', a local Hugging Face model directory, or 'digits-mlp:SEED' / "
    "'digits-cnn:SEED' (append ':untrained' for the untrained net). Space-separate after one "
    "--models, repeat the flag, or comma-separate."
)
_MORE_HELP = "More models (the space-separated continuation of --models)."


def _model_names(models: list[str] | None, more: list[str] | None) -> list[str]:
    """The names given after ``--models`` (repeated, space- or comma-separated), in order."""
    return [n.strip() for m in [*(models or []), *(more or [])] for n in m.split(",") if n.strip()]


def _check_corpus(names: list[str], corpus: str) -> None:
    """Read a text corpus before any model loads (digits models ignore it)."""
    from neuronscope.specs import is_digits_name

    if corpus != "default" and not all(is_digits_name(n) for n in names):
        from neuronscope.sources.text import load_corpus

        load_corpus(corpus)


def match(
    models: list[str] = typer.Option(..., "--models", help=_MODELS_HELP),
    more: list[str] = typer.Argument(None, help=_MORE_HELP, show_default=False, metavar="MODEL"),
    corpus: str = typer.Option("default", help="Text corpus (.txt / .jsonl, or 'default' for the bundled one); digits models ignore it."),
    sites: str = typer.Option("", help="Module glob(s), comma-separated (default: the FFN sites of text models, 'act*' for digits nets)."),
    threshold: float = typer.Option(0.5, min=-1.0, max=1.0, help="A neuron is universal when its maximum correlation with every other model exceeds this (in [-1, 1])."),
    same_site: bool = typer.Option(False, "--same-site", help="Search a neuron's partners only in the same-named site of the other models (default: all recorded sites)."),
    within: bool = typer.Option(True, help="Also accumulate within-model Gram matrices (needed for the rotation baseline)."),
    untrained_baseline: bool = typer.Option(False, "--untrained-baseline", help="Digits models only: also record the untrained nets of the same seeds and report their universal fraction as a baseline."),
    max_samples: int = typer.Option(0, min=0, help="Stop after this many samples (tokens or images; 0 = the whole corpus)."),
    batch_size: int = typer.Option(32, min=1, help="Documents (or images) per forward pass."),
    max_tokens: int = typer.Option(128, min=1, help="Truncate each document to this many tokens."),
    seed: int = typer.Option(0, min=0, help="Seed of the random rotations of the baseline."),
    out: Path = typer.Option(None, help="Directory to write lockstep.npz (the cross-products), neurons.csv (per-neuron universality) and universal.csv."),
    align: str = typer.Option("token", "--align", help="What a sample is when text models tokenize differently: token (identical tokenizations only), word, char-span (tokens pooled per aligned span) or doc (pooled per document)."),
    pool: str = typer.Option("mean", "--pool", help="Pooling for --align word/char-span/doc: mean, max or last (token)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Record models in lockstep (each text model through its own tokenizer, samples aligned
    by --align); report cross-model correlations, universal neurons against chance (rotated
    bases with a baseline-calibrated threshold / untrained nets), one-to-one matching and
    Rosetta neurons."""
    import pandas as pd

    from neuronscope.analyses.match import match_report
    from neuronscope.lockstep import record_lockstep
    from neuronscope.sources.align import check_align
    from neuronscope.specs import is_digits_name, load_zoo

    names = _model_names(models, more)
    if len(names) < 2:
        raise NeuronscopeError("match needs at least two models; pass --models A B [C ...]")
    if untrained_baseline and not all(is_digits_name(n) and not n.endswith(":untrained") for n in names):
        raise NeuronscopeError("--untrained-baseline needs trained digits models (digits-mlp:SEED ...)")
    check_align(align, pool)
    if out is not None:
        output_dir(out, "--out")  # before recording, not after
    _check_corpus(names, corpus)
    zoo = load_zoo(names, corpus, batch_size, max_tokens)
    glob = sites or zoo.sites
    kw = dict(within=within, max_samples=max_samples or None, conv=zoo.conv, progress=not json_out)
    lock = record_lockstep(zoo.models, zoo.sources, glob, align=align, pool=pool, **kw)
    untrained = None
    if untrained_baseline:
        un = load_zoo([f"{n}:untrained" for n in names], corpus, batch_size, max_tokens)
        untrained = record_lockstep(dict(zip(names, un.models.values(), strict=True)), zoo.source, glob, **kw)
    report = match_report(lock, threshold, same_site, untrained, seed)
    doc = report.to_dict()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        lock.save(out / "lockstep.npz")
        report.neurons.to_csv(out / "neurons.csv", index=False)
        report.fractions.to_csv(out / "universal.csv", index=False)
        doc["out"] = str(out)
    if json_out:
        emit_json(doc)
        return
    fractions = report.fractions
    unit = {"token": "samples", "doc": "documents", "word": "words", "char-span": "aligned spans"}[align]
    console.print(f"[bold]{len(names)} models[/bold] in lockstep over {lock.n_samples} {unit}"
                  + (f" ({pool}-pooled tokens)" if align != "token" else ""))
    console.print(frame_table("max correlation with the other model", pd.DataFrame(report.correlation)))
    shown = [c for c in ("model", "site", "units", "dead", "universal_frac", "baseline_frac",
                         "calibrated_threshold", "calibrated_frac", "baseline_calibrated_frac",
                         "untrained_frac", "excess") if c in fractions]
    title = f"universal neurons (max corr > {threshold} in every other model"
    if "calibrated_threshold" in fractions:
        title += f"; calibrated: > the rotated baseline's {100 * report.quantile:g}th percentile per site"
    console.print(frame_table(title + ")", fractions[shown]))
    if report.matching:
        console.print(frame_table("one-to-one matching (same site)", pd.DataFrame(report.matching)))
    console.print(f"Rosetta neurons (pairwise best buddies in all models, r > {threshold}): "
                  f"{report.rosetta_groups} groups")
    for g in report.rosetta_top[:10]:
        console.print(f"  r̄={g['mean_corr']:.3f}  " + "  ".join(g["neurons"]))


def sysid(
    models: list[str] = typer.Option(..., "--models", help=_MODELS_HELP + " With two or more, the tRSA design: the brain is --truth-site of the first model, the candidates are the sites of the other models (other seeds)."),
    more: list[str] = typer.Argument(None, help=_MORE_HELP, show_default=False, metavar="MODEL"),
    truth_site: str = typer.Option("", help="The site that generates the simulated brain (default: the first recorded site)."),
    corpus: str = typer.Option("default", help="Text corpus for text models ('default' = the bundled one); its tokens are the stimuli."),
    sites: str = typer.Option("", help="Module glob(s) of the candidate sites (default: FFN sites of text models, 'act*,out' for digits nets)."),
    metrics: str = typer.Option("linear_cka,rsa,trsa,encoding,procrustes", help="Comma-separated metrics from: linear_cka, rsa, trsa, encoding, procrustes."),
    snr: list[float] = typer.Option([1.0], callback=open_interval(0.0, float("inf"), hi_open=True), help="Signal-to-noise ratio (signal variance / noise variance per neuron, > 0); repeat for a sweep."),
    n_stimuli: list[int] = typer.Option([100], min=3, help="Stimuli per simulated recording (at least 3); repeat for a sweep."),
    n_neurons: int = typer.Option(50, min=0, help="Recorded neurons subsampled from the true site (0 = all)."),
    mixing: bool = typer.Option(False, "--mixing", help="Randomly mix the recorded neurons linearly (as voxels or electrodes mix cells)."),
    draws: int = typer.Option(20, min=1, help="Simulated recordings per condition."),
    pool: int = typer.Option(2000, min=3, help="Stimulus pool: the first N samples (tokens or images) whose activations are held in memory."),
    seed: int = typer.Option(0, min=0, help="Seed of the draws."),
    batch_size: int = typer.Option(32, min=1, help="Documents (or images) per forward pass."),
    max_tokens: int = typer.Option(64, min=1, help="Truncate each document to this many tokens."),
    plot: Path = typer.Option(None, help="Write the recovery plot here (.png, .pdf or .svg)."),
    json_out: bool = typer.Option(False, "--json", help="Print the recovery table as JSON."),
) -> None:
    """System identification: would each comparison metric pick the true model of a
    simulated brain (subsampled, noisy, optionally mixed neurons, few stimuli)?"""
    from neuronscope.analyses.sysid import (
        collect_activations,
        default_metrics,
        layer_design,
        plot_sysid,
        sysid_sweep,
    )
    from neuronscope.specs import load_zoo

    names = _model_names(models, more)
    if not names:
        raise NeuronscopeError("sysid needs at least one model; pass --models A [B ...]")
    all_metrics = default_metrics()
    chosen = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in all_metrics]
    if unknown or not chosen:  # before loading any model
        raise NeuronscopeError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(all_metrics)}")
    if plot is not None:
        output_file(plot, "--plot", PLOT_SUFFIXES)
    _check_corpus(names, corpus)
    zoo = load_zoo(names, corpus, batch_size, max_tokens)
    if zoo.kind == "text":  # the stimuli are tokens: every model must tokenize alike (before any forward pass)
        from neuronscope.lockstep import check_lockstep_sources

        check_lockstep_sources(zoo.models, zoo.sources, "token")
    glob = sites or ("act*,out" if zoo.kind == "digits" else zoo.sites)
    acts = {n: collect_activations(m, zoo.sources[n], glob if isinstance(glob, str) else glob[n], pool,
                                   conv=zoo.conv) for n, m in zoo.models.items()}
    first = names[0]
    truth = truth_site or next(iter(acts[first]))
    if truth not in acts[first]:
        raise NeuronscopeError(f"--truth-site {truth!r} is not among the sites: {', '.join(acts[first])}")
    if len(names) >= 2:
        cands, brain, key = layer_design(acts, first, truth)
    else:
        cands, brain, key = dict(acts[first]), None, truth
    table = sysid_sweep(
        cands, key, snrs=snr, n_stimuli=n_stimuli, metrics={m: all_metrics[m] for m in chosen},
        n_neurons=n_neurons or None, mixing=mixing, draws=draws, seed=seed, brain=brain,
    )
    if plot is not None:
        plot_sysid(table, path=str(plot))
    if json_out:
        emit_json({"truth": key, "candidates": list(cands), "models": names,
                   "recovery": json.loads(table.to_json(orient="records")),
                   "plot": str(plot) if plot else None})
        return
    shown = ["metric", "snr", "n_stimuli", "recovery", "mean_rank", "margin", "chance"]
    console.print(frame_table(f"sysid: truth {first}/{key}; candidates {', '.join(cands)}; {draws} draws, "
                              f"{n_neurons or 'all'} neurons{', mixed' if mixing else ''}", table[shown]))
    if plot is not None:
        typer.echo(f"plot: {plot}")
