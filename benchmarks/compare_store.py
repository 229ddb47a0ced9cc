"""Layer × layer linear CKA over a stored run: streamed from the store vs in-memory arrays.

MiniLM recorded over the bundled corpus at 12 sites (the 6 FFN ``intermediate`` sites, 1,536
neurons each, and the 6 attention ``attention.output`` sites, 384 each; float16 activations).
In the same process:

* **streamed** — ``compare_all({site: run.population(site)}, "cka")`` on the dask-backed
  populations: each site's centred ``XᵀX`` and each pair's ``XᵀY`` accumulated from the
  store in row blocks read once (one pass), never all sites in memory;
* **in memory** — the same ``compare_all`` on float32 numpy arrays already loaded (the
  factored in-memory path: each site centred once, one cross product a pair), i.e. the same
  Grams without any reading; the time to load those arrays is reported separately;
* the values of both, and the peak resident memory each added.

Target: streamed ≤ 1.5× the in-memory time, equal values (|Δ| ≤ 1e-5).

Run: ``cd benchmarks && ../.venv/bin/python compare_store.py [--run PATH] [--rows N]``
(without ``--run`` the run is recorded once into ``~/.cache/neuronscope/bench-minilm12.zarr``).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from pathlib import Path

import numpy as np
from _results import write_section

import neuronscope
from neuronscope.analyses.compare import compare_all

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SITES = "encoder.layer.*.intermediate,encoder.layer.*.attention.output"
DEFAULT_RUN = Path.home() / ".cache" / "neuronscope" / "bench-minilm12.zarr"


def peak_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_run(path: Path) -> neuronscope.Run:
    """The 12-site MiniLM run (recorded once if missing or unfinished)."""
    if path.exists():
        run = neuronscope.open_run(path)
        if run.status == "complete":
            return run
    model, tok = neuronscope.load_model("minilm")
    source = neuronscope.TextSource("default", tok, batch_size=32, max_tokens=128)
    return neuronscope.record(model, source, SITES, out=path, keep="activations", dtype="float16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a run with stored activations at many sites")
    ap.add_argument("--rows", type=int, default=0, help="use only the first ROWS samples (0 = all)")
    args = ap.parse_args()
    run = ensure_run(args.run)
    rows = slice(0, args.rows or None)
    lazy = {s: run.population(s).isel(sample=rows) for s in run.sites}
    n = lazy[next(iter(lazy))].shape[0]
    widths = [p.shape[1] for p in lazy.values()]

    base = peak_mb()
    t0 = time.perf_counter()
    streamed = compare_all(lazy, "cka", progress=False)
    t_stream = time.perf_counter() - t0
    mem_stream = peak_mb() - base
    gc.collect()

    t0 = time.perf_counter()
    arrays = {s: p.values.astype(np.float32) for s, p in lazy.items()}
    t_load = time.perf_counter() - t0
    base = peak_mb()
    t0 = time.perf_counter()
    in_memory = compare_all(arrays, "cka")
    t_mem = time.perf_counter() - t0
    mem_mem = peak_mb() - base + sum(a.nbytes for a in arrays.values()) / 2**20
    diff = float(np.abs(streamed.values - in_memory.values).max())

    k = len(lazy)
    pairs = k * (k + 1) // 2
    body = f"""
Run: {run.path.name} — MiniLM over the bundled corpus, {k} sites ({', '.join(map(str, sorted(set(widths))))}
neurons; {sum(widths)} in all), {n} samples, float16 in the store. {k} × {k} linear CKA:
{pairs} centred cross products (the {k} factors XᵢᵀXᵢ and {pairs - k} pairs XᵢᵀXⱼ).

| path | s | ratio | peak memory added |
|---|---|---|---|
| in memory: `compare_all` on float32 arrays already loaded | {t_mem:.1f} | 1.00 | {mem_mem:.0f} MB (arrays + centred copies) |
| streamed: `compare_all` on `run.population(site)` (dask, one pass over the store) | {t_stream:.1f} | **{t_stream / t_mem:.2f}×** (target ≤ 1.5×) | {mem_stream:.0f} MB |
| (loading the arrays for the in-memory path) | {t_load:.1f} | | |

Values: max |streamed − in memory| = {diff:.1e} over the {k} × {k} matrix (float32 blocks summed
in float64 on both paths; the streamed blocks are centred on their own means and merged
exactly, Chan et al. 1979). Both paths do the same multiply-adds; the streamed one reads every
block once and multiplies the previous block while the next is read.
"""
    write_section("compare_store", body)


if __name__ == "__main__":
    main()
