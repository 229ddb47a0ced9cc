"""Scale run: summaries-only recording of MiniLM's 6 FFN sites over 10^5 and 10^6 tokens.

The corpus is the bundled corpus (2,852 dialogue lines, ~53,000 MiniLM tokens) repeated, each
pass in a different order (a seeded permutation per pass; pass 0 in file order), until the
token count is reached — the last pass is cut to the exact document count. Each size runs in
its own process, so its peak RSS (``ru_maxrss``) is its own:

* ``record(..., keep="summaries")`` with the default bucketed batching: tokens/s, seconds,
  peak RSS of the process;
* the best bare forward pass on the same documents (bucketed, 4,096-token budget — the
  budget ``benchmarks/record.py`` finds fastest on this machine — one stream on all torch
  threads or one lane per core with one torch thread each, with oneDNN's primitive cache on or
  off, whichever is fastest), in a process of its own per cache setting: tokens/s, the ratio of the record's time to it, and its own peak
  RSS (the forward pass's memory growth, apart from the recording's);
* the projected time for 10^7 tokens (10× the largest size, the per-token cost of the
  largest run);
* the same ``record`` with oneDNN's primitive cache on (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024``,
  oneDNN's default; ``record`` turns it off for bucketed text, ``recording.no_primitive_cache``):
  tokens/s and peak RSS;
* ``record --workers 2`` (``record_distributed`` on a 2-worker ``LocalCluster``, dashboard
  off, one torch thread per worker): the same sizes, tokens/s (peak RSS of the driver only).

    cd benchmarks && ../.venv/bin/python scale.py [--tokens 100000 1000000] [--dask-tokens ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

SITES = "encoder.layer.*.intermediate"


def repeated_corpus(tokens: int, tok):
    """The bundled corpus repeated in a new order each pass until ``tokens`` tokens (as
    batched: special tokens included, 128 tokens at most per document)."""
    import numpy as np

    from neuronscope.sources.text import Corpus, TextSource, load_corpus

    base = load_corpus("default")
    lengths = TextSource(base, tok, max_tokens=128).lengths()
    texts, langs, total, p = [], [], 0, 0
    lang = base.labels["lang"]
    while total < tokens:
        order = np.arange(len(base)) if p == 0 else np.random.default_rng(p).permutation(len(base))
        cum = np.cumsum(lengths[order])
        take = order if total + cum[-1] <= tokens else order[: int(np.searchsorted(cum, tokens - total)) + 1]
        texts += [base.texts[i] for i in take]
        langs += [lang[i] for i in take]
        total += int(lengths[take].sum())
        p += 1
    return Corpus(texts, {"lang": langs}, name=f"bundled corpus ×{p} passes ({total} tokens)"), p


def child(tokens: int, mode: str) -> None:
    from neuronscope.recording import PRIMITIVE_CACHE_ENV

    if mode == "cache":  # oneDNN's own default: a cache of 1,024 primitives (record's default before)
        os.environ[PRIMITIVE_CACHE_ENV] = "1024"
    if mode == "bare-nocache":  # the bare forward as record runs it on bucketed text
        os.environ[PRIMITIVE_CACHE_ENV] = "0"
    import torch

    import neuronscope as ns
    from neuronscope.distributed import record_distributed

    model, tok = ns.load_model("minilm")
    corpus, passes = repeated_corpus(tokens, tok)
    src = ns.TextSource(corpus, tok, max_tokens=128)
    out: dict = {"tokens": int(src.stats()["tokens"]), "documents": len(corpus), "passes": passes,
                 "padding": src.stats()["padding"], "threads": torch.get_num_threads()}
    if mode in ("bare", "bare-nocache"):
        # the best bare forward: one stream on all torch threads, or one lane per core with one
        # torch thread each (record's default layout); tokenizing first and not timed, so the
        # peak RSS is the forward pass's own plus the tokenized batches
        from _forward import bare_forward

        inputs = [b.inputs for b in src.batches()]
        from neuronscope.recording import default_lanes

        lanes = default_lanes()
        best = {"1 stream": bare_forward(model, inputs)}
        if lanes > 1:
            best[f"{lanes} lanes"] = bare_forward(model, inputs, lanes)
        layout = min(best, key=best.__getitem__)
        out["bare_seconds"] = best[layout]
        out["bare_layout"] = layout + (", primitive cache off" if mode != "bare" else "")
        out["bare_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        if mode == "dask":
            record_distributed("minilm", src, SITES, out=Path(d) / "run.zarr", workers=2, progress=False)
        else:
            ns.record(model, src, SITES, out=Path(d) / "run.zarr", keep="summaries", progress=False)
        out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if mode in ("single", "cache"):
        from neuronscope.recording import default_lanes, default_threads

        out["lanes"] = default_lanes()
        out["threads"] = default_threads(lanes=out["lanes"])
    print(json.dumps(out))


def run_child(tokens: int, mode: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", str(tokens), mode], capture_output=True, text=True,
                       check=False)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def load() -> str:
    return "load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--dask-tokens", nargs="*", type=int, default=None, help="default: the same as --tokens")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    from _results import write_section

    load0 = load()
    dask_sizes = args.tokens if args.dask_tokens is None else args.dask_tokens
    single: dict[int, dict] = {}
    cached: dict[int, dict] = {}
    dask: dict[int, dict] = {}
    # the section is rewritten after every run, so an interrupted scale run keeps what it measured
    for n in sorted(set(args.tokens) | set(dask_sizes)):
        if n in args.tokens:
            single[n] = run_child(n, "single")
            bare = min(run_child(n, "bare"), run_child(n, "bare-nocache"), key=lambda r: r["bare_seconds"])
            single[n].update({k: bare[k] for k in ("bare_layout", "bare_seconds", "bare_peak_rss_mb")})
            cached[n] = run_child(n, "cache")
            cached[n].update({k: bare[k] for k in ("bare_layout", "bare_seconds", "bare_peak_rss_mb")})
            report(single, cached, dask, load0, write_section)
        if n in dask_sizes:
            dask[n] = run_child(n, "dask")
            report(single, cached, dask, load0, write_section)


def report(single: dict[int, dict], cached: dict[int, dict], dask: dict[int, dict], load0: str, write_section) -> None:
    """Write the ``scale`` section of RESULTS.md from the runs so far."""
    from neuronscope.recording import PRIMITIVE_CACHE_ENV

    rows = ["| run | tokens | documents (passes) | padding | seconds | tokens/s | × best bare forward | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|"]
    for r in single.values():
        rows.append(f"| record keep=summaries, 1 process ({r['lanes']} lane(s) × {r['threads']} torch thread(s)) | "
                    f"{r['tokens']:,} | "
                    f"{r['documents']:,} ({r['passes']}) | {r['padding']:.1%} | {r['seconds']:.1f} | "
                    f"{r['tokens'] / r['seconds']:,.0f} | {r['seconds'] / r['bare_seconds']:.2f}× | "
                    f"{r['peak_rss_mb']:,.0f} |")
        c = cached.get(r["tokens"])
        if c:
            rows.append(f"| the same with oneDNN's primitive cache (`{PRIMITIVE_CACHE_ENV}=1024`, the default "
                        f"before) | {c['tokens']:,} | | | "
                        f"{c['seconds']:.1f} | {c['tokens'] / c['seconds']:,.0f} | "
                        f"{c['seconds'] / r['bare_seconds']:.2f}× | {c['peak_rss_mb']:,.0f} |")
        rows.append(f"| best bare forward, bucketed 4,096-token budget, {r['bare_layout']} | "
                    f"{r['tokens']:,} | | | {r['bare_seconds']:.1f} | "
                    f"{r['tokens'] / r['bare_seconds']:,.0f} | 1.00× | {r['bare_peak_rss_mb']:,.0f} |")
    for r in dask.values():
        rows.append(f"| record --workers 2 (LocalCluster) | {r['tokens']:,} | {r['documents']:,} ({r['passes']}) | "
                    f"{r['padding']:.1%} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} | | "
                    f"{r['peak_rss_mb']:,.0f} (driver) |")
    if not single:
        return
    big = single[max(single)]
    proj = 1e7 * big["seconds"] / big["tokens"]
    lines = [f"* projected time for 10^7 tokens (1 process, per-token cost of the {big['tokens']:,}-token run): "
             f"**{proj / 60:.1f} min** (goal: < 25 min)"]
    if dask:
        bd = dask[max(dask)]
        lines.append(f"* projected time for 10^7 tokens with 2 Dask workers: **{1e7 * bd['seconds'] / bd['tokens'] / 60:.0f} min**")
    if len(single) > 1:
        small = single[min(single)]
        lines.append(f"* peak RSS at {big['tokens']:,} tokens / at {small['tokens']:,}: "
                     f"**{big['peak_rss_mb'] / small['peak_rss_mb']:.2f}×** (target ≤ 1.10×); the bare forward "
                     f"pass alone, in its own process: **{big['bare_peak_rss_mb'] / small['bare_peak_rss_mb']:.2f}×** "
                     f"({small['bare_peak_rss_mb']:,.0f} → {big['bare_peak_rss_mb']:,.0f} MB)")
        if len(cached) > 1:
            cb, cs = cached[max(cached)], cached[min(cached)]
            lines.append(f"* the same with oneDNN's primitive cache (the default before): "
                         f"**{cb['peak_rss_mb'] / cs['peak_rss_mb']:.2f}×** ({cs['peak_rss_mb']:,.0f} → "
                         f"{cb['peak_rss_mb']:,.0f} MB), at {cb['tokens'] / cb['seconds']:,.0f} tokens/s vs "
                         f"{big['tokens'] / big['seconds']:,.0f} without (the default)")
    body = (
        "MiniLM (all-MiniLM-L6-v2), 6 FFN sites (9,216 neurons), summaries only, default bucketed batching. "
        "Corpus: the bundled corpus repeated, each pass in a different seeded order (pass 0 in file order), cut at "
        f"the token count. Each row ran in its own process. Load at start: {load0}; at end: {load()} "
        "(2 cores shared with other jobs).\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines)
    )
    write_section("scale", body)


if __name__ == "__main__":
    main()
