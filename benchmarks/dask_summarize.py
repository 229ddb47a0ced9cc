"""Summarizing a stored run with Dask: 2 workers vs 1 (target ≥ 1.8×), same run, same store.

Each worker is a single-threaded process (the fused summary kernel runs on one thread
there: ``OMP_NUM_THREADS=1``); the load average of the shared machine is reported.

    cd benchmarks && ../.venv/bin/python dask_summarize.py [--docs 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _results import write_section  # noqa: E402

import neuronscope as ns  # noqa: E402
from neuronscope.distributed import dask_client, summarize_run  # noqa: E402
from neuronscope.sources.text import load_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per task (default: summarize_run's share per worker)")
    args = ap.parse_args()
    model, tok = ns.load_model("minilm")
    corpus = load_corpus("default")
    corpus.texts = corpus.texts[: args.docs]
    corpus.labels = {k: v[: args.docs] for k, v in corpus.labels.items()}
    with tempfile.TemporaryDirectory() as d:
        run = ns.record(model, ns.TextSource(corpus, tok), "encoder.layer.*.intermediate", out=Path(d) / "r.zarr",
                        keep="activations", dtype="float16", progress=False)
        times: dict[int, list[float]] = {1: [], 2: []}
        load0 = os.getloadavg()[0]
        for workers in (1, 2):
            with dask_client(workers=workers) as client:
                summarize_run(run, client=client, chunk_rows=args.chunk_rows)  # warm-up: imports on workers
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    summarize_run(run, client=client, chunk_rows=args.chunk_rows)
                    times[workers].append(time.perf_counter() - t)
        nbytes = run.n_rows * sum(run.sites.values()) * 2
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    body = (
        f"Summaries of a stored MiniLM run (6 FFN sites, {run.n_rows} tokens, {nbytes / 1e6:.0f} MB fp16), "
        f"`summarize_run` on a LocalCluster, median of {args.repeats}; load average "
        f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores, shared).\n\n"
        "| workers | median s | speed-up | target |\n|---|---|---|---|\n"
        f"| 1 | {m1:.2f} | 1.00× | |\n| 2 | {m2:.2f} | {m1 / m2:.2f}× | ≥ 1.8× |"
    )
    write_section("dask_summarize", body)


if __name__ == "__main__":
    main()
