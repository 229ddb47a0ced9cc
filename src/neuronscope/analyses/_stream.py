"""Centred cross-products of many populations, streamed from their stores in row blocks.

:func:`centred_cross_products` is how ``compare_all`` compares populations that live in a
run (dask-backed ``xarray.DataArray`` from ``Run.population``) without holding their
activations in memory: it reads the populations row block by row block (every block of every
population needed by a pass is read once, the next block while the current one is
multiplied), shifts each by a fixed offset (its first block's mean, so float32 products keep
the centred variance), and accumulates the column sums and ``XᵢᵀXⱼ`` of every requested pair
in float64 — float32 (and float16) data multiply in float32 blocks, anything else in float64,
as :func:`neuronscope.analyses._linalg.crossprod` does in memory. The centred
``Cᵢⱼ = Σ(xᵢ−sᵢ)(xⱼ−sⱼ)ᵀ − Σ(xᵢ−sᵢ) Σ(xⱼ−sⱼ)ᵀ / n`` is exact (shift-invariant).

Memory is bounded by ``max_bytes``: the pairs are packed into *passes* whose float64
accumulators fit (each pass reads only the populations its pairs involve; with enough memory
there is one pass, i.e. every population is read exactly once), and the row block is sized so
two blocks of a pass (the one being multiplied and the one being read) fit beside them. A
population's own ``XᵢᵀXᵢ`` (its factor) is accumulated in the first pass that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

from neuronscope.errors import NeuronscopeError

#: Default memory bound of one streamed comparison (accumulators + two row blocks).
MAX_BYTES = 2 << 30
#: Fewest rows per block (below this, GEMMs get inefficient).
MIN_ROWS = 256
#: Most rows per block (float32 products of at most this many rows are summed in float64).
MAX_ROWS = 4096
_FLOAT32 = (np.dtype(np.float32), np.dtype(np.float16))

Pair = tuple[int, int]


def is_lazy(p: Any) -> bool:
    """True for a dask-backed population (a DataArray over a dask array, or a dask array)."""
    from dask import is_dask_collection

    data = p.data if isinstance(p, xr.DataArray) else p
    return bool(is_dask_collection(data))


def _data(p: Any) -> Any:
    """The array behind a population: the DataArray's data (dask or numpy) or ``p`` itself."""
    if isinstance(p, xr.DataArray):
        return p.data
    return p if hasattr(p, "shape") and hasattr(p, "dtype") else np.asarray(p)


def check_shapes(pops: Sequence[Any], names: Sequence[str], min_samples: int = 3) -> int:
    """Validate populations without reading them; returns their common number of rows.

    Each must be 1-D or 2-D (samples, neurons), real-valued, with at least one neuron, at least
    ``min_samples`` rows, and all the same number of rows (else a one-line error naming two).
    """
    n_ref = None
    for p, name in zip(pops, names, strict=True):
        data = _data(p)
        kind = np.dtype(data.dtype).kind
        if kind == "c":
            raise NeuronscopeError(f"{name} is complex-valued; give real responses (e.g. np.abs or .real first)")
        if kind not in "biuf":
            raise NeuronscopeError(f"{name} has dtype {data.dtype}; give numeric (samples, neurons) values")
        if data.ndim not in (1, 2):
            raise NeuronscopeError(f"{name} has shape {tuple(data.shape)}; give a 2-D (samples, neurons) array")
        if data.ndim == 2 and data.shape[1] < 1:
            raise NeuronscopeError(f"{name} has no neurons; select at least one unit")
        n = int(data.shape[0])
        if n < min_samples:
            raise NeuronscopeError(f"{name} has {n} samples; comparisons need at least {min_samples} stimuli")
        if n_ref is None:
            n_ref, first = n, name
        elif n != n_ref:
            raise NeuronscopeError(
                f"{first} has {n_ref} samples and {name} has {n}; populations cover different "
                "numbers of stimuli — give the same stimuli (or pool both per document first)"
            )
    return int(n_ref or 0)


def width(p: Any) -> int:
    """Number of neurons of a population (1 for a 1-D array)."""
    data = _data(p)
    return int(data.shape[1]) if data.ndim == 2 else 1


def plan_passes(widths: Sequence[int], pairs: Sequence[Pair], budget: int) -> list[list[Pair]]:
    """Pack ``pairs`` (and the diagonal ``(i, i)`` of every population they involve) into passes
    whose float64 accumulators (``8 dᵢ dⱼ`` bytes a matrix) fit in ``budget`` bytes.

    Matrices are taken in order, each population's diagonal just before the first pair that
    needs it, and a pass is closed when the next matrix would not fit — so every factor is
    complete by the end of the pass of each pair that uses it, and with enough memory there is
    a single pass. A single matrix larger than the budget gets a pass of its own.
    """
    passes: list[list[Pair]] = []
    current: list[Pair] = []
    used = 0
    have_diag: set[int] = set()
    for i, j in dict.fromkeys((min(a, b), max(a, b)) for a, b in pairs):
        need = [(k, k) for k in dict.fromkeys((i, j)) if k not in have_diag]
        if i != j:
            need.append((i, j))
        for a, b in need:
            cost = 8 * widths[a] * widths[b]
            if current and used + cost > budget:
                passes.append(current)
                current, used = [], 0
            current.append((a, b))
            used += cost
            if a == b:
                have_diag.add(a)
    if current:
        passes.append(current)
    return passes


def _block_rows(n: int, pass_width: int, budget: int, chunk: int | None) -> int:
    """Rows per block so the blocks in flight (the one being multiplied, the one being read
    and its shifted copy: ~12 bytes an element) fit in ``budget``: at most :data:`MAX_ROWS`,
    at least :data:`MIN_ROWS`, and a whole number of the store's row chunks — or an even
    fraction of one — so no chunk is decoded more often than needed."""
    rows = int(np.clip(budget // max(1, 12 * pass_width), MIN_ROWS, MAX_ROWS))
    if chunk:
        if rows >= chunk:
            rows -= rows % chunk
        else:
            rows = max(MIN_ROWS, chunk // -(-chunk // rows))
    return min(rows, max(n, 1))


def _row_chunk(pops: Sequence[Any]) -> int | None:
    for p in pops:
        data = _data(p)
        if is_lazy(data) and getattr(data, "chunks", None):
            return int(data.chunks[0][0])
    return None


class _Reader:
    """Reads row blocks of a pass's populations in order (dask-backed ones in one
    ``dask.compute``) and returns them centred for a streamed merge of cross-products.

    Each block ``B`` (``m`` rows) is centred on its own mean ``μ_B`` (in float64, cast to the
    working dtype) and gets one extra row ``sqrt(nₐ m / (nₐ + m)) (μ_B − μₐ)``, with ``μₐ`` the
    mean of the ``nₐ`` rows before it; so ``ΣBᵢᵀBⱼ`` over the augmented blocks is exactly the
    centred cross-product of all rows (the pairwise update of Chan, Golub & LeVeque 1979), with
    every product taken on centred data — as accurate as centring the whole matrix first.
    """

    def __init__(self, pops: Sequence[Any], members: Sequence[int], names: Sequence[str],
                 float64: bool = False):
        self.pops = pops
        self.members = list(members)
        self.names = names
        self.dtypes = {k: (np.float32 if np.dtype(_data(pops[k]).dtype) in _FLOAT32 and not float64
                           else np.float64) for k in self.members}
        self.means: dict[int, np.ndarray] = {}
        self.seen = 0

    def __call__(self, r0: int, r1: int) -> dict[int, np.ndarray]:
        import dask

        raw: dict[int, Any] = {}
        lazy = []
        for k in self.members:
            block = _data(self.pops[k])[r0:r1]
            if is_lazy(block):
                lazy.append(k)
            raw[k] = block
        if lazy:
            for k, value in zip(lazy, dask.compute(*[raw[k] for k in lazy]), strict=True):
                raw[k] = value
        m, na = r1 - r0, self.seen
        weight = np.sqrt(na * m / (na + m))
        out = {}
        for k in self.members:
            a = np.asarray(raw[k])
            if a.ndim == 1:
                a = a[:, None]
            mu = a.mean(axis=0, dtype=np.float64)
            if not np.isfinite(mu).all():
                raise NeuronscopeError(f"{self.names[k]} contains NaN or Inf; drop or impute those values first")
            dt = self.dtypes[k]
            c = np.empty((m + 1, a.shape[1]), dtype=dt)
            np.subtract(a, mu.astype(dt), out=c[:m], casting="unsafe")
            before = self.means.get(k, mu)
            c[m] = weight * (mu - before)
            self.means[k] = before + (mu - before) * (m / (na + m))
            out[k] = c
        self.seen = na + m
        return out


def centred_cross_products(
    pops: Sequence[Any],
    pairs: Sequence[Pair],
    *,
    max_bytes: int = MAX_BYTES,
    advance: Callable[..., None] | None = None,
    names: Sequence[str] | None = None,
    float64: bool = False,
) -> Iterator[tuple[int, dict[Pair, np.ndarray]]]:
    """Stream the centred cross-products of ``pairs`` of ``pops`` (indices into ``pops``).

    Yields ``(n, {(i, j): Cᵢⱼ})`` once per pass (see :func:`plan_passes`), ``i <= j``, with
    ``Cᵢⱼ`` the float64 ``(dᵢ, dⱼ)`` centred cross-product ``XᵢcᵀXⱼc`` over all ``n`` rows;
    every pass also holds ``(i, i)`` for each population whose diagonal it computed.
    ``advance(done, detail)`` is called after each row block (``done`` counts blocks over all
    passes; the total is :func:`count_blocks`). NaN or Inf anywhere raises a one-line error
    naming the population. ``float64=True`` multiplies float32 data in float64 too (for
    metrics that whiten, where float32 rounding of small directions is amplified).
    """
    names = list(names) if names is not None else [f"population {i}" for i in range(len(pops))]
    n = check_shapes(pops, names)
    widths = [width(p) for p in pops]
    acc_budget = max_bytes * 3 // 4
    passes = plan_passes(widths, pairs, acc_budget)
    chunk = _row_chunk(pops)
    done = 0
    for pi, plan in enumerate(passes):
        members = list(dict.fromkeys(k for pair in plan for k in pair))
        rows = _block_rows(n, sum(widths[k] for k in members), max_bytes - acc_budget, chunk)
        starts = list(range(0, n, rows))
        reader = _Reader(pops, members, names, float64)
        acc = {pair: np.zeros((widths[pair[0]], widths[pair[1]])) for pair in plan}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ns-read") as pool:
            future = pool.submit(reader, starts[0], min(n, starts[0] + rows))
            for bi in range(len(starts)):
                blocks = future.result()
                if bi + 1 < len(starts):
                    nxt = starts[bi + 1]
                    future = pool.submit(reader, nxt, min(n, nxt + rows))
                for (i, j), a in acc.items():
                    x, y = blocks[i], blocks[j]
                    if x.dtype != y.dtype:
                        x, y = x.astype(np.float64), y.astype(np.float64)
                    a += x.T @ y
                del blocks
                done += 1
                if advance is not None:
                    advance(done, f"pass {pi + 1}/{len(passes)}" if len(passes) > 1 else "")
        yield n, acc
        del acc


def count_blocks(pops: Sequence[Any], pairs: Sequence[Pair], max_bytes: int = MAX_BYTES) -> int:
    """How many row blocks :func:`centred_cross_products` reads over all its passes."""
    n = int(_data(pops[0]).shape[0]) if pops else 0
    widths = [width(p) for p in pops]
    acc_budget = max_bytes * 3 // 4
    chunk = _row_chunk(pops)
    total = 0
    for plan in plan_passes(widths, pairs, acc_budget):
        members = dict.fromkeys(k for pair in plan for k in pair)
        rows = _block_rows(n, sum(widths[k] for k in members), max_bytes - acc_budget, chunk)
        total += -(-n // rows) if n else 0
    return total
