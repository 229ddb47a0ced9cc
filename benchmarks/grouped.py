"""Per-document mean of a stored site: the README's lazy grouped style, before and after.

One FFN site of MiniLM recorded over the bundled corpus (float16 in the store), reduced to one
row per document, in the same process:

* **lazy, xarray without flox** — ``run.population(site).astype("float32").groupby("doc").mean()``
  with ``xr.set_options(use_flox=False)``: what the README's style cost before flox was a
  dependency (one dask slice per document);
* **load, then groupby** — ``.load()`` first, then the same groupby in memory (the workaround);
* **lazy, xarray with flox** — the same lazy expression, now the default (flox's grouped
  reductions on the dask chunks);
* **``Run.pooled(site, by="doc")``** — the store-side pooling: each block of rows read once and
  reduced with one sparse group-indicator product (also ``max``, ``first``, ``last``).

All four give the same values (checked). Run: ``cd benchmarks && ../.venv/bin/python grouped.py
[--run PATH] [--site NAME]`` (without ``--run``: the run of ``compare_store.py``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr
from _results import write_section
from compare_store import DEFAULT_RUN, ensure_run


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a run with stored activations")
    ap.add_argument("--site", default="encoder.layer.3.intermediate", help="the site to pool")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the fast paths (best taken)")
    args = ap.parse_args()
    run = ensure_run(args.run)
    site = args.site

    def lazy():
        return run.population(site).astype("float32").groupby("doc").mean().compute()

    def loaded():
        return run.population(site).load().astype("float32").groupby("doc").mean()

    with xr.set_options(use_flox=False):
        t_noflox, ref = timed(lazy)
    t_flox, t_load, t_pooled = [], [], []
    for _ in range(args.repeats):
        t, v_flox = timed(lazy)
        t_flox.append(t)
        t, v_load = timed(loaded)
        t_load.append(t)
        t, v_pooled = timed(lambda: run.pooled(site, by="doc", how="mean"))
        t_pooled.append(t)
    flox, load, pooled = min(t_flox), min(t_load), min(t_pooled)
    diff = max(float(np.abs(v.values - ref.values).max()) for v in (v_flox, v_load, v_pooled))
    assert np.array_equal(v_pooled["doc"].values, ref["doc"].values)
    pop = run.population(site)
    body = f"""
Site {site}: {pop.shape[0]} samples × {pop.shape[1]} neurons (float16 in the store), {ref.shape[0]}
documents. Fast paths: best of {args.repeats}; the no-flox path once.

| path | s | vs load-then-groupby |
|---|---|---|
| lazy `groupby("doc").mean()`, xarray without flox (before) | {t_noflox:.2f} | {t_noflox / load:.1f}× |
| `.load()`, then `groupby("doc").mean()` (the workaround) | {load:.2f} | 1.00 |
| lazy `groupby("doc").mean()`, xarray with flox (now the default) | {flox:.2f} | **{flox / load:.2f}×** |
| `run.pooled(site, by="doc")` (store-side pooling) | {pooled:.2f} | **{pooled / load:.2f}×** |

Max |difference| between the four results: {diff:.1e} (float32 sums on the xarray paths).
"""
    write_section("grouped", body)


if __name__ == "__main__":
    main()
