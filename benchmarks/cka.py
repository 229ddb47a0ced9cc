"""Linear CKA on n=20000 stimuli × d=1536 neurons (float32, MiniLM-sized populations).

neuronscope's ``linear_cka`` (feature space: XᵀX, YᵀY, XᵀY in float32 row blocks summed in
float64) against, in the same run:

* the n × n Gram form — Kornblith et al.'s reference code (``gram_linear``, ``center_gram``,
  ``cka`` from the paper's Colab), verbatim, on the same float32 arrays (what Brain-Score-style
  implementations do; two 20000² Grams);
* one sgemm of the same shape, ``X.T @ Y`` (float32) — the floor for any exact method.

Best of a few interleaved repeats (this machine is shared).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _results import write_section

from neuronscope.analyses.cka import linear_cka


def gram_linear(x: np.ndarray) -> np.ndarray:
    return x.dot(x.T)


def center_gram(gram: np.ndarray) -> np.ndarray:
    gram = gram.copy()
    means = np.mean(gram, 0, dtype=np.float64)
    means -= np.mean(means) / 2
    gram -= means[:, None].astype(gram.dtype)
    gram -= means[None, :].astype(gram.dtype)
    return gram


def cka_reference(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    gram_x = center_gram(gram_x)
    gram_y = center_gram(gram_y)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    normalization_x = np.linalg.norm(gram_x)
    normalization_y = np.linalg.norm(gram_y)
    return float(scaled_hsic / (normalization_x * normalization_y))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n, d = args.n, args.d
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32) + 0.5
    y = (x[:, : d // 2] @ rng.standard_normal((d // 2, d), dtype=np.float32) / np.sqrt(d)
         + rng.standard_normal((n, d), dtype=np.float32))
    x.T @ y  # warm up BLAS threads

    t_ours, t_gemm = [], []
    for _ in range(args.repeats):
        t, v_ours = timed(lambda: linear_cka(x, y))
        t_ours.append(t)
        t, _ = timed(lambda: x.T @ y)
        t_gemm.append(t)
    t_ref = []
    for _ in range(max(1, args.repeats - 1)):
        t, v_ref = timed(lambda: cka_reference(gram_linear(x - x.mean(0)), gram_linear(y - y.mean(0))))
        t_ref.append(t)
    ours, gemm, ref = min(t_ours), min(t_gemm), min(t_ref)
    v64 = linear_cka(x.astype(np.float64), y.astype(np.float64))  # float64 ground truth
    body = f"""
X, Y: {n} × {d} float32 (random, correlated). Best of {args.repeats} interleaved repeats.

| method | s | ratio |
|---|---|---|
| neuronscope `linear_cka` (feature space) | {ours:.3f} | 1.00 |
| n×n Gram form (Kornblith et al. reference code, float32) | {ref:.3f} | **{ref / ours:.1f}× slower** (target ≥ 20×) |
| one sgemm `X.T @ Y` of the same shape | {gemm:.3f} | ours = **{ours / gemm:.2f}×** one sgemm (target ≤ 2×) |

Values: float64 ground truth {v64:.10f}; neuronscope (float32 blocks, float64 sums)
{v_ours:.10f} (|err| = {abs(v_ours - v64):.1e}); float32 Gram-form reference {v_ref:.10f}
(|err| = {abs(v_ref - v64):.1e}: its float32 n²-long sums lose precision).
Linear CKA needs XᵀX, YᵀY and XᵀY: two symmetric (syrk) products and one general, i.e.
2× the multiply-adds of one sgemm; the Gram form needs 2n²d (= {2 * n / d:.0f}× one sgemm)
plus n² memory ({2 * n * n * 4 / 1e9:.1f} GB for the two float32 Grams).
"""
    write_section("cka", body)


if __name__ == "__main__":
    main()
