"""``neuronscope match`` and ``neuronscope sysid``: typer-style command functions.

Registered by ``neuronscope.cli`` (``app.command("match")(match_command)``,
``app.command("sysid")(sysid_command)``); thin over :mod:`neuronscope.lockstep`,
:mod:`neuronscope.analyses.match` and :mod:`neuronscope.analyses.sysid`.

Model names: ``minilm`` (the packaged all-MiniLM-L6-v2), a local Hugging Face model
directory (text models run on ``--corpus``), or ``digits-mlp:SEED`` / ``digits-cnn:SEED``
(small networks trained on scikit-learn's digits from that seed in a few seconds; add
``:untrained`` for the untrained network) which run on the 1,797 digit images. Models may
be listed after one ``--models`` separated by spaces (``--models A B C``), by repeating the
flag, or comma-separated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from neuronscope.errors import NeuronscopeError

_MODELS_HELP = (
    "Models: 'minilm', a local Hugging Face model directory, or 'digits-mlp:SEED' / "
    "'digits-cnn:SEED' (append ':untrained' for the untrained net). Space-separate after one "
    "--models, repeat the flag, or comma-separate."
)
_MORE_HELP = "More models (the space-separated continuation of --models)."


def _model_names(models: list[str] | None, more: list[str] | None) -> list[str]:
    names = [n.strip() for m in [*(models or []), *(more or [])] for n in m.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise NeuronscopeError("a model is listed twice; give each model once")
    return names


def _load(names: list[str], corpus: str, batch_size: int, max_tokens: int) -> tuple[dict[str, Any], Any, str, str]:
    """({name: module}, source, default site glob, conv mode) for models that share one kind
    of input (digits CNN channels are mean-pooled over space so every site gives one sample
    per image)."""
    from neuronscope.sources.tensors import TensorSource
    from neuronscope.testing.digits import digits_data, digits_model

    digits = [n for n in names if n.startswith("digits-")]
    if digits and len(digits) != len(names):
        raise NeuronscopeError("digits models and text models see different inputs; list only one kind")
    if digits:
        archs = {n.split(":")[0] for n in digits}
        if len(archs) > 1:
            raise NeuronscopeError(
                "digits-mlp and digits-cnn take differently shaped inputs; list one architecture"
            )
        arch = archs.pop().removeprefix("digits-")
        x, y = digits_data("all", arch)
        source = TensorSource(x, batch_size=batch_size, labels={"digit": y.tolist()}, name="sklearn digits")
        return {n: digits_model(n) for n in names}, source, "act*", "mean" if arch == "cnn" else "positions"
    from neuronscope.sources.models import BERT_FFN_SITES, load_model
    from neuronscope.sources.text import TextSource

    loaded = {n: load_model(n) for n in names}
    tok = loaded[names[0]][1]
    source = TextSource(corpus, tok, batch_size=batch_size, max_tokens=max_tokens)
    return {n: m for n, (m, _) in loaded.items()}, source, BERT_FFN_SITES, "positions"


def _emit(obj: Any) -> None:
    from neuronscope.cli import emit_json

    emit_json(obj)


def _table(title: str, df: Any, floats: str = "{:.3f}") -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c), justify="left" if df[c].dtype == object else "right")
    for _, row in df.iterrows():
        t.add_row(*[floats.format(v) if isinstance(v, float) else str(v) for v in row])
    Console().print(t)


def match_summary(lock: Any, threshold: float, same_site: bool, untrained: Any = None, seed: int = 0) -> dict[str, Any]:
    """Correlation summary, universal fractions, one-to-one matching and Rosetta groups of a
    lockstep recording, as JSON-able records (what ``neuronscope match`` prints)."""
    import pandas as pd

    from neuronscope.analyses.match import (
        match_one_to_one,
        rosetta_neurons,
        universal_fractions,
        universal_neurons,
    )

    neurons = universal_neurons(lock, threshold=threshold, same_site=same_site, baseline=lock.within, seed=seed)
    base = None
    if untrained is not None:
        base = universal_neurons(untrained, threshold=threshold, same_site=same_site, baseline=False)
    fractions = universal_fractions(neurons, untrained=base)
    corr_rows, match_rows = [], []
    for i, a in enumerate(lock.models):
        for b in lock.models[i + 1 :]:
            for sa in lock.sites[a]:
                col = f"corr[{b}]"
                vals = neurons.loc[(neurons["model"] == a) & (neurons["site"] == sa), col]
                corr_rows.append({"model_a": a, "model_b": b, "site_a": sa,
                                  "mean_max_corr": float(vals.mean()), "median_max_corr": float(vals.median())})
                if sa in lock.sites[b]:
                    g = _glob(sa)
                    m = match_one_to_one(lock.cross(a, b, g, g))
                    match_rows.append({
                        "model_a": a, "model_b": b, "site": sa, "pairs": len(m),
                        "mean_matched_corr": float(np.nanmean(m["corr"])),
                        "matched_above_threshold": int((m["corr"] > threshold).sum()),
                        "same_as_best": float((m["unit_b"] == m["best_b"]).mean()),
                    })
    ros = rosetta_neurons(lock, min_corr=threshold)
    top = ros[ros["group"] < 20]  # group ids are ranked by mean correlation
    groups = [{"group": int(gid), "mean_corr": float(g["mean_corr"].iloc[0]),
               "neurons": [f"{m}/{s}:{u}" for m, s, u in zip(g["model"], g["site"], g["unit"], strict=True)]}
              for gid, g in top.groupby("group", sort=True)]
    return {
        "models": lock.models,
        "samples": lock.n_samples,
        "sites": lock.sites,
        "threshold": threshold,
        "correlation": pd.DataFrame(corr_rows).to_dict("records"),
        "universal": fractions.to_dict("records"),
        "matching": match_rows,
        "rosetta": {"groups": int(ros["group"].nunique()), "top": groups},
        "_neurons": neurons,
        "_fractions": fractions,
    }


def _glob(site: str) -> str:
    from neuronscope.analyses.match import _glob as g

    return g(site)


def match_command(
    models: list[str] = typer.Option(..., "--models", help=_MODELS_HELP),
    more: list[str] = typer.Argument(None, help=_MORE_HELP, show_default=False, metavar="MODEL"),
    corpus: str = typer.Option("default", help="Text corpus (.txt / .jsonl, or 'default' for the bundled one); digits models ignore it."),
    sites: str = typer.Option("", help="Module glob(s), comma-separated (default: the FFN sites of text models, 'act*' for digits nets)."),
    threshold: float = typer.Option(0.5, help="A neuron is universal when its maximum correlation with every other model exceeds this."),
    same_site: bool = typer.Option(False, "--same-site", help="Search a neuron's partners only in the same-named site of the other models (default: all recorded sites)."),
    within: bool = typer.Option(True, help="Also accumulate within-model Gram matrices (needed for the rotation baseline)."),
    untrained_baseline: bool = typer.Option(False, "--untrained-baseline", help="Digits models only: also record the untrained nets of the same seeds and report their universal fraction as a baseline."),
    max_samples: int = typer.Option(0, help="Stop after this many samples (tokens or images; 0 = the whole corpus)."),
    batch_size: int = typer.Option(32, help="Documents (or images) per forward pass."),
    max_tokens: int = typer.Option(128, help="Truncate each document to this many tokens."),
    seed: int = typer.Option(0, help="Seed of the random rotations of the baseline."),
    out: Path = typer.Option(None, help="Directory to write lockstep.npz (the cross-products), neurons.csv (per-neuron universality) and universal.csv."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Record models in lockstep; report cross-model correlations, universal neurons against
    chance (rotated bases / untrained nets), one-to-one matching and Rosetta neurons."""
    from neuronscope.lockstep import record_lockstep

    names = _model_names(models, more)
    if len(names) < 2:
        raise NeuronscopeError("match needs at least two models; pass --models A B [C ...]")
    nets, source, default_sites, conv = _load(names, corpus, batch_size, max_tokens)
    glob = sites or default_sites
    kw = dict(within=within, max_samples=max_samples or None, conv=conv, progress=not json_out)
    lock = record_lockstep(nets, source, glob, **kw)
    untrained = None
    if untrained_baseline:
        if not all(n.startswith("digits-") and not n.endswith(":untrained") for n in names):
            raise NeuronscopeError("--untrained-baseline needs trained digits models (digits-mlp:SEED ...)")
        un_names = [f"{n}:untrained" for n in names]
        un_nets = _load(un_names, corpus, batch_size, max_tokens)[0]
        untrained = record_lockstep(dict(zip(names, un_nets.values(), strict=True)), source, glob, **kw)
    res = match_summary(lock, threshold, same_site, untrained, seed)
    neurons, fractions = res.pop("_neurons"), res.pop("_fractions")
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NeuronscopeError(f"cannot create {out} ({e.strerror}); choose a writable --out") from None
        lock.save(out / "lockstep.npz")
        neurons.to_csv(out / "neurons.csv", index=False)
        fractions.to_csv(out / "universal.csv", index=False)
        res["out"] = str(out)
    if json_out:
        _emit(json.loads(json.dumps(res, default=_json_default)))
        return
    import pandas as pd
    from rich.console import Console

    Console().print(f"[bold]{len(names)} models[/bold] in lockstep over {lock.n_samples} samples")
    _table("max correlation with the other model", pd.DataFrame(res["correlation"]))
    shown = [c for c in ("model", "site", "units", "dead", "universal_frac", "baseline_frac",
                         "untrained_frac", "excess") if c in fractions]
    _table(f"universal neurons (max corr > {threshold} in every other model)", fractions[shown])
    if res["matching"]:
        _table("one-to-one matching (same site)", pd.DataFrame(res["matching"]))
    Console().print(f"Rosetta neurons (pairwise best buddies in all models, r > {threshold}): "
                    f"{res['rosetta']['groups']} groups")
    for g in res["rosetta"]["top"][:10]:
        Console().print(f"  r̄={g['mean_corr']:.3f}  " + "  ".join(g["neurons"]))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sysid_command(
    models: list[str] = typer.Option(..., "--models", help=_MODELS_HELP + " With two or more, the tRSA design: the brain is --truth-site of the first model, the candidates are the sites of the other models (other seeds)."),
    more: list[str] = typer.Argument(None, help=_MORE_HELP, show_default=False, metavar="MODEL"),
    truth_site: str = typer.Option("", help="The site that generates the simulated brain (default: the first recorded site)."),
    corpus: str = typer.Option("default", help="Text corpus for text models ('default' = the bundled one); its tokens are the stimuli."),
    sites: str = typer.Option("", help="Module glob(s) of the candidate sites (default: FFN sites of text models, 'act*,out' for digits nets)."),
    metrics: str = typer.Option("linear_cka,rsa,trsa,encoding,procrustes", help="Comma-separated metrics from: linear_cka, rsa, trsa, encoding, procrustes."),
    snr: list[float] = typer.Option([1.0], help="Signal-to-noise ratio (signal variance / noise variance per neuron); repeat for a sweep."),
    n_stimuli: list[int] = typer.Option([100], help="Stimuli per simulated recording; repeat for a sweep."),
    n_neurons: int = typer.Option(50, help="Recorded neurons subsampled from the true site (0 = all)."),
    mixing: bool = typer.Option(False, "--mixing", help="Randomly mix the recorded neurons linearly (as voxels or electrodes mix cells)."),
    draws: int = typer.Option(20, help="Simulated recordings per condition."),
    pool: int = typer.Option(2000, help="Stimulus pool: the first N samples (tokens or images) whose activations are held in memory."),
    seed: int = typer.Option(0, help="Seed of the draws."),
    batch_size: int = typer.Option(32, help="Documents (or images) per forward pass."),
    max_tokens: int = typer.Option(64, help="Truncate each document to this many tokens."),
    plot: Path = typer.Option(None, help="Write the recovery plot (PNG) here."),
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

    names = _model_names(models, more)
    if not names:
        raise NeuronscopeError("sysid needs at least one model; pass --models A [B ...]")
    nets, source, default_sites, conv = _load(names, corpus, batch_size, max_tokens)
    if names[0].startswith("digits-") and not sites:
        default_sites = "act*,out"
    glob = sites or default_sites
    acts = {n: collect_activations(m, source, glob, pool, conv=conv) for n, m in nets.items()}
    first = names[0]
    truth = truth_site or next(iter(acts[first]))
    if truth not in acts[first]:
        raise NeuronscopeError(f"--truth-site {truth!r} is not among the sites: {', '.join(acts[first])}")
    if len(names) >= 2:
        cands, brain, key = layer_design(acts, first, truth)
    else:
        cands, brain, key = dict(acts[first]), None, truth
    all_metrics = default_metrics()
    chosen = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in all_metrics]
    if unknown or not chosen:
        raise NeuronscopeError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(all_metrics)}")
    table = sysid_sweep(
        cands, key, snrs=snr, n_stimuli=n_stimuli, metrics={m: all_metrics[m] for m in chosen},
        n_neurons=n_neurons or None, mixing=mixing, draws=draws, seed=seed, brain=brain,
    )
    if plot is not None:
        plot_sysid(table, path=str(plot))
    if json_out:
        _emit({"truth": key, "candidates": list(cands), "models": names,
               "recovery": json.loads(table.to_json(orient="records")),
               "plot": str(plot) if plot else None})
        return
    shown = ["metric", "snr", "n_stimuli", "recovery", "mean_rank", "margin", "chance"]
    _table(f"sysid: truth {first}/{key}; candidates {', '.join(cands)}; {draws} draws, "
           f"{n_neurons or 'all'} neurons{', mixed' if mixing else ''}", table[shown])
    if plot is not None:
        typer.echo(f"plot: {plot}")
