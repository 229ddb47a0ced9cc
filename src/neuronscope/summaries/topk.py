"""Top-k activating examples per neuron, with each example's context window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import (
    INT32_MAX,
    Batch,
    as_batch,
    col_count,
    compact_counts,
    permute_slots,
    window_gather,
)

_EMPTY_KEY = np.iinfo(np.int64).max


def _group(b: Batch) -> np.ndarray | None:
    """The rows' document id, or item id for sources without documents (conv positions)."""
    doc = b.coord("doc")
    return doc if doc is not None else b.coord("item")


def _order_key(cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """int64 key ordering entries by (neuron asc, activation desc): the float32 bits made
    monotone (``bits ^ 0x7fffffff`` for negatives), negated, in the low 33 bits."""
    bits = values.astype(np.float32).view(np.int32).astype(np.int64)
    ascending = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (cols.astype(np.int64) << 33) | ((1 << 31) - ascending)


class TopK:
    """The ``k`` highest activations of each neuron, exact in one pass with bounded memory
    — the examples of Neuroscope pages and OpenAI's ``NeuronRecord``.

    Per neuron the examples are ordered by (activation descending, global sample id
    ascending); that total order makes the kept set independent of batch and merge
    order. Each example keeps ``sample``, ``doc`` (the ``item`` id for sources without
    documents), ``pos``, ``token_id`` (-1 when the source has none) and
    ``context[j] = a(pos - W + j)`` of the same neuron in the same document or item (NaN
    outside it; without documents or positions only the centre is set).

    Update, vectorised: a batch value is a candidate only if it beats the neuron's
    current k-th example (``a > kth``, or an equal value with a smaller sample id);
    neurons not yet full, or with very many candidates, get the batch's exact top-k
    by ``np.partition``. Candidates are ranked against the kept examples by a binary
    search on an int64 (neuron, -activation) key and among themselves by one sort
    (see ``_absorb``); only moved or new examples are written. Memory:
    ``units * k * (5 + 2W + 1)`` numbers, independent of the number of batches: the ids
    are int32 until one exceeds ``2**31 - 1`` (then that array becomes int64, never wraps);
    ``context`` is stored in ``context_dtype`` (float16 for a float16 run: the stored
    activations have no more precision).
    """

    kind = "topk"

    def __init__(self, units: int, k: int = 32, window: int = 8, context_dtype: str = "float32") -> None:
        self.units = int(units)
        self.k = int(k)
        self.window = int(window)
        if self.k < 1 or self.window < 0:
            raise NeuronscopeError("top-k needs k >= 1 and window >= 0")
        if context_dtype not in ("float16", "float32"):
            raise NeuronscopeError(f"context_dtype must be float16 or float32, not {context_dtype!r}")
        shape = (self.units, self.k)
        self.values = np.full(shape, -np.inf, dtype=np.float32)
        self.sample = np.full(shape, -1, dtype=np.int32)
        self.doc = np.full(shape, -1, dtype=np.int32)
        self.pos = np.full(shape, -1, dtype=np.int32)
        self.token_id = np.full(shape, -1, dtype=np.int32)
        self.context = np.full((*shape, 2 * self.window + 1), np.nan, dtype=context_dtype)

    # -- update -----------------------------------------------------------------
    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a float32 ``(n, units)`` batch (rows of a document contiguous, in order)."""
        b = as_batch(acts, samples, self.units)
        a = b.acts
        n, units = a.shape
        if n == 0:
            return
        sample = b.coord("sample")
        full = self.sample[:, -1] >= 0
        kth, kth_s = self.values[:, -1], self.sample[:, -1]
        thr = np.where(full, kth, np.inf).astype(np.float32)
        flat = np.flatnonzero(a > thr)
        rows, cols = np.divmod(flat, units)
        row_major = True  # candidates in (row, col) order until others are appended
        # equal to the k-th value but with a smaller sample id (only if ids can be smaller)
        tie_cols = np.flatnonzero(full & (kth_s > sample.min()))
        if len(tie_cols):
            eq = (a[:, tie_cols] == kth[tie_cols]) & (sample[:, None] < kth_s[tie_cols])
            r, c = np.nonzero(eq)
            rows, cols = np.concatenate([rows, r]), np.concatenate([cols, tie_cols[c]])
            row_major = False
        per_col = np.bincount(cols, minlength=units)
        self._finish(b, rows, cols, ~full | (per_col > max(4 * self.k, n // 8)), row_major)

    def fold(self, b: Batch, values: np.ndarray, sample: np.ndarray, src: np.ndarray) -> None:
        """Take the fused kernel's new top-k of batch ``b``: ``values`` float32 and
        ``sample`` int64 ``(units, k)`` as the kernel left them (sorted by activation desc,
        sample id asc), and ``src[u, r]`` the origin of slot ``r`` — ``i < k``: the kept
        slot ``i`` before the batch; ``k + i``: batch row ``i``. Only neurons whose slots
        changed are rewritten (compiled slot moves, :func:`permute_slots`); inserted
        examples get ``doc``/``pos``/``token_id`` and their context from the batch (as
        :meth:`update`, through :func:`window_gather`)."""
        k = self.k
        moved = np.flatnonzero((src != np.arange(k, dtype=src.dtype)).any(axis=1))
        if not len(moved):
            return
        src = src[moved]
        new_t, new_r = np.nonzero(src >= k)
        rows = src[new_t, new_r].astype(np.int64) - k
        cols = moved[new_t]
        coords = {"doc": _group(b), "pos": b.coord("pos"), "token_id": b.coord("token_id")}
        batch_vals = {
            "sample": sample[cols, new_r],
            **{n: (-1 if c is None else c[rows]) for n, c in coords.items()},
        }
        for name, value in batch_vals.items():
            arr = getattr(self, name)
            if arr.dtype == np.int32 and np.size(value) and int(np.max(value)) > INT32_MAX:
                setattr(self, name, arr.astype(np.int64))  # widen, never wrap
        self.values[moved] = values[moved]
        self.sample[moved] = sample[moved]
        first, last = self._doc_bounds(b)
        for name in ("doc", "pos", "token_id", "context"):
            permute_slots(getattr(self, name), moved, src, k)
        for name in ("doc", "pos", "token_id"):
            getattr(self, name)[cols, new_r] = batch_vals[name]
        self.context[cols, new_r] = window_gather(b.acts, rows, cols, first, last, self.window)

    def _doc_bounds(self, b: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Per batch row, the first and last row of its document (or item); each row alone
        when the source has neither documents nor positions (only the centre is context)."""
        n = b.n
        doc = _group(b)
        if doc is None or (b.coord("pos") is None and b.coord("doc") is None):
            idx = np.arange(n)
            return idx, idx
        change = np.flatnonzero(doc[1:] != doc[:-1]) + 1
        seg = np.searchsorted(change, np.arange(n), side="right")
        return np.r_[0, change][seg], np.r_[change, n][seg] - 1

    def _finish(self, b: Batch, rows: np.ndarray, cols: np.ndarray, pre: np.ndarray, row_major: bool) -> None:
        """Add the exact batch top-k of the ``pre`` neurons to the candidates, then absorb."""
        a, units = b.acts, self.units
        sample = b.coord("sample")
        if pre.any():
            keep = ~pre[cols]
            rows, cols = rows[keep], cols[keep]
            pre_cols = np.flatnonzero(pre)
            r, c = self._batch_topk(a if len(pre_cols) == units else a[:, pre_cols], sample)
            rows = np.concatenate([rows, r])
            cols = np.concatenate([cols, pre_cols[c]])
            row_major = False
        if len(rows):
            self._absorb(b, rows, cols, row_major)

    def _batch_topk(self, sub: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the exact top-k of each column of ``sub`` (ties: smaller id)."""
        n, m = sub.shape
        if n <= self.k:
            return np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
        kth = np.partition(sub, n - self.k, axis=0)[n - self.k]
        gt = sub > kth
        eq = sub == kth
        need = self.k - col_count(gt)
        over = np.flatnonzero(col_count(eq) > need)
        if len(over):
            # among values tied with the k-th, keep the `need` smallest sample ids
            perm = np.argsort(sample, kind="stable")
            e = eq[perm][:, over]
            rank = np.cumsum(e, axis=0, dtype=np.int64)
            take = np.zeros_like(e)
            np.logical_and(e, rank <= need[over], out=take)
            eq[:, over] = False
            r, c = np.nonzero(take)
            eq[perm[r], over[c]] = True
        r, c = np.nonzero(gt | eq)
        return r, c

    def _absorb(self, b: Batch, rows: np.ndarray, cols: np.ndarray, row_major: bool) -> None:
        """Insert batch candidates ``(rows, cols)`` into the sorted kept examples.

        A candidate's new rank is (#kept examples that beat it) + (#candidates of the
        same neuron that beat it); a kept example at rank ``i`` moves down by the number
        of candidates that beat it, i.e. those whose kept-rank is ``<= i``. Only the
        touched neurons are rewritten; no sort over the kept examples.
        """
        a, k = b.acts, self.k
        sample = b.coord("sample")
        v = a[rows, cols] + np.float32(0)  # -0.0 -> +0.0: equal floats, equal keys
        s = sample[rows]
        ckey = _order_key(cols, v)
        # order candidates by (neuron, -a, sample) first: sorted queries make the binary
        # searches below cache-friendly, and the rank among candidates is then positional
        if row_major and (len(s) < 2 or bool(np.all(s[1:] >= s[:-1]))):
            order = np.argsort(ckey, kind="stable")  # ties keep row order = sample order
        else:
            order = np.lexsort((s, ckey))
        rows, cols, v, s, ckey = rows[order], cols[order], v[order], s[order], ckey[order]
        kept_key = _order_key(np.repeat(np.arange(self.units), k), self.values.ravel() + np.float32(0))
        at = np.searchsorted(kept_key, ckey, side="left")
        rank_kept = at - cols * k  # kept examples with a larger activation
        tied = np.flatnonzero(kept_key[np.minimum(at, len(kept_key) - 1)] == ckey)
        if len(tied):
            tc, tv, ts = cols[tied], v[tied, None], s[tied, None]
            kv, ks = self.values[tc], self.sample[tc]
            beaten = (kv > tv) | ((kv == tv) & (ks >= 0) & (ks < ts))
            rank_kept[tied] = beaten.sum(axis=1)
        # a candidate beaten by k kept examples is out, and so are the worse ones after it
        live = rank_kept < k
        rows, cols, v, s, rank_kept = rows[live], cols[live], v[live], s[live], rank_kept[live]
        if not len(rows):
            return
        head = np.r_[True, cols[1:] != cols[:-1]]
        ti = np.cumsum(head) - 1
        touched = cols[head]
        rank_cand = np.arange(len(cols)) - np.flatnonzero(head)[ti]
        new_rank = rank_kept + rank_cand
        m = len(touched)
        # kept example i of a touched neuron moves down by #{candidates with rank_kept <= i}
        hist = np.bincount(ti * (k + 1) + rank_kept, minlength=m * (k + 1)).reshape(m, k + 1)
        shift = np.cumsum(hist[:, :k], axis=1)
        old_rank = np.broadcast_to(np.arange(k), (m, k))
        kept_rank = old_rank + shift
        # only kept examples that move (shift > 0) and stay in the top k are rewritten;
        # filled slots stay filled, so nothing else needs clearing
        moving = (shift > 0) & (kept_rank < k) & (self.sample[touched] >= 0)
        mt, mr = np.nonzero(moving)
        move_col, move_from, move_to = touched[mt], mr, kept_rank[moving]
        win = new_rank < k
        rows, cols, new_rank = rows[win], cols[win], new_rank[win]
        coords = {"doc": _group(b), "pos": b.coord("pos"), "token_id": b.coord("token_id")}
        batch_vals = {
            "values": v[win],
            "sample": s[win],
            **{n: (-1 if c is None else c[rows]) for n, c in coords.items()},
            "context": self._context(b, rows, cols),
        }
        for name, value in batch_vals.items():
            arr = getattr(self, name)
            if arr.dtype == np.int32 and np.size(value) and int(np.max(value)) > INT32_MAX:
                arr = arr.astype(np.int64)  # widen, never wrap
                setattr(self, name, arr)
            arr[move_col, move_to] = arr[move_col, move_from]
            arr[cols, new_rank] = value

    def _context(self, b: Batch, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``a[row + j - W, col]`` for rows of the same document (or item), NaN elsewhere.

        A document's rows are contiguous and in position order (the batch contract), so
        row ``row + j - W`` is position ``pos + j - W`` when it lies in the document's
        row range ``[first, last]``."""
        offs = np.arange(-self.window, self.window + 1)
        nb = rows[:, None] + offs
        first, last = self._doc_bounds(b)
        ok = (nb >= first[rows, None]) & (nb <= last[rows, None])
        nbc = np.clip(nb, 0, b.n - 1)
        return np.where(ok, b.acts[nbc, cols[:, None]], np.float32(np.nan))

    # -- merge / result / state -------------------------------------------------
    def merge(self, other: Self) -> Self:
        """Keep the top-k of the union, by (activation desc, sample id asc)."""
        if (other.units, other.k, other.window) != (self.units, self.k, self.window):
            raise NeuronscopeError("cannot merge top-k summaries with different units, k or window")
        vals = np.concatenate([self.values, other.values], axis=1)
        samp = np.concatenate([self.sample, other.sample], axis=1)
        key = np.where(samp < 0, _EMPTY_KEY, samp)
        idx = np.lexsort((key, -vals), axis=1)[:, : self.k]
        self.values = np.take_along_axis(vals, idx, axis=1)
        self.sample = np.take_along_axis(samp, idx, axis=1)
        for name in ("doc", "pos", "token_id"):
            both = np.concatenate([getattr(self, name), getattr(other, name)], axis=1)
            setattr(self, name, np.take_along_axis(both, idx, axis=1))
        ctx = np.concatenate([self.context, other.context], axis=1)
        self.context = np.take_along_axis(ctx, idx[:, :, None], axis=1).astype(self.context.dtype, copy=False)
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``values`` (units, k) float32 (-inf empty), ``sample``/``doc``/``pos``/``token_id``
        (units, k) int64 (-1 empty), ``context`` (units, k, 2W+1) float32 (NaN outside)."""
        return {
            "values": self.values.copy(),
            "sample": self.sample.astype(np.int64),
            "doc": self.doc.astype(np.int64),
            "pos": self.pos.astype(np.int64),
            "token_id": self.token_id.astype(np.int64),
            "context": self.context.astype(np.float32),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays as kept (ids int32 while they fit, ``context`` in ``context_dtype``);
        attrs ``units``, ``k``, ``window``, ``context_dtype``."""
        attrs = {
            "kind": self.kind, "units": self.units, "k": self.k, "window": self.window,
            "context_dtype": self.context.dtype.name,
        }
        arrays = {n: getattr(self, n) for n in ("values", "sample", "doc", "pos", "token_id", "context")}
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state` (states of older runs, int64 ids and float32 context
        without ``context_dtype``, load too; ids that fit become int32)."""
        self = cls(int(attrs["units"]), int(attrs["k"]), int(attrs["window"]),
                   str(attrs.get("context_dtype", "float32")))
        self.values = np.array(arrays["values"], dtype=np.float32)
        for name in ("sample", "doc", "pos", "token_id"):
            setattr(self, name, compact_counts(arrays[name]))
        self.context = np.array(arrays["context"], dtype=self.context.dtype)
        return self
