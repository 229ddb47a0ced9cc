"""Streamed XᵀY throughput (CrossProducts) as a fraction of this machine's sgemm peak.

Two MiniLM-sized populations (1536 neurons each) arrive in batches of 512 rows, as a
lockstep recording of two models delivers them; ``CrossProducts.update_pair`` shifts them
into its block buffer and accumulates float32 block GEMMs into float64. The reference is a
bare ``numpy`` sgemm (``a.T @ b``, float32) measured in the same run: (1) on the same block
shape, (2) on a large square product (the machine's practical sgemm peak). Measurements are
interleaved and the best of several repeats is kept, because this machine is shared.
"""

from __future__ import annotations

import time

import numpy as np
from _results import write_section

from neuronscope.summaries.crossprod import CrossProducts

NX = NY = 1536
BATCH = 512
ROWS = 8 * 4096
REPEATS = 7


def best(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, NX), dtype=np.float32) + 1.0
    y = rng.standard_normal((ROWS, NY), dtype=np.float32) - 0.5
    block = CrossProducts(NX, NY).block_rows
    a_blk, b_blk = x[:block].copy(), y[:block].copy()
    sq = 3072
    a_sq = rng.standard_normal((sq, sq), dtype=np.float32)
    b_sq = rng.standard_normal((sq, sq), dtype=np.float32)
    a_blk.T @ b_blk  # warm up BLAS threads

    def streamed() -> None:
        cp = CrossProducts(NX, NY)
        for r0 in range(0, ROWS, BATCH):
            cp.update_pair(x[r0 : r0 + BATCH], y[r0 : r0 + BATCH])
        cp.flush()

    def bare_blocks() -> None:
        for _ in range(ROWS // block):
            a_blk.T @ b_blk

    def bare_square() -> None:
        a_sq @ b_sq

    t_stream, t_blocks, t_square = [], [], []
    for _ in range(REPEATS):  # interleaved
        t_stream.append(best(streamed, 1))
        t_blocks.append(best(bare_blocks, 1))
        t_square.append(best(bare_square, 1))
    flops = 2.0 * ROWS * NX * NY
    g_stream = flops / min(t_stream) / 1e9
    g_blocks = flops / min(t_blocks) / 1e9
    g_square = 2.0 * sq**3 / min(t_square) / 1e9
    peak = max(g_blocks, g_square)
    # paired ratio: each streamed run against the bare same-shape run next to it in time
    paired = float(np.median(np.array(t_blocks) / np.array(t_stream)))

    # correctness of the benchmarked path, on a slice (against float64)
    cp = CrossProducts(NX, 64)
    for r0 in range(0, 8192, BATCH):
        cp.update_pair(x[r0 : r0 + BATCH], y[r0 : r0 + BATCH, :64])
    ref = np.corrcoef(x[:8192].T.astype(np.float64), y[:8192, :64].T.astype(np.float64))[:NX, NX:]
    err = float(np.abs(cp.correlation() - ref).max())

    body = f"""
Streamed cross-products `CrossProducts.update_pair` ({NX} × {NY} neurons, {ROWS} rows in
batches of {BATCH}, block {block} rows, float32 GEMMs accumulated in float64) against bare
numpy float32 GEMMs measured in the same run (best of {REPEATS}, interleaved).

| path | GFLOP/s | fraction of peak |
|---|---:|---:|
| streamed XᵀY (neuronscope) | {g_stream:.1f} | **{g_stream / peak:.0%}** (paired: {paired:.0%}) |
| bare sgemm, same block shape ({block}×{NX})ᵀ({block}×{NY}) | {g_blocks:.1f} | {g_blocks / peak:.0%} |
| bare sgemm, {sq}×{sq} square | {g_square:.1f} | {g_square / peak:.0%} |

Peak = the faster of the two bare sgemm figures. Target ≥ 60%: {"met" if min(paired, g_stream / peak) >= 0.6 else "NOT met"}.
Median paired ratio (streamed vs the adjacent same-shape sgemm run) = {paired:.2f}; best-of
ratio = {g_stream / g_blocks:.2f}. Other processes share the 2 cores, so single figures swing
by ±30%; the paired median is the robust number. Max |r − r_float64| on a 8192-row slice: {err:.1e}.
"""
    write_section("xty", body)


if __name__ == "__main__":
    main()
