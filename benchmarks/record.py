"""Recording throughput: MiniLM's 6 FFN sites against the best bare forward pass.

References, all measured in the same run with alternating repeats (medians):

* the bare forward pass in corpus order, 32 documents per batch (how ``record`` batched
  before issue 16: ``--batching docs``);
* the **best** bare forward pass: length-bucketed batches under a token budget, for each
  budget of ``--budgets`` — the fastest is the reference the targets are measured against.

Then ``record`` itself: ``--batching docs`` with torch's default threads and the summaries on
a thread beside the forward pass (``record`` before issue 16) and the defaults (bucketed
batching, one forward lane per core with one torch thread each, every lane summarizing its
own batches in order), for each ``--keep``; summaries-only with one lane of torch's default
threads, then the summaries on every core (the default before lanes); and for each of
``--threads``: the bucketed bare forward and summaries-only record with that many torch
intra-op threads and the summary work on one more thread beside the forward pass
(``overlap=True``). The bare forward also runs in lanes (one torch thread each, as
``record``'s default). The best bare forward is the fastest of all bare rows.

Targets (issue 16): summaries-only record ≤ 1.10× the best bare forward; end-to-end tokens/s
of ``record`` ≥ 2.5× the corpus-order record.

    cd benchmarks && ../.venv/bin/python record.py [--docs 2852] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _forward import bare_forward  # noqa: E402
from _results import write_section  # noqa: E402

import neuronscope as ns  # noqa: E402
from neuronscope.recording import default_lanes, default_threads, no_primitive_cache  # noqa: E402
from neuronscope.sources.text import load_corpus  # noqa: E402

SITES = "encoder.layer.*.intermediate"


def bare(model, source, lanes: int = 1) -> float:
    """Seconds of the forward passes alone (tokenizing excluded: batches are made first)."""
    return bare_forward(model, [b.inputs for b in source.batches()], lanes)


def recorded(model, source, keep: str, tmp: Path, threads: int | None = None, overlap: bool = False,
             lanes: int | None = None) -> float:
    """Seconds of ``ns.record`` end to end (tokenizing, planning and storing included)."""
    out = tmp / f"run-{keep}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    ns.record(model, source, SITES, out=out, keep=keep, dtype="float16", progress=False, threads=threads,
              overlap=overlap, lanes=lanes)
    dt = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return dt


def load() -> str:
    try:
        return "load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min)".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2852)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", nargs="+", default=["summaries", "both"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[2048, 4096, 8192])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    args = ap.parse_args()
    # as record sets it for bucketed text before its process's first forward pass; here it
    # holds for every row (the bare forward passes too), whichever runs first
    no_primitive_cache()
    model, tok = ns.load_model("minilm")
    corpus = load_corpus("default").head(args.docs)
    torch_default = torch.get_num_threads()
    lanes = default_lanes()
    docs = ns.TextSource(corpus, tok, batch_size=32, max_tokens=128, batching="docs")
    bucket = ns.TextSource(corpus, tok, batch_size=32, max_tokens=128)  # the default: 4,096-token budget
    budgets = {b: ns.TextSource(corpus, tok, max_tokens=128, max_batch_tokens=b) for b in args.budgets}
    tokens = docs.stats()["tokens"]
    load0 = load()
    bare(model, bucket)  # warm-up
    times: dict[str, list[float]] = {}

    def add(key: str, dt: float) -> None:
        times.setdefault(key, []).append(dt)

    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeats):
            add("bare docs", bare(model, docs))
            for b, src in budgets.items():
                add(f"bare bucket {b}", bare(model, src))
            for n in args.threads:
                torch.set_num_threads(n)
                try:
                    add(f"bare bucket 4096 threads={n}", bare(model, bucket))
                finally:
                    torch.set_num_threads(torch_default)
            if lanes > 1:
                add("bare bucket 4096 lanes", bare(model, bucket, lanes))
            for k in args.keep:
                # before issue 16: corpus-order batches, torch's default threads
                add(f"record docs {k}", recorded(model, docs, k, Path(d), threads=torch_default, overlap=True))
                add(f"record bucket {k}", recorded(model, bucket, k, Path(d)))
            if lanes > 1 and "summaries" in args.keep:
                add("record bucket summaries 1 lane", recorded(model, bucket, "summaries", Path(d), lanes=1))
            for n in args.threads:
                add(f"record bucket summaries threads={n}", recorded(model, bucket, "summaries", Path(d), threads=n,
                                                                     overlap=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    best_key = min((k for k in med if k.startswith("bare bucket")), key=med.__getitem__)
    best = med[best_key]
    rows = [
        "| what | padding | median s | tokens/s | × best bare forward | target |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, key: str, padding: float | None, target: str = "") -> None:
        pad = "" if padding is None else f"{padding:.1%}"
        label += " **(best: the reference)**" if key == best_key else ""
        rows.append(f"| {label} | {pad} | {med[key]:.2f} | {tokens / med[key]:,.0f} | {med[key] / best:.2f}× | {target} |")

    row("bare forward, corpus order, 32 documents per batch", "bare docs", docs.stats()["padding"])
    for b, src in budgets.items():
        row(f"bare forward, bucketed, {b}-token budget", f"bare bucket {b}", src.stats()["padding"])
    for k in args.keep:
        row(f"record keep={k}, `--batching docs`, {torch_default} torch threads, overlap (before issue 16)",
            f"record docs {k}", docs.stats()["padding"])
        row(f"record keep={k}, defaults: bucketed (4,096-token budget), {lanes} lane(s) of "
            f"{default_threads(lanes=lanes)} torch thread(s), each summarizing its batches",
            f"record bucket {k}",
            bucket.stats()["padding"], "≤ 1.10×" if k == "summaries" else "")
    for n in args.threads:
        row(f"bare forward, bucketed, 4096-token budget, {n} torch thread(s)", f"bare bucket 4096 threads={n}",
            bucket.stats()["padding"])
    if lanes > 1:
        row(f"bare forward, bucketed, 4096-token budget, {lanes} lanes × 1 torch thread", "bare bucket 4096 lanes",
            bucket.stats()["padding"])
        if "summaries" in args.keep:
            row(f"record keep=summaries, bucketed, 1 lane of {torch_default} torch threads, then the summaries on "
                "every core (the default before lanes)", "record bucket summaries 1 lane", bucket.stats()["padding"])
    for n in args.threads:
        row(f"record keep=summaries, bucketed, {n} torch thread(s) + summary thread (overlap)",
            f"record bucket summaries threads={n}",
            bucket.stats()["padding"])
    speed = [f"* end-to-end speed-up of `record` (bucketed vs corpus order), keep={k}: "
             f"**{med[f'record docs {k}'] / med[f'record bucket {k}']:.2f}×** (target ≥ 2.5×)" for k in args.keep]
    speed.append(f"* summaries-only record / best bare forward: "
                 f"**{med['record bucket summaries'] / best:.2f}×** (target ≤ 1.10×)"
                 if "summaries" in args.keep else "")
    body = (
        f"MiniLM (all-MiniLM-L6-v2), {args.docs} documents of the bundled corpus, {tokens:,} tokens, "
        f"max 128 tokens per document, fp16 storage, {torch_default} torch threads unless stated, "
        f"median of {args.repeats} alternating repeats. Bare forward times exclude tokenizing; record times are "
        f"end to end. Machine load at start: {load0}; at end: {load()} (2 cores shared with other jobs: "
        "read the ratios).\n\n" + "\n".join(rows) + "\n\n" + "\n".join(s for s in speed if s)
    )
    write_section("record" if args.docs == 600 else f"record-{args.docs}-docs", body)


if __name__ == "__main__":
    main()
