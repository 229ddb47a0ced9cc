"""``neuronscope modules RUN`` and ``neuronscope moefy``: functional modules and MoEfication.

Thin over :mod:`neuronscope.analyses.modules` (co-firing graphs, Leiden communities, the
dynamic functional connectome) and :mod:`neuronscope.analyses.sparsity` (experts, routers,
the sparse FFN and its measured speed-up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from neuronscope.cli.output import console, emit_json
from neuronscope.errors import NeuronscopeError


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise NeuronscopeError(f"{what} must be comma-separated integers, not {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise NeuronscopeError(f"{what} must list positive integers, not {text!r}")
    return out


def modules(
    run: Path = typer.Argument(..., help="Run directory with stored activations (record --keep both)."),
    site: str = typer.Option(None, "--site", help="Sites (name or glob) to find modules in (default: every site).",
                             show_default=False),
    threshold: float = typer.Option(0.0, help="A neuron fires when a > THRESHOLD (|a| > THRESHOLD with --absolute)."),
    absolute: bool = typer.Option(False, "--absolute", help="Fire on |a| > THRESHOLD (magnitude, ReLU² paper)."),
    normalize: str = typer.Option("phi", help="Edge weights from co-firing counts: phi, pmi, jaccard or probability."),
    resolution: float = typer.Option(1.0, help="Leiden resolution (higher: more, smaller modules)."),
    seeds: int = typer.Option(5, help="Leiden seeds; the best partition is kept, their agreement reported (ARI)."),
    ntf_rank: int = typer.Option(0, "--ntf-rank", help="Also factorise the dynamic functional connectome with this many "
                                 "NTF components (0: skip)."),
    window: str = typer.Option("doc", help="NTF windows: doc (document blocks), pos (position blocks), time or sample."),
    windows: int = typer.Option(12, help="Number of NTF windows."),
    ntf_units: int = typer.Option(96, "--ntf-units", help="NTF uses this many most frequently firing neurons per site."),
    snmf: int = typer.Option(0, "--snmf", help="Also fit this many Semi-NMF features per site (0: skip)."),
    snmf_keep: float = typer.Option(0.05, "--snmf-keep", help="Semi-NMF: share of neurons each feature keeps."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the modules (and NTF components) in the run "
                              "(extras/modules-SITE, extras/connectome-SITE) for the atlas."),
    members: int = typer.Option(12, help="List up to this many member units per module."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Functional modules of each site: streamed co-firing counts → a weighted co-activation
    graph → Leiden communities, with stability across seeds and corpus halves (ARI); with
    --ntf-rank, the dynamic functional connectome (NTF components and their communities); with
    --snmf, Semi-NMF features and their top examples."""
    from neuronscope.analyses.modules import (
        dynamic_connectome,
        find_modules,
        save_modules,
        semi_nmf,
    )
    from neuronscope.store import open_run

    if not Path(run).exists():
        raise NeuronscopeError(f"run {run} does not exist; pass the directory given to record --out")
    if seeds < 1:
        raise NeuronscopeError("--seeds must be at least 1")
    if not resolution > 0:
        raise NeuronscopeError(f"--resolution must be a positive number (the Leiden resolution), not {resolution}")
    if snmf < 0 or not 0 < snmf_keep <= 1:
        raise NeuronscopeError("--snmf must be >= 0 and --snmf-keep in (0, 1]")
    if ntf_rank < 0 or windows < 1 or ntf_units < 2:
        raise NeuronscopeError("--ntf-rank must be >= 0, --windows >= 1 and --ntf-units >= 2")
    r = open_run(run)
    found = find_modules(r, site, threshold=threshold, absolute=absolute, normalize=normalize,
                         resolution=resolution, seeds=seeds)
    out: dict[str, Any] = {"run": str(run), "sites": {}}
    for name, mods in found.items():
        entry: dict[str, Any] = mods.to_dict(members=members)
        if save:
            entry["saved"] = save_modules(r, mods)
        if ntf_rank:
            con = dynamic_connectome(r, name, rank=ntf_rank, window=window, n_windows=windows,
                                     max_units=ntf_units, threshold=threshold)
            entry["connectome"] = con.to_dict()
            if save:
                entry["connectome"]["saved"] = con.save(r, f"connectome-{name}")
        if snmf:
            fit = semi_nmf(r, name, k=snmf, keep=snmf_keep)
            entry["snmf"] = {"k": fit.k, "relative_error": fit.errors[-1],
                             "features": [{"top_neurons": fit.top_neurons(f, 8),
                                           "top_examples": fit.top_examples(f)[:5]} for f in range(fit.k)]}
            if save:
                entry["snmf"]["saved"] = fit.save(r, f"snmf-{name}")
        out["sites"][name] = entry
    if json_out:
        emit_json(out)
        return
    from rich.table import Table

    t = Table(title=f"functional modules ({normalize}, resolution {resolution}, fire: "
                    f"{'|a|' if absolute else 'a'} > {threshold})")
    for col in ("site", "modules", "sizes (largest)", "unassigned", "modularity", "seed ARI", "half ARI"):
        t.add_column(col, justify="right" if col != "site" else "left")
    for name, e in out["sites"].items():
        sizes = e["sizes"][:6]
        t.add_row(name, str(e["n_modules"]), ", ".join(map(str, sizes)) + (" …" if len(e["sizes"]) > 6 else ""),
                  str(e["n_unassigned"]), f"{e['modularity']:.3f}", f"{e['seed_ari']:.3f}", f"{e['half_ari']:.3f}")
    console.print(t)
    for name, e in out["sites"].items():
        con = e.get("connectome")
        if con:
            ct = Table(title=f"{name}: dynamic connectome, {con['rank']} NTF components "
                             f"(relative error {con['relative_error']:.3f})")
            for col in ("component", "weight", "peak window", "communities (sizes)"):
                ct.add_column(col)
            for i, c in enumerate(con["components"]):
                ct.add_row(str(i), f"{c['weight']:.3g}", c["peak_window"], ", ".join(map(str, c["community_sizes"][:6])))
            console.print(ct)
    if save:
        console.print(f"saved into {run} (extras); `neuronscope atlas {run}` shows them")


def moefy(
    model: str = typer.Option("minilm", "--model", help="minilm, tinylm:SEED or a local BERT-style Hugging Face directory."),
    experts: int = typer.Option(16, "--experts", help="Experts per FFN (balanced clusters of neurons)."),
    top_k: str = typer.Option("2,4,8,16", "--top-k", help="Comma-separated numbers of experts used per token."),
    site: str = typer.Option(None, "--site", help="FFN sites (default: the model's FFN neurons).", show_default=False),
    split: str = typer.Option("weights", help="How neurons become experts: weights (W_in rows), cofiring or contiguous."),
    corpus: str = typer.Option("default", help="Text corpus (.txt/.jsonl or 'default'); every 10th document is held "
                               "out (the default corpus uses the tiny LM's held-out split)."),
    tokens: int = typer.Option(8192, help="Training tokens for the routers."),
    epochs: int = typer.Option(20, help="Router training epochs."),
    heldout: int = typer.Option(200, help="Evaluate on at most this many held-out documents."),
    quality: str = typer.Option("retrieval", help="Encoders: quality kept = retrieval (recall@1 kept on held-out "
                                "prefix retrieval) or cosine (embedding cosine to the dense model)."),
    oracle: bool = typer.Option(False, "--oracle", help="Also evaluate the oracle router (true best experts; a bound)."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Measure the FFN and whole-model CPU speed-up."),
    seed: int = typer.Option(0, help="Seed of the split and the routers."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """MoEfication (Zhang et al. 2022): split every FFN into experts, train routers, and report
    quality kept against the fraction of FFN neurons used, with the measured CPU speed-ups."""
    from neuronscope.analyses.sparsity import moefy_report
    from neuronscope.specs import load_model

    ks = _ints(top_k, "--top-k")
    if experts < 1:
        raise NeuronscopeError("--experts must be a positive integer")
    if any(k > experts for k in ks):
        raise NeuronscopeError(f"--top-k values must be at most --experts ({experts})")
    if tokens < 1 or epochs < 1 or heldout < 2:
        raise NeuronscopeError("--tokens and --epochs must be positive, --heldout at least 2")
    if quality not in ("retrieval", "cosine"):
        raise NeuronscopeError(f"--quality must be retrieval or cosine, not {quality!r}")
    if split not in ("weights", "cofiring", "contiguous"):
        raise NeuronscopeError(f"--split must be weights, cofiring or contiguous, not {split!r}")
    m, tok = load_model(model)
    if tok is None:
        raise NeuronscopeError("moefy needs a text model: minilm, tinylm:SEED or a Hugging Face model directory")
    if corpus == "default":
        from neuronscope.testing.tinylm import tinylm_corpus

        train, held = tinylm_corpus("train").texts, tinylm_corpus("heldout").texts
    else:
        from neuronscope.sources.text import load_corpus

        texts = load_corpus(corpus).texts
        held = texts[::10]
        train = [t for i, t in enumerate(texts) if i % 10]
        if not train:
            raise NeuronscopeError("the corpus is too small to hold out every 10th document; give more documents")
    step = max(1, len(held) // heldout)
    rep = moefy_report(m, tok, experts, ks, train_texts=train, heldout_texts=held[::step][:heldout], site=site,
                       split=split, max_tokens=tokens, epochs=epochs, seed=seed, quality=quality,
                       routers=("learned", "oracle") if oracle else ("learned",), timing=timing)
    rep["model"] = model
    if json_out:
        emit_json(rep)
        return
    from rich.table import Table

    lm = rep["kind"] == "causal-lm"
    t = Table(title=f"MoEfication of {model}: {experts} experts per FFN ({split} split), quality = "
                    f"{rep['quality_measure']}")
    cols = ["router", "top-k", "fraction", "quality"] + (["perplexity"] if lm else ["retrieval@1", "cosine"])
    if timing:
        cols += ["FFN speed-up", "model speed-up"]
    for c in cols:
        t.add_column(c, justify="right")
    for r in rep["rows"]:
        vals = [r["router"], str(r["top_k"]), f"{r['fraction']:.3f}", f"{r['quality']:.4f}",
                *([f"{r['perplexity']:.3f}"] if lm else [f"{r['retrieval']:.3f}", f"{r['cosine']:.4f}"])]
        if timing:
            vals += [f"{r['ffn_speedup']:.2f}×" if "ffn_speedup" in r else "",
                     f"{r['model_speedup']:.2f}×" if "model_speedup" in r else ""]
        t.add_row(*vals)
    base = rep["baseline"]
    t.caption = (f"dense: perplexity {base['perplexity']:.3f}" if lm else
                 f"dense: retrieval@1 {base['retrieval']:.3f} (prefix → full text among held-out documents)")
    console.print(t)
    best = rep["best"]
    if best is None:
        console.print(f"no top-k keeps ≥ {rep['min_quality']:.0%} quality; try more experts per token")
    else:
        sp = f", FFN {best['ffn_speedup']:.2f}× and model {best['model_speedup']:.2f}× faster" if "ffn_speedup" in best else ""
        console.print(f"smallest fraction keeping ≥ {rep['min_quality']:.0%}: top-{best['top_k']} of {experts} "
                      f"({best['fraction']:.1%} of FFN neurons, quality {best['quality']:.4f}){sp}")
