"""What copying site outputs at the hook costs (issue 11: in-place ops must not change recordings).

MiniLM's 6 FFN sites over the bundled corpus, batch 32, four ways, alternating per batch:

* ``forward`` — the bare forward pass, no hooks;
* ``reference`` — the old capture: the hook keeps a reference to the output tensor, which is
  flattened (padding dropped: a boolean-mask gather, i.e. a copy) after the forward pass —
  wrong when a later in-place op changes the tensor;
* ``clone + flatten`` — the naive fix: the hook clones the output, flattened after the pass;
* ``flatten at hook`` — what neuronscope does: the hook flattens at once, and the gather is
  the copy (``SiteCapture(flatten=True)``).

    cd benchmarks && ../.venv/bin/python capture_copy.py [--docs 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _results import write_section  # noqa: E402

import neuronscope as ns  # noqa: E402
from neuronscope.sources.text import load_corpus  # noqa: E402
from neuronscope.sources.torch_sites import SiteCapture, sites, to_samples  # noqa: E402

SITES = "encoder.layer.*.intermediate"


def run_variant(model, site_list, batch, how: str) -> float:
    store: dict[str, torch.Tensor] = {}
    handles = []
    if how in ("reference", "clone + flatten"):
        clone = how == "clone + flatten"
        handles = [s.module.register_forward_hook(
            lambda _m, _i, o, n=s.name: store.__setitem__(n, o.detach().clone() if clone else o.detach()))
            for s in site_list]
    cap = SiteCapture(model, site_list, flatten=True) if how == "flatten at hook" else None
    t = time.perf_counter()
    try:
        with torch.inference_mode():
            if cap is not None:
                with cap:
                    cap.mask = batch.mask
                    model(**batch.inputs)
                    out = [cap.outputs[s.name].numpy() for s in site_list]
            else:
                model(**batch.inputs)
                out = [to_samples(store[s.name], batch.mask).numpy() for s in site_list] if store else []
    finally:
        for h in handles:
            h.remove()
    dt = time.perf_counter() - t
    del out
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, tok = ns.load_model("minilm")
    corpus = load_corpus("default").head(args.docs)
    source = ns.TextSource(corpus, tok, batch_size=32, max_tokens=128)
    batches = list(source.batches())
    tokens = sum(len(b.samples["doc"]) for b in batches)
    site_list = sites(model, SITES)
    ways = ["forward", "reference", "clone + flatten", "flatten at hook"]
    for b in batches[:2]:  # warm-up
        for w in ways:
            run_variant(model, site_list, b, w)
    # per batch and capture, the fastest of the repeats (robust to other jobs on a shared
    # machine), then summed over batches
    per: dict[str, list[list[float]]] = {w: [[] for _ in batches] for w in ways}
    for r in range(args.repeats):
        for i, b in enumerate(batches):
            order = ways[(i + r) % 4 :] + ways[: (i + r) % 4]  # rotate who goes first
            for w in order:
                per[w][i].append(run_variant(model, site_list, b, w))
    best = {w: sum(min(ts) for ts in per[w]) for w in ways}
    med = {w: sum(statistics.median(ts) for ts in per[w]) for w in ways}
    # the copy alone: cloning the 6 padded outputs of each batch, outside any forward pass
    outs = {}
    with torch.inference_mode(), SiteCapture(model, site_list) as cap:
        clone_s = 0.0
        for b in batches:
            model(**b.inputs)
            outs = dict(cap.outputs)
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for o in outs.values():
                    o.clone()
                ts.append(time.perf_counter() - t)
            clone_s += min(ts)
    rows = ["| capture | s (sum of per-batch minima) | ratio to bare forward | vs reference | s (medians) |",
            "|---|---|---|---|---|"]
    for w in ways:
        rows.append(f"| {w} | {best[w]:.2f} | {best[w] / best['forward']:.3f}× | {best[w] / best['reference']:.3f}× "
                    f"| {med[w]:.2f} |")
    rows.append(f"| one extra clone of the 6 outputs, alone | {clone_s:.3f} | {clone_s / best['forward']:.3f}× | | |")
    body = (
        f"MiniLM, 6 FFN sites (1,536 units each), {args.docs} documents of the bundled corpus, {tokens} tokens, "
        f"batch 32, {torch.get_num_threads()} torch threads, {args.repeats} repeats, the four captures alternating "
        "batch by batch. `flatten at hook` is what recording does: its gather (dropping padding) is the copy, "
        "so it costs what `reference` did.\n\n" + "\n".join(rows)
    )
    write_section("capture-copy", body)


if __name__ == "__main__":
    main()
