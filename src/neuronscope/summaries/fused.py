"""The fused summary kernel: one compiled pass over a batch feeds every part of a site.

:meth:`SiteSummaries.update <neuronscope.summaries.site.SiteSummaries.update>` calls
:func:`fused_update`. Per value ``a = acts[i, u]`` the kernel (``numba``, ``cache=True``,
``nogil``; blocks of 64 neurons, split over :func:`threads` threads) accumulates, in one
read of the batch:

* moments: ``Σa``, ``Σa²``, ``Σ|a|`` (float64), ``min``, ``max`` (float32);
* firing: ``#{a > 0}``, ``#{|a| > t_j}`` per neuron and ``#{u: a_u > 0}`` per row;
* histogram: bucket ``clip(floor(a * s + h), 0, n_bins + 1)`` in float32, exactly the
  arithmetic of :class:`~neuronscope.summaries.histogram.Histogram` (rows with
  ``sample % stride == 0`` only);
* per group (labels, positions): ``#{a > 0}``; per label group ``Σa`` and ``Σa²``
  (float64);
* per distinct token id of the batch, ``Σa`` in float64 per block of neurons (in cache),
  added once to the token's float32 slot sum at the end of the block (ids without a slot
  go to the float64 "other" sum): one rounding per batch, as the numpy part, without a
  batch-sized table (slots from :meth:`TokenMeans.assign
  <neuronscope.summaries.tokens.TokenMeans.assign>` before the kernel);
* top-k: each value that beats its neuron's k-th kept example (``a > kth``, or
  ``a == kth`` and a smaller sample id; every value while fewer than ``k`` are kept) is
  inserted in place into a copy of the sorted kept values and ids; the part then gathers
  the inserted examples' coordinates and context (:meth:`TopK.fold
  <neuronscope.summaries.topk.TopK.fold>`). No sort, no ``np.partition``: a neuron's
  insertions over a stream of ``N`` values average ``k (1 + ln(N / k))``.

Each part then folds these batch aggregates with the same code its numpy ``update`` uses,
so integer results (counts, histograms, top-k sets) equal the numpy reference exactly and
float sums differ only by summation order. NaN is rejected (``NeuronscopeError``) before
any part changes (one summing pass first); ±Inf are values like any other (as in the
numpy parts).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.kernels import Batch

#: neurons per block (a row's 64 float32 are four cache lines); threads take block ranges.
BLOCK = 64
#: below this many values per thread a batch runs on one thread (thread hand-off ~20 µs).
_MIN_VALUES_PER_THREAD = 1 << 16
_KERNEL = None
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    global _POOL, _POOL_LOCK
    _POOL = None  # a forked child has the pool object but none of its threads
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of at least ``n`` threads for the kernel's block ranges (made anew in a
    forked child, whose copy of the pool has no threads)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < n:
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="neuronscope-summaries")
        return _POOL


def _build():
    """Compile (or load from numba's on-disk cache) the kernel."""
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)
    def kernel(acts, thr_abs, h_scale, h_shift, h_top, h_rows,
               sample, tk_vals, tk_samp, tk_src, tk_n,
               fkeys, skeys, n_sq, tok_key, tok_dest, tok_sums, tok_other,
               s1, s2, sabs, vmin, vmax, pos_count, abs_count, hist, row_pos,
               ftab, stab, sqtab, block, b_first, b_stop):
        n, units = acts.shape
        n_t = thr_abs.shape[0]
        n_f = fkeys.shape[1]
        n_s = skeys.shape[1]
        k = tk_vals.shape[1]
        n_u = tok_dest.shape[0]
        # the tables are indexed flat with unsigned offsets, never through a per-row view
        # like ftab[g, j0:j0 + w]: a view costs two atomic reference-count updates, and a
        # signed 2-d index a negative-index check (together ~25% of the kernel's time)
        n_bins2 = hist.shape[0] // units  # hist: (units, n_bins + 2) flattened
        uunits = np.uint64(units)
        ftabf = ftab.reshape(-1)
        actsf = acts.reshape(-1)
        tok_sumsf = tok_sums.reshape(-1)
        abs_countf = abs_count.reshape(-1)
        stabf = stab.reshape(-1)
        sqtabf = sqtab.reshape(-1)
        for bi in range(b_first, b_stop):
            j0 = bi * block
            w = min(block, units - j0)
            hb = np.empty(w, dtype=np.uint64)  # the row's flat histogram indices
            h_off = (np.arange(w) + j0).astype(np.uint64) * np.uint64(n_bins2)
            # a value enters the top-k when it reaches kt (the k-th kept value; -inf while
            # fewer than k are kept) and then beats the k-th by (value desc, sample asc)
            kt = np.empty(w, dtype=np.float32)
            for c in range(w):
                kt[c] = tk_vals[j0 + c, k - 1] if tk_n[j0 + c] == k else -np.inf
            # the block's slices of the outputs (zeros, +inf, -inf on entry) accumulate in place
            l1 = s1[j0 : j0 + w]
            l2 = s2[j0 : j0 + w]
            la = sabs[j0 : j0 + w]
            lmin = vmin[j0 : j0 + w]
            lmax = vmax[j0 : j0 + w]
            lpos = pos_count[j0 : j0 + w]
            # per distinct token of the batch, this block's Σa (float64, stays in cache)
            loc = np.zeros((n_u, w))
            locf = loc.reshape(-1)
            uj0 = np.uint64(j0)
            row = np.empty(w, dtype=np.float32)
            for i in range(n):
                # the row's block copied into one buffer (no view per row)
                ro = np.uint64(i) * uunits + uj0
                for c in range(w):
                    row[c] = actsf[ro + np.uint64(c)]
                # one short loop per accumulator: few arrays per loop, so each vectorizes
                for c in range(w):
                    a64 = np.float64(row[c])
                    l1[c] += a64
                    l2[c] += a64 * a64
                for c in range(w):
                    la[c] += abs(np.float64(row[c]))
                for c in range(w):
                    a = row[c]
                    lmin[c] = a if a < lmin[c] else lmin[c]
                    lmax[c] = a if a > lmax[c] else lmax[c]
                active = 0
                for c in range(w):
                    p = np.int32(row[c] > 0)
                    lpos[c] += p
                    active += p
                # top-k reach per group of 8 neurons: the insertion loop below visits only
                # the groups where some value reaches its neuron's k-th
                reach = 0
                for c in range(w):
                    reach += np.int32(row[c] >= kt[c])
                row_pos[bi, i] = active
                for t in range(n_t):
                    th = thr_abs[t]
                    o = np.uint64(t) * uunits + uj0
                    for c in range(w):
                        abs_countf[o + np.uint64(c)] += np.int32(abs(row[c]) > th)
                if h_rows[i]:
                    for c in range(w):
                        x = row[c] * h_scale
                        x = x + h_shift
                        # clip to [0, n_bins + 1]; NaN -> 0 (the batch is rejected later)
                        x = x if x > 0 else np.float32(0)
                        hb[c] = np.uint64(np.int32(x if x < h_top else h_top)) + h_off[c]
                    for c in range(w):
                        hist[hb[c]] += 1
                for f in range(n_f):
                    g = fkeys[i, f]
                    if g >= 0:
                        o = np.uint64(g) * uunits + uj0
                        for c in range(w):
                            ftabf[o + np.uint64(c)] += np.int32(row[c] > 0)
                for s in range(n_s):
                    g = skeys[i, s]
                    if g >= 0:
                        o = np.uint64(g) * uunits + uj0
                        if s < n_sq:
                            for c in range(w):
                                a64 = np.float64(row[c])
                                stabf[o + np.uint64(c)] += a64
                                sqtabf[o + np.uint64(c)] += a64 * a64
                        else:
                            for c in range(w):
                                stabf[o + np.uint64(c)] += np.float64(row[c])
                if n_u:
                    o = np.uint64(tok_key[i]) * np.uint64(w)
                    for c in range(w):
                        locf[o + np.uint64(c)] += np.float64(row[c])
                # top-k insertion (rare once the top-k is full): only rows reaching a threshold
                if reach:
                    si = sample[i]
                    for c in range(w):
                        a = row[c]
                        if not a >= kt[c]:
                            continue
                        j = j0 + c
                        m = tk_n[j]
                        if m == k and not (a > tk_vals[j, k - 1] or si < tk_samp[j, k - 1]):
                            continue
                        # the new rank: after every kept example that beats (a, si)
                        q = m if m < k else k - 1
                        while q > 0 and (a > tk_vals[j, q - 1]
                                         or (a == tk_vals[j, q - 1] and si < tk_samp[j, q - 1])):
                            q -= 1
                        last = m if m < k else k - 1
                        for r in range(last, q, -1):
                            tk_vals[j, r] = tk_vals[j, r - 1]
                            tk_samp[j, r] = tk_samp[j, r - 1]
                            tk_src[j, r] = tk_src[j, r - 1]
                        tk_vals[j, q] = a + np.float32(0)  # -0.0 -> +0.0, as the numpy part
                        tk_samp[j, q] = si
                        tk_src[j, q] = k + i
                        if m < k:
                            m += 1
                            tk_n[j] = m
                        if m == k:
                            kt[c] = tk_vals[j, k - 1]
            # tokens: one float32 rounding per batch into the slot's sum; no slot -> "other"
            for u in range(n_u):
                d = tok_dest[u]
                lo = np.uint64(u) * np.uint64(w)
                if d >= 0:
                    o = np.uint64(d) * uunits + uj0
                    for c in range(w):
                        q = o + np.uint64(c)
                        tok_sumsf[q] = np.float32(np.float64(tok_sumsf[q]) + locf[lo + np.uint64(c)])
                else:
                    for c in range(w):
                        tok_other[j0 + c] += locf[lo + np.uint64(c)]

    return kernel


def kernel():
    """The compiled kernel (compiled on first use, then loaded from numba's cache)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def threads() -> int:
    """Threads the kernel runs on: the machine's cores (``os.cpu_count()``, or
    ``NEURONSCOPE_SUMMARY_THREADS``), capped by ``OMP_NUM_THREADS`` when set — Dask's
    single-threaded workers set it to 1, so two workers on two cores do not oversubscribe
    them."""
    n = int(os.environ.get("NEURONSCOPE_SUMMARY_THREADS", "0") or 0) or (os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(n, int(omp))) if omp.isdigit() else n


def _group_keys(codes: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(groups, counts, keys)``: the distinct codes ``>= 0`` (ascending), their row counts,
    and each row's key ``offset + index of its code in groups`` (-1 for codes < 0)."""
    ok = codes >= 0
    groups, inv, cnt = np.unique(codes[ok], return_inverse=True, return_counts=True)
    keys = np.full(len(codes), -1, dtype=np.int32)
    keys[ok] = inv.reshape(-1) + offset
    return groups, cnt, keys


def fused_update(site: Any, b: Batch, needs_coord: Mapping[str, str], n_threads: int | None = None,
                 finite: bool = False) -> None:
    """Fold batch ``b`` into every part of ``site`` (a
    :class:`~neuronscope.summaries.site.SiteSummaries`) through one kernel pass;
    ``needs_coord`` names the sample coordinate a part needs (skipped when ``b`` lacks it).
    The kernel splits the neuron blocks over ``n_threads`` threads (default :func:`threads`).
    ``finite=True``: the caller has checked that ``b.acts`` holds no NaN (``record`` has
    applied :func:`~neuronscope.recording.finite_or_zero`), so the NaN pass is skipped.

    Parts the kernel does not know (custom kinds) get their own ``update(b)``.
    """
    from neuronscope.summaries.firing import Firing
    from neuronscope.summaries.groups import GroupFiring, GroupMoments
    from neuronscope.summaries.histogram import Histogram
    from neuronscope.summaries.moments import Moments
    from neuronscope.summaries.tokens import TokenMeans
    from neuronscope.summaries.topk import TopK

    n, units = b.acts.shape
    if n == 0:
        return
    sample = b.coord("sample")
    moments = firing = hist = topk = tokens = None
    fparts: list[tuple[GroupFiring, np.ndarray, np.ndarray, int]] = []
    mparts: list[tuple[GroupMoments, np.ndarray, np.ndarray, int]] = []
    fkeys: list[np.ndarray] = []
    skeys: list[np.ndarray] = []
    other = []
    n_f = n_s = 0
    for name, part in site.parts.items():
        needs = needs_coord.get(name)
        if needs is not None and needs not in b.samples:
            continue
        if type(part) is Moments and moments is None:
            moments = part
        elif type(part) is Firing and firing is None:
            firing = part
        elif type(part) is Histogram and hist is None:
            hist = part
        elif type(part) is TopK and topk is None:
            topk = part
        elif type(part) is GroupFiring:
            groups, cnt, keys = _group_keys(part.grouping.codes(b), n_f)
            fparts.append((part, groups, cnt, n_f))
            fkeys.append(keys)
            n_f += len(groups)
        elif type(part) is GroupMoments:
            mparts.append((part, None, None, 0))
        elif type(part) is TokenMeans and tokens is None:
            tokens = part
        else:
            other.append(part)
    # label-moment groups first: their rows also get Σa² (the first n_sq key columns)
    for i, (part, _, _, _) in enumerate(mparts):
        groups, cnt, keys = _group_keys(part.grouping.codes(b), n_s)
        mparts[i] = (part, groups, cnt, n_s)
        skeys.append(keys)
        n_s += len(groups)
    n_sq_rows = n_s
    n_sq = len(skeys)
    if tokens is not None:
        tok = b.coord("token_id")
        if tok is None:
            raise NeuronscopeError(
                    "samples lack 'token_id'; set SummaryConfig(token_slots=0) for non-text sources"
                )
    # NaN is refused before any part changes (the token slots are assigned before the
    # kernel runs); one summing pass, an exact look only when the sum is NaN (NaN, or +Inf
    # and -Inf together)
    if not finite:
        with np.errstate(all="ignore"):
            total = np.add.reduce(b.acts, axis=None)
        if np.isnan(total) and np.isnan(b.acts).any():
            raise NeuronscopeError(
                "batch contains NaN: summaries take finite or ±Inf values (record replaces "
                "non-finite activations by 0 and counts them)"
            )
    tok_other = np.zeros(units)
    if tokens is not None:
        uniq, inv, tok_cnt = np.unique(tok, return_inverse=True, return_counts=True)
        tok_key = inv.reshape(-1).astype(np.int32)
        tok_dest = tokens.assign(uniq, tok_cnt)
        tok_sums = tokens.sums
    else:
        tok_key = np.zeros(n, dtype=np.int32)
        tok_dest = np.zeros(0, dtype=np.int64)
        tok_sums = np.zeros((0, units), dtype=np.float32)

    thr_abs = (firing.thresholds if firing is not None else np.zeros(0)).astype(np.float32)
    if hist is not None:
        h_scale = np.float32(hist.n_bins / (hist.edges[-1] - hist.edges[0]))
        h_shift = np.float32(1.0 - hist.edges[0] * float(h_scale))
        h_top = np.float32(hist.n_bins + 1)
        h_rows = (sample % hist.stride == 0) if hist.stride > 1 else np.ones(n, dtype=np.bool_)
        hist_out = np.zeros((units, hist.n_bins + 2), dtype=np.int32)
    else:
        h_scale = h_shift = h_top = np.float32(0)
        h_rows = np.zeros(n, dtype=np.bool_)
        hist_out = np.zeros((units, 2), dtype=np.int32)
    if topk is not None:
        # the kernel works on copies (values, int64 ids, each slot's source): a batch
        # rejected for NaN leaves the part as it was
        tk_vals = topk.values.copy()
        tk_samp = topk.sample.astype(np.int64)
        tk_src = np.broadcast_to(np.arange(topk.k, dtype=np.int32), tk_vals.shape).copy()
        tk_n = np.count_nonzero(topk.sample >= 0, axis=1).astype(np.int32)
    else:
        tk_vals = np.zeros((units, 1), dtype=np.float32)
        tk_samp = np.zeros((units, 1), dtype=np.int64)
        tk_src = np.zeros((units, 1), dtype=np.int32)
        tk_n = np.ones(units, dtype=np.int32)
        tk_vals[:] = np.inf  # nothing reaches it
    n_blocks = (units + BLOCK - 1) // BLOCK
    s1 = np.zeros(units)
    s2 = np.zeros(units)
    sabs = np.zeros(units)
    vmin = np.full(units, np.inf, dtype=np.float32)
    vmax = np.full(units, -np.inf, dtype=np.float32)
    pos_count = np.zeros(units, dtype=np.int32)
    abs_count = np.zeros((len(thr_abs), units), dtype=np.int32)
    row_pos = np.zeros((n_blocks, n), dtype=np.int32)
    ftab = np.zeros((n_f, units), dtype=np.int32)
    stab = np.zeros((n_s, units))
    sqtab = np.zeros((n_sq_rows, units))

    def keys2d(cols: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.stack(cols, axis=1)) if cols else np.zeros((n, 0), dtype=np.int32)

    args = (
        np.ascontiguousarray(b.acts), thr_abs, h_scale, h_shift, h_top, np.ascontiguousarray(h_rows),
        np.ascontiguousarray(sample), tk_vals, tk_samp, tk_src, tk_n,
        keys2d(fkeys), keys2d(skeys), n_sq, tok_key, tok_dest, tok_sums, tok_other,
        s1, s2, sabs, vmin, vmax, pos_count, abs_count, hist_out.reshape(-1), row_pos,
        ftab, stab, sqtab, BLOCK,
    )
    run = kernel()
    n_threads = min(n_threads or threads(), n_blocks, max(1, n * units // _MIN_VALUES_PER_THREAD))
    if n_threads <= 1:
        run(*args, 0, n_blocks)
    else:
        # the kernel releases the GIL (nogil): each thread takes a contiguous range of blocks
        cuts = np.linspace(0, n_blocks, n_threads + 1).round().astype(int).tolist()
        list(_pool(n_threads).map(lambda lo_hi: run(*args, *lo_hi), zip(cuts[:-1], cuts[1:], strict=True)))
    # -- fold ----------------------------------------------------------------------
    if moments is not None:
        moments.fold(n, s1, s2, sabs, vmin, vmax)
    if firing is not None:
        firing.fold(n, pos_count, abs_count, row_pos.sum(axis=0, dtype=np.int64))
    if hist is not None:
        hist.fold(hist_out, int(np.count_nonzero(h_rows)))
    for part, groups, cnt, off in fparts:
        part.fold(groups, cnt, ftab[off : off + len(groups)])
    for part, groups, cnt, off in mparts:
        part.fold(groups, cnt, stab[off : off + len(groups)], sqtab[off : off + len(groups)])
    if tokens is not None:
        tokens.fold_counts(tok_dest, tok_cnt, tok_other)
    if topk is not None:
        topk.fold(b, tk_vals, tk_samp, tk_src)
    for part in other:
        part.update(b)


def update_sites(sites: Mapping[str, Any], acts: Mapping[str, np.ndarray], samples: Mapping[str, np.ndarray],
                 n_threads: int | None = None, finite: bool = False) -> None:
    """``sites[s].update(acts[s], samples, finite=finite)`` for every site, the sites spread
    over ``n_threads`` threads (default :func:`threads`; each site's kernel on one): with
    several sites per batch (MiniLM's six FFN layers) this also runs the parts' numpy folds
    side by side, where splitting one site's neuron blocks would leave them serial."""
    names = list(sites)
    values = sum(np.shape(acts[s])[0] * np.shape(acts[s])[1] for s in names)
    n = min(n_threads or threads(), len(names), max(1, values // _MIN_VALUES_PER_THREAD))
    if n <= 1:
        for s in names:
            sites[s].update(acts[s], samples, threads=n_threads, finite=finite)
        return
    list(_pool(n).map(lambda s: sites[s].update(acts[s], samples, threads=1, finite=finite), names))
