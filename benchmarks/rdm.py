"""Correlation RDM of 2000 stimuli × 3000 channels: neuronscope ``rdm`` against rsatoolbox
``calc_rdm(method='correlation')`` on the same float64 data, in the same run.

rsatoolbox forms the inner products with ``np.einsum('ik,jk', …)`` (no BLAS); neuronscope
uses one BLAS Gram matrix of the row-centered, row-normalised patterns.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _results import write_section
from rsatoolbox.data import Dataset
from rsatoolbox.rdm import calc_rdm

from neuronscope.analyses.rsa import rdm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 20)) @ rng.standard_normal((20, args.p)) + rng.standard_normal((args.n, args.p))
    ds = Dataset(x)
    rdm(x[:50])  # warm up
    t_ours, t_32, t_ref = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = rdm(x, "correlation")
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours32 = rdm(x, "correlation", precision="float32")
        t_32.append(time.perf_counter() - t0)
    for _ in range(max(1, args.repeats - 2)):
        t0 = time.perf_counter()
        ref = calc_rdm(ds, method="correlation").get_vectors()[0]
        t_ref.append(time.perf_counter() - t0)
    err = float(np.max(np.abs(ours - ref)))
    err32 = float(np.max(np.abs(ours32 - ref)))
    a, a32, b = min(t_ours), min(t_32), min(t_ref)
    body = f"""
{args.n} stimuli × {args.p} channels, float64; best of repeats.

| method | s | ratio |
|---|---|---|
| neuronscope `rdm(X, 'correlation')` (float64 Gram, the default for float64 input) | {a:.3f} | rsatoolbox **{b / a:.1f}× slower**; max abs diff {err:.1e} |
| neuronscope `rdm(X, 'correlation', precision='float32')` (default for float32 input) | {a32:.3f} | rsatoolbox **{b / a32:.1f}× slower**; max abs diff {err32:.1e} |
| rsatoolbox `calc_rdm(method='correlation')` | {b:.3f} | 1.00 |

Targets: ≥ 25× faster, equal to 1e-6, over the {len(ours)} dissimilarities. rsatoolbox's
`einsum` runs on one core; neuronscope's BLAS uses both (the machine is shared with other jobs).
"""
    write_section("rdm", body)


if __name__ == "__main__":
    main()
