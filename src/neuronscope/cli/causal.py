"""``neuronscope attribute``, ``neuronscope ablate``, ``neuronscope steer``: the causal verbs.

Thin over :mod:`neuronscope.analyses.attribute` (conductance over a corpus, batched ablation
effects), :mod:`neuronscope.analyses.steer` (CAA steering vectors and coefficient sweeps)
and :mod:`neuronscope.analyses.targets` (what "the output" is).

MODEL is ``minilm`` (the packaged all-MiniLM-L6-v2), a local Hugging Face model directory
(both run on the first ``--docs`` documents of ``--corpus``) or ``digits-mlp:SEED`` /
``digits-cnn:SEED`` (run on the first ``--docs`` digit images). Targets (``--target``):
``cosine`` (cosine of the mean-pooled sentence embedding to the unmodified model's; the
default for models without an output vocabulary), ``loss`` (next-token loss; the default for
language models), ``logit:TOKEN`` / ``logprob:TOKEN`` (a token, or ``#ID``), ``unit:INDEX``
(an output unit, for tensor models) and ``probe:FILE.npz`` (a linear probe: ``weights``,
``bias``, ``site``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from neuronscope.cli.checks import PLOT_SUFFIXES, open_interval, output_file, writable_run
from neuronscope.cli.output import console, emit_json
from neuronscope.errors import NeuronscopeError

_MODEL_HELP = ("Model: 'minilm', a local Hugging Face model directory, or 'digits-mlp:SEED' / "
               "'digits-cnn:SEED' (small nets trained on scikit-learn's digits).")
_TARGET_HELP = ("What the output is: cosine (embedding cosine to the unmodified model; default for models "
                "without a vocabulary), loss (next-token loss; default for language models), logit:TOKEN, "
                "logprob:TOKEN (TOKEN or #ID), unit:INDEX (output unit of a tensor model), probe:FILE.npz "
                "(arrays weights, bias, site).")
_CORPUS_HELP = "Text corpus: a .txt (one document per line) or .jsonl file, or 'default' for the bundled one."


def _setup(model_name: str, corpus: str, docs: int, batch_size: int, max_tokens: int) -> tuple[Any, Any, Any, str]:
    """``(model, tokenizer or None, source of the first docs items, default site glob)``."""
    from neuronscope.specs import is_digits_name, load_model

    if docs < 1 or batch_size < 1 or max_tokens < 1:
        raise NeuronscopeError("--docs, --batch-size and --max-tokens must be positive")
    if is_digits_name(model_name):
        from neuronscope.sources.tensors import TensorSource
        from neuronscope.testing.digits import digits_data

        model, _ = load_model(model_name)
        arch = model_name.split(":")[0].removeprefix("digits-")
        x, y = digits_data("all", arch)
        return model, None, TensorSource(x[:docs], batch_size=batch_size, labels={"digit": y[:docs].tolist()},
                                         name="sklearn digits"), "act*"
    from neuronscope.sources.models import BERT_FFN_SITES
    from neuronscope.sources.text import TextSource, load_corpus

    full = load_corpus(corpus)  # corpus errors before the seconds of loading a model
    model, tok = load_model(model_name)
    cut = full.head(docs)
    return model, tok, TextSource(cut, tok, batch_size=batch_size, max_tokens=max_tokens,
                                  label_categories=full.categories()), BERT_FFN_SITES


def _target(spec: str | None, model: Any, tok: Any) -> Any:
    from neuronscope.analyses.targets import has_vocab, parse_target

    if spec:
        return parse_target(spec, tok)
    if tok is None:
        raise NeuronscopeError("tensor models need --target unit:INDEX (the output unit to explain)")
    return parse_target("loss" if has_vocab(model) else "cosine", tok)


@contextmanager
def _progress(what: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``update(done)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not enabled, transient=True) as p:
        task = p.add_task(what, total=total)
        yield lambda done: p.update(task, completed=done)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise NeuronscopeError(f"{what} must be comma-separated integers, not {text!r}") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise NeuronscopeError(f"{what} must be comma-separated numbers, not {text!r}") from None


def _baseline(spec: str, tok: Any) -> Any:
    if spec in ("zeros", "pad"):
        return spec
    if spec == "mask":
        mid = getattr(tok, "mask_token_id", None)
        if mid is None:
            raise NeuronscopeError("--baseline mask needs a tokenizer with a [MASK] token; use zeros or pad")
        return int(mid)
    raise NeuronscopeError(f"--baseline must be zeros, pad or mask, not {spec!r}")


def attribute(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    site: str = typer.Option("", "--site", help="Module glob(s) whose units to attribute (default: the FFN sites of text models, 'act*' for digits nets); several sites share one integrated-gradients path."),
    target: str = typer.Option(None, "--target", help=_TARGET_HELP, show_default=False),
    corpus: str = typer.Option("default", help=_CORPUS_HELP),
    docs: int = typer.Option(64, min=1, help="Use the first N documents (or images)."),
    steps: int = typer.Option(20, min=1, help="Integration steps along the path from the baseline to the input (steps+1 forward points)."),
    method: str = typer.Option("riemann_trapezoid", help="Integration rule: riemann_trapezoid (ends included; completeness converges), riemann_left, riemann_right, riemann_middle, gausslegendre (Captum's rules)."),
    baseline: str = typer.Option("zeros", help="Path start for text models: zeros (zero token embeddings), pad ([PAD] embedding at every position) or mask ([MASK] embedding); tensor models start at zeros."),
    label: str = typer.Option(None, "--label", help="Also average per value of this document label (e.g. lang).", show_default=False),
    top: int = typer.Option(15, min=1, help="Show this many neurons per site, by mean |conductance|."),
    batch_size: int = typer.Option(8, min=1, help="Documents per batch (each runs steps+1 path points)."),
    max_tokens: int = typer.Option(64, min=1, help="Truncate each document to this many tokens."),
    internal_batch_size: int = typer.Option(0, min=0, help="Cap on examples × path points per forward pass (0 = the whole path at once)."),
    save: Path = typer.Option(None, "--save", help="Store per-neuron importance (mean and mean |conductance| per unit, per label) in this run as extras/conductance; the atlas shows mean |conductance| as the importance column of the site tables.", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Conductance of every neuron of a site for a target, over a corpus (Dhamdhere et al.
    2018): one integrated-gradients path per batch, streamed means; the top neurons per site
    and the completeness error Σ cond − (F(x) − F(baseline))."""
    from neuronscope.analyses.attribute import conductance_over, save_conductance

    if save is not None:
        writable_run(save, "--save")  # before the conductance pass, not after it
    m, tok, source, default_sites = _setup(model, corpus, docs, batch_size, max_tokens)
    tgt = _target(target, m, tok)
    base = _baseline(baseline, tok) if tok is not None else "zeros"
    with _progress("conductance", len(source), not json_out) as prog:
        summ = conductance_over(m, source, site or default_sites, tgt, baseline=base, steps=steps, method=method,
                                label=label, internal_batch_size=internal_batch_size or None, progress=prog)
    info = {"model": model, "target": tgt.describe(), "steps": steps, "method": method, "baseline": baseline,
            "documents": len(source)}
    saved = None
    if save is not None:
        saved = save_conductance(save, summ, attrs={k: v for k, v in info.items() if k != "target"}
                                 | {"target": str(tgt.describe().get("target"))})
    out: dict[str, Any] = {**info, "sites": {}}
    for name, s in summ.items():
        res = s.result()
        entry: dict[str, Any] = {
            "units": s.units,
            "top": [{"unit": u, "mean": mu, "mean_abs": ma} for u, mu, ma in s.top(top)],
            "completeness": {"mean_abs_delta": float(res["completeness_mean_abs"]),
                             "max_abs_delta": float(res["completeness_max_abs"]),
                             "mean_abs_change": float(res["change_mean_abs"]),
                             "relative": float(res["completeness_relative"])},
        }
        if s.labels:
            entry["labels"] = {lab: {"count": int(res["label_count"][i]),
                                     "top_units": [int(u) for u in (-res["label_mean_abs"][i]).argsort()[:5]]}
                               for i, lab in enumerate(s.labels) if res["label_count"][i] > 0}
        out["sites"][name] = entry
    if saved:
        out["saved"] = {"run": str(save), "extras": saved}
    if json_out:
        emit_json(out)
        return
    from rich.table import Table

    console.print(f"[bold]conductance[/bold] of {model} for {tgt.name} over {len(source)} documents "
                  f"({steps} steps, {method}, baseline {baseline})")
    for name, entry in out["sites"].items():
        t = Table(title=f"{name}: top {len(entry['top'])} of {entry['units']} neurons")
        for col in ("unit", "mean", "mean |cond|"):
            t.add_column(col, justify="right")
        for row in entry["top"]:
            t.add_row(str(row["unit"]), f"{row['mean']:+.4g}", f"{row['mean_abs']:.4g}")
        c = entry["completeness"]
        t.caption = (f"completeness: mean |Σ cond − ΔF| = {c['mean_abs_delta']:.3g} vs mean |ΔF| = "
                     f"{c['mean_abs_change']:.3g} (a residual path around the site carries the rest)")
        console.print(t)
    if saved:
        console.print(f"saved per-neuron importance into {save} (extras/{saved})")


def _check_ablate_runs(how: str, importance: Path | None, means_run: Path | None, save: Path | None) -> None:
    """The runs ``ablate`` reads and writes, checked before the model loads."""
    from neuronscope.store import open_run

    if how == "mean" and means_run is None:
        raise NeuronscopeError("--how mean needs --means-run RUN (a recorded run whose summaries hold the means)")
    for option, given in (("--importance", importance), ("--means-run", means_run)):
        if given is not None:
            if not Path(given).exists():
                raise NeuronscopeError(f"{option} {given} does not exist; give a run directory")
            open_run(given)
    if save is not None:
        writable_run(save, "--save")


def ablate(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    site: str = typer.Option(..., "--site", help="The one module whose units to ablate (e.g. encoder.layer.3.intermediate); with --path, a glob of the sites in layer order (e.g. 'encoder.layer.*.intermediate')."),
    units: str = typer.Option(None, "--units", help="Comma-separated unit indices to ablate one at a time.", show_default=False),
    top: int = typer.Option(0, min=0, help="Instead of --units: the top-K units by importance (from --importance RUN, else by conductance computed here)."),
    importance: Path = typer.Option(None, "--importance", help="A run holding `attribute --save` results; --top reads its mean |conductance|.", show_default=False),
    how: str = typer.Option("zero", help="zero, or mean (the unit's corpus mean from --means-run)."),
    means_run: Path = typer.Option(None, "--means-run", help="A recorded run whose summaries give the means for --how mean.", show_default=False),
    cumulative: bool = typer.Option(False, "--cumulative", help="Ablate the sets top-1, top-2, ... (in the order given) instead of single units."),
    target: str = typer.Option(None, "--target", help=_TARGET_HELP, show_default=False),
    corpus: str = typer.Option("default", help=_CORPUS_HELP),
    docs: int = typer.Option(32, min=1, help="Use the first N documents (or images)."),
    steps: int = typer.Option(10, min=1, help="Integration steps when --top ranks by conductance computed here."),
    batch_size: int = typer.Option(8, min=1, help="Documents per batch."),
    max_tokens: int = typer.Option(64, min=1, help="Truncate each document to this many tokens."),
    max_batch: int = typer.Option(256, min=1, help="Items per forward pass: each batch is copied once per ablated unit, this many at a time."),
    path: bool = typer.Option(False, "--path", help="Influential neuron path (Wang et al. 2025): layer by layer over the --site glob, the unit whose ablation together with the units already chosen drops the target most; --top K restricts the candidates per layer to the top K by importance."),
    save: Path = typer.Option(None, "--save", help="Store the result in this run for the atlas: ablation effects as extras/ablate-<site>, a path as extras/path-<sites> (a path page).", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Effect on a target of ablating each listed (or top) neuron of a site, batched over
    neurons: mean over documents of F(ablated) − F(unmodified). With --path: the
    influential neuron path across the sites of a glob, and its joint influence
    F(x) − F(x; path ablated) after each layer."""
    if path:
        if units is not None or cumulative:
            raise NeuronscopeError("--path searches every unit (or the --top K per layer); it takes no --units or --cumulative")
        _ablate_path(model, site, top, importance, how, means_run, target, corpus, docs, steps, batch_size, max_tokens,
                     max_batch, save, json_out)
        return
    import numpy as np

    from neuronscope.analyses.attribute import (
        _one_site,
        ablation_effects,
        conductance_over,
        load_importance,
    )

    if (units is None) == (top <= 0):
        raise NeuronscopeError("give --units LIST or --top K (exactly one)")
    listed = _ints(units, "--units") if units is not None else None
    if listed is not None and not listed:
        raise NeuronscopeError("--units is empty; list at least one unit")
    _check_ablate_runs(how, importance, means_run, save)
    m, tok, source, _ = _setup(model, corpus, docs, batch_size, max_tokens)
    tgt = _target(target, m, tok)
    name = _one_site(m, site).name
    if listed is not None:
        chosen = listed
        ranked_by = "given"
    elif importance is not None:
        imp = load_importance(importance, name)
        chosen = [int(u) for u in np.argsort(-imp, kind="stable")[:top]]
        ranked_by = f"mean |conductance| from {importance}"
    else:
        with _progress("conductance", len(source), not json_out) as prog:
            imp = conductance_over(m, source, name, tgt, steps=steps, progress=prog)[name].result()["mean_abs"]
        chosen = [int(u) for u in np.argsort(-imp, kind="stable")[:top]]
        ranked_by = f"mean |conductance| ({steps} steps)"
    with _progress("ablation", len(source), not json_out) as prog:
        eff = ablation_effects(m, name, chosen, tgt, source, how=how, run=means_run, cumulative=cumulative,
                               max_batch=max_batch, progress=prog)
    doc = {"model": model, "target": tgt.describe(), "ranked_by": ranked_by, **eff.to_dict()}
    if save is not None:
        from neuronscope.analyses.attribute import save_ablation

        doc["saved"] = {"run": str(save), "extras": save_ablation(
            save, eff, attrs={"model": model, "target": str(tgt.describe().get("target")), "ranked_by": ranked_by})}
    if json_out:
        emit_json(doc)
        return
    from rich.table import Table

    t = Table(title=f"{how}-ablation of {name} on {tgt.name} ({eff.count} documents; units {ranked_by})")
    for col in ("ablated", "effect", "mean |effect|"):
        t.add_column(col, justify="right")
    for s, e, a in zip(eff.sets, eff.effect, eff.effect_abs, strict=True):
        label = f"top-{len(s)}" if cumulative else str(s[0])
        t.add_row(label, f"{e:+.4g}", f"{a:.4g}")
    t.caption = f"unmodified mean target = {eff.clean:.4g}; effect = mean F(ablated) − F(unmodified)"
    console.print(t)
    if save is not None:
        console.print(f"saved into {save} (extras/{doc['saved']['extras']})")


def _ablate_path(model: str, site: str, top: int, importance: Path | None, how: str, means_run: Path | None,
                 target: str | None, corpus: str, docs: int, steps: int, batch_size: int, max_tokens: int,
                 max_batch: int, save: Path | None, json_out: bool) -> None:
    """``ablate --path``: :func:`neuronscope.analyses.attribute.influential_path` over the data."""
    import numpy as np

    from neuronscope.analyses.attribute import (
        conductance_over,
        influential_path,
        load_importance,
        save_path,
    )
    from neuronscope.sources.torch_sites import sites as resolve_sites

    _check_ablate_runs(how, importance, means_run, save)
    m, tok, source, _ = _setup(model, corpus, docs, batch_size, max_tokens)
    tgt = _target(target, m, tok)
    names = [s.name for s in resolve_sites(m, site)]
    if len(names) < 2:
        raise NeuronscopeError(f"--path needs a --site glob matching two or more layers; {site!r} matches {len(names)}")
    candidates = None
    ranked_by = "all units"
    if top > 0:
        if importance is not None:
            imp = {n: load_importance(importance, n) for n in names}
            ranked_by = f"top {top} per layer by mean |conductance| from {importance}"
        else:
            with _progress("conductance", len(source), not json_out) as prog:
                summ = conductance_over(m, source, names, tgt, steps=steps, progress=prog)
            imp = {n: summ[n].result()["mean_abs"] for n in names}
            ranked_by = f"top {top} per layer by mean |conductance| ({steps} steps)"
        candidates = {n: [int(u) for u in np.argsort(-imp[n], kind="stable")[:top]] for n in names}
    with _progress("path", len(names), not json_out) as prog:
        found = influential_path(m, names, tgt, source, how=how, run=means_run, candidates=candidates,
                                 max_batch=max_batch, progress=prog)
    doc = {"model": model, "target": tgt.describe(), "how": how, "candidates": ranked_by, "documents": len(source),
           **found.to_dict()}
    if save is not None:
        doc["saved"] = {"run": str(save), "extras": save_path(
            save, found, attrs={"model": model, "target": str(tgt.describe().get("target")), "how": how,
                                "candidates": ranked_by})}
    if json_out:
        emit_json(doc)
        return
    from rich.table import Table

    t = Table(title=f"influential neuron path of {model} for {tgt.name} ({len(source)} documents; {ranked_by})")
    for col in ("layer", "site", "unit", "joint influence"):
        t.add_column(col, justify="right")
    for i, (s, u, v) in enumerate(zip(found.sites, found.units, found.influence, strict=True)):
        t.add_row(str(i), s, str(u), f"{v:+.4g}")
    t.caption = "joint influence = mean F(x) − F(x; path up to this layer ablated)"
    console.print(t)
    if save is not None:
        console.print(f"saved into {save} (extras/{doc['saved']['extras']})")


def steer(
    model: str = typer.Argument(..., help=_MODEL_HELP + " Language steering (--deactivate/--activate) takes a causal LM whose forward pass returns next-token logits and numbers positions from the attention mask: the tiny LM, 'tinylm:SEED'."),
    site: str = typer.Option(None, "--site", help="CAA: the one module to steer (e.g. encoder.layer.3.intermediate).", show_default=False),
    positive: str = typer.Option(None, "--positive", help="CAA: positive examples, a value of --label or a .txt/.jsonl file.", show_default=False),
    negative: str = typer.Option(None, "--negative", help="CAA: negative examples, a value of --label or a .txt/.jsonl file.", show_default=False),
    label: str = typer.Option(None, "--label", help="CAA: label field of --corpus whose values --positive/--negative name (e.g. lang). Language steering: the language field of --lape-run (default lang).", show_default=False),
    coefficients: str = typer.Option("-8,-4,-2,0,2,4,8", help="CAA: comma-separated steering coefficients c of y + c·v."),
    positions: str = typer.Option("all", help="CAA: token positions averaged for the vector and steered: all, or last (each document's last real token)."),
    target: str = typer.Option(None, "--target", help="CAA: " + _TARGET_HELP, show_default=False),
    corpus: str = typer.Option("default", help="CAA: " + _CORPUS_HELP + " The vector comes from the whole corpus (with --label); the sweep runs on the first --docs documents."),
    docs: int = typer.Option(32, min=1, help="CAA: measure the target on the first N documents."),
    batch_size: int = typer.Option(8, min=1, help="Documents per batch (language steering: held-out texts or prompts per batch)."),
    max_tokens: int = typer.Option(64, min=1, help="Truncate each document to this many tokens."),
    plot: Path = typer.Option(None, "--plot", help="CAA: write the steering curve here (.png, .pdf or .svg).", show_default=False),
    deactivate: str = typer.Option(None, "--deactivate", help="Language steering (Tang et al. 2024): set the LAPE neurons of each listed language (comma-separated, or 'all' = every language with neurons) to 0, one language at a time, and measure every language's held-out loss and the language of generations.", show_default=False),
    activate: str = typer.Option(None, "--activate", help="Language steering: clamp each listed language's LAPE neurons to their mean activation on that language (from --lape-run's per-label moments) instead.", show_default=False),
    lape_run: Path = typer.Option(None, "--lape-run", help="Language steering: a run of the model recorded over a corpus with a language label (per-label firing and moments; `neuronscope record --corpus default`); its LAPE neurons are steered.", show_default=False),
    top_rate: float = typer.Option(0.01, "--top-rate", help="Language steering: LAPE's selected fraction of all neurons (Tang et al.: 0.01).", callback=open_interval(0.0, 1.0)),
    heldout: str = typer.Option("tinylm", "--heldout", help="Language steering: held-out texts with the language label, 'tinylm' (the tiny LM's held-out split) or a .jsonl file; prompts are their first --prompt-chars characters."),
    prompts: int = typer.Option(8, min=0, help="Language steering: prompts per language to continue (0: held-out losses only)."),
    prompt_chars: int = typer.Option(12, min=1, help="Language steering: characters of a held-out text used as a prompt."),
    new_tokens: int = typer.Option(32, min=1, help="Language steering: tokens generated (greedily) per prompt."),
    save: Path = typer.Option(None, "--save", help="Store the result in this run for the atlas: a CAA steering curve as extras/steer-<site> (a curve page), language steering as extras/langsteer-<mode> (heatmaps of loss change and generated-language probability).", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Contrastive activation addition (Rimsky et al. 2023): the steering vector is the mean
    of the site's activations on positive minus negative examples; add c·v for each
    coefficient and measure the target.

    Language steering (Tang et al. 2024, "Language-Specific Neurons"): with --deactivate or
    --activate LANGS and --lape-run RUN, the LAPE neurons of each language are set to 0 (or
    to their mean on that language); reported per steered language and per language: the
    change of held-out loss and the language-identifier probability / share of greedy
    generations (a naive Bayes character 1–3-gram identifier trained on the bundled corpus)."""
    from neuronscope.analyses.steer import (
        plot_sweep,
        save_steering_curve,
        steering_sweep,
        steering_vector,
        steering_vector_from_labels,
    )

    if deactivate is not None or activate is not None:
        caa = [o for o, v in (("--site", site), ("--positive", positive), ("--negative", negative),
                              ("--target", target), ("--plot", plot)) if v is not None]
        if caa:
            raise NeuronscopeError(f"{', '.join(caa)} belong to CAA steering; language steering (--deactivate/--activate) does not take them")
        _steer_languages(model, deactivate, activate, lape_run, label or "lang", top_rate, heldout, prompts,
                         prompt_chars, new_tokens, batch_size, max_tokens, save, json_out)
        return
    missing = [o for o, v in (("--site", site), ("--positive", positive), ("--negative", negative)) if v is None]
    if missing:
        raise NeuronscopeError(f"CAA steering needs {', '.join(missing)} (or language steering: --deactivate/--activate LANGS --lape-run RUN)")
    if lape_run is not None:
        raise NeuronscopeError("--lape-run goes with --deactivate or --activate (language steering)")
    if save is not None:
        writable_run(save, "--save")
    if positions not in ("all", "last"):
        raise NeuronscopeError(f"--positions must be all or last, not {positions!r}")
    coefs = _floats(coefficients, "--coefficients")
    if not coefs:
        raise NeuronscopeError("--coefficients is empty; give at least one number")
    if plot is not None:
        output_file(plot, "--plot", PLOT_SUFFIXES)
    if not label:  # the example files are read before the model loads
        from neuronscope.sources.text import load_corpus

        for f in (positive, negative):
            if not Path(f).exists():
                raise NeuronscopeError(f"{f} is not a file; give .txt/.jsonl files or --label with label values")
            load_corpus(f)
    m, tok, source, _ = _setup(model, corpus, docs, batch_size, max_tokens)
    if tok is None:
        raise NeuronscopeError("steer works on text models (minilm or a Hugging Face model directory)")
    tgt = _target(target, m, tok)
    if label:
        from neuronscope.sources.text import TextSource

        full = TextSource(corpus, tok, batch_size=batch_size, max_tokens=max_tokens)
        with _progress("steering vector", len(full), not json_out) as prog:
            sv = steering_vector_from_labels(m, full, site, label, positive, negative, positions=positions,
                                             progress=prog)
    else:
        for f in (positive, negative):
            if not Path(f).exists():
                raise NeuronscopeError(f"{f} is not a file; give .txt/.jsonl files or --label with label values")
        from neuronscope.sources.text import TextSource

        sv = steering_vector(m, site, TextSource(positive, tok, batch_size=batch_size, max_tokens=max_tokens),
                             TextSource(negative, tok, batch_size=batch_size, max_tokens=max_tokens), positions=positions)
    with _progress("steering", len(source), not json_out) as prog:
        curve = steering_sweep(m, site, sv, coefs, tgt, source, positions=positions, progress=prog)
    if plot is not None:
        plot_sweep(curve, plot, title=f"steering {curve.site}: {positive} − {negative}")
    doc = {"model": model, "vector": {k: v for k, v in sv.to_dict().items() if k != "vector"}, **curve.to_dict()}
    if plot is not None:
        doc["plot"] = str(plot)
    if save is not None:
        saved = save_steering_curve(save, curve, title=f"steering {curve.site} along {positive} − {negative}",
                                    attrs={"model": model, "positive": positive, "negative": negative,
                                           "vector_norm": sv.norm})
        doc["saved"] = {"run": str(save), "extras": saved}
    if json_out:
        emit_json(doc)
        return
    from rich.table import Table

    t = Table(title=f"steering {curve.site} along {positive} − {negative} (|v| = {sv.norm:.3g}; "
                    f"{sv.n_positive} vs {sv.n_negative} samples)")
    for col in ("coefficient", f"mean {tgt.name}", "std"):
        t.add_column(col, justify="right")
    for c, mu, sd in zip(curve.coefficients, curve.mean, curve.std, strict=True):
        t.add_row(f"{c:+g}", f"{mu:.4g}", f"{sd:.3g}")
    t.caption = f"unsteered mean = {curve.clean:.4g} over {curve.count} documents"
    console.print(t)
    if plot is not None:
        console.print(f"wrote {plot}")
    if save is not None:
        console.print(f"saved the steering curve into {save} (extras/{doc['saved']['extras']})")


def _steer_languages(model_name: str, deactivate: str | None, activate: str | None, lape_run: Path | None,
                     label: str, top_rate: float, heldout: str, prompts: int, prompt_chars: int, new_tokens: int,
                     batch_size: int, max_tokens: int, save: Path | None, json_out: bool) -> None:
    """``steer --deactivate/--activate``: :func:`neuronscope.analyses.langsteer.language_steering`."""
    from neuronscope.analyses.langsteer import language_steering, save_language_steering
    from neuronscope.analyses.locate import lape
    from neuronscope.specs import load_model
    from neuronscope.store import open_run

    if deactivate is not None and activate is not None:
        raise NeuronscopeError("give --deactivate or --activate, not both")
    mode, langs = ("deactivate", deactivate) if deactivate is not None else ("activate", activate)
    wanted = [v for v in str(langs).replace(" ", "").split(",") if v]
    if not wanted:
        raise NeuronscopeError(f"--{mode} is empty; list languages (e.g. ko,tr) or 'all'")
    if lape_run is None:
        raise NeuronscopeError(f"--{mode} needs --lape-run RUN (a run recorded over a corpus with a {label!r} label)")
    if not Path(lape_run).exists():
        raise NeuronscopeError(f"--lape-run {lape_run} does not exist; give a run directory")
    if save is not None:
        writable_run(save, "--save")
    if heldout == "tinylm":
        from neuronscope.testing.tinylm import tinylm_corpus

        texts = tinylm_corpus("heldout")
    else:
        from neuronscope.sources.text import load_corpus

        if not Path(heldout).is_file():
            raise NeuronscopeError(f"--heldout {heldout} is not a file; give 'tinylm' or a .jsonl corpus with a {label!r} label")
        texts = load_corpus(heldout)
    if label not in texts.labels:
        raise NeuronscopeError(f"--heldout has no {label!r} label; give a .jsonl corpus with a {label!r} field")
    run = open_run(lape_run)
    res = lape(run, label, top_rate=top_rate)  # a run without the label fails here, before the model loads
    if wanted == ["all"]:
        steered = None
    else:
        unknown = [v for v in wanted if v not in res.labels]
        if unknown:
            raise NeuronscopeError(f"--{mode}: no language {', '.join(unknown)} in the run's {label!r} label; values: {', '.join(res.labels)}")
        steered = wanted
    m, tok = load_model(model_name)
    if tok is None:
        raise NeuronscopeError("language steering needs a causal language model with a tokenizer (e.g. tinylm:0)")
    n_steer = len(steered) if steered is not None else sum(
        1 for v in res.labels if sum(len(u) for u in res.units_for(v).values()))
    with _progress(f"language steering ({mode})", 1 + n_steer, not json_out) as prog:
        out = language_steering(m, tok, res, steered, mode=mode, run=run, heldout=texts, n_prompts=prompts,
                                prompt_chars=prompt_chars, max_new_tokens=new_tokens, max_tokens=max_tokens,
                                batch_size=batch_size, progress=prog)
    doc = {"model": model_name, "lape": {"run": str(lape_run), "top_rate": top_rate, "selected": res.info["selected"]},
           **out.to_dict()}
    if save is not None:
        doc["saved"] = {"run": str(save), "extras": save_language_steering(save, out, attrs={"model": model_name})}
    if json_out:
        emit_json(doc)
        return
    from rich.table import Table

    t = Table(title=f"language steering of {model_name}: {mode} each language's LAPE neurons "
                    f"(top {top_rate:g} of neurons; {res.info['selected']} selected)")
    for col in ("language", "neurons", "Δ loss (own)", "max Δ loss (other)", "own rank",
                "P(own) clean", "P(own) steered", "share clean", "share steered"):
        t.add_column(col, justify="right")

    def f(x: Any, spec: str = ".3f") -> str:
        return "–" if x is None or x != x else format(x, spec)

    for row in out.summary().to_dict("records"):
        t.add_row(row["steered"], str(row["neurons"]), f(row["loss_change"], "+.4f"),
                  f"{f(row['other_max_loss_change'], '+.4f')} ({row['other_max_language']})", str(row["loss_rank"]),
                  f(row["prob_clean"]), f(row["prob"]), f(row["share_clean"]), f(row["share"]))
    t.caption = (f"loss: nats per token on each language's held-out texts ({out.info['heldout_texts']} texts); "
                 f"P(own): mean identifier probability of the language for greedy continuations of its "
                 f"{prompts} prompts; share: fraction of all {out.info['prompts']} continuations identified as it")
    console.print(t)
    if save is not None:
        console.print(f"saved into {save} (extras/{doc['saved']['extras']})")
