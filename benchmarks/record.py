"""Recording overhead: bare forward pass of MiniLM vs recording its 6 FFN sites.

Same corpus, same batches, in one run, alternating repeats; reports the ratio of median
times. ``--keep summaries`` also measures summaries-only recording (issue 3's target).

    cd benchmarks && ../.venv/bin/python record.py [--docs 600] [--repeats 3]
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
from _results import write_section  # noqa: E402

import neuronscope as ns  # noqa: E402
from neuronscope.sources.text import load_corpus  # noqa: E402

SITES = "encoder.layer.*.intermediate"


def bare(model, source) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for batch in source.batches():
            model(**batch.inputs)
    return time.perf_counter() - t


def recorded(model, source, keep: str, tmp: Path) -> float:
    out = tmp / f"run-{keep}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    ns.record(model, source, SITES, out=out, keep=keep, dtype="float16", progress=False)
    dt = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", nargs="+", default=["activations", "summaries", "both"])
    args = ap.parse_args()
    model, tok = ns.load_model("minilm")
    corpus = load_corpus("default")
    corpus.texts = corpus.texts[: args.docs]
    corpus.labels = {k: v[: args.docs] for k, v in corpus.labels.items()}
    source = ns.TextSource(corpus, tok, batch_size=32, max_tokens=128)
    tokens = sum(len(b.samples["doc"]) for b in source.batches())
    bare(model, source)  # warm-up
    times: dict[str, list[float]] = {"bare": [], **{k: [] for k in args.keep}}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeats):
            times["bare"].append(bare(model, source))
            for k in args.keep:
                times[k].append(recorded(model, source, k, Path(d)))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        "| what | median s | ratio to bare forward | target |",
        "|---|---|---|---|",
        f"| bare forward pass | {med['bare']:.2f} | 1.00 | |",
    ]
    targets = {"activations": "≤ 1.4× (issue 2)", "summaries": "≤ 1.15× (issue 3)", "both": ""}
    for k in args.keep:
        rows.append(f"| record 6 FFN sites, keep={k}, fp16 | {med[k]:.2f} | {med[k] / med['bare']:.2f}× | {targets.get(k, '')} |")
    body = (
        f"MiniLM (all-MiniLM-L6-v2), {args.docs} documents of the bundled corpus, {tokens} tokens, "
        f"batch 32, {torch.get_num_threads()} torch threads, median of {args.repeats} alternating repeats.\n\n"
        + "\n".join(rows)
    )
    write_section("record" if args.docs == 600 else f"record-{args.docs}-docs", body)


if __name__ == "__main__":
    main()
