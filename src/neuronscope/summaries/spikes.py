"""Spike-train statistics of a population, streamed and mergeable.

:class:`SpikeStats` reads a population whose values are spike counts per sample bin — the
0/1 spikes of a spiking network recorded per (item, step), spike counts per item, or a
brain recording binned per (trial, time bin) — and keeps, per neuron ``u`` (values
``a_u``; a bin *holds a spike* when ``a_u > 0``):

* **firing rate** ``rate = Σ a / bins`` (spikes per bin; divide by the bin width for Hz) —
  Elephant's ``mean_firing_rate`` of the spike train over the recording.
* **inter-spike-interval coefficient of variation** ``cv = sd(ISI) / mean(ISI)`` (population
  sd, ``scipy.stats.variation`` = Elephant's ``cv``) over the ISIs of all sequences pooled.
  An ISI is the step difference between consecutive spike-holding bins *of the same
  sequence* (the ``sequence`` coordinate, default ``item``: an item's steps, a trial's bins);
  none spans two sequences. Steps come from the ``step`` coordinate (default ``step``; the
  global ``sample`` index when absent), so ISIs are in steps. Poisson (Bernoulli) trains:
  cv → 1 as the rate per bin → 0; regular trains: cv = 0.
* **Fano factor** of spike counts across sequences ``fano = var(N) / mean(N)`` with N the
  spike count of a sequence (population variance, Elephant's ``fanofactor`` over trials):
  Poisson → 1, regular → 0. Sequences of different stimuli add stimulus-driven variance;
  for trial-to-trial variability give the trials of one stimulus.
* **pairwise synchrony** (optional): the Pearson correlation coefficient of the binned spike
  trains, ``r_ij = cov(a_i, a_j) / (sd(a_i) sd(a_j))`` over bins — Elephant's
  ``spike_train_correlation.correlation_coefficient`` of a ``BinnedSpikeTrain`` at the
  sample bin width; on per-trial spike counts (one sample per item or trial) it is the
  spike-count correlation r_sc (Cohen & Kohn 2011, "Measuring and interpreting neuronal
  correlations", Nat. Neurosci. 14:811).

Sequences across batches and merges: a batch's rows are contiguous global ``sample`` ids
(several contiguous runs are allowed), and a sequence is a maximal run of rows with one
``sequence`` id whose steps increase. A sequence cut by a batch boundary is carried as an
*open part* at the edge of a block of contiguous samples: per neuron its spike count, its
first (head) or last (tail) spike step. When two blocks meet (``hi + 1 == lo``) with the
same sequence id on both sides, the ISI across the boundary is added and the parts join;
otherwise both parts are complete. So ISIs and Fano factors are exact whatever the
batching and in any merge order (integer sums: exact; float sums: to rounding). ``result()``
treats every still-open part as complete (the data seen is the whole recording).

A neuron that never spikes has rate 0, no ISI (cv NaN), Fano NaN (mean 0) and NaN
synchrony — never an error.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch, as_batch, col_count

__all__ = ["SpikeStats"]

_NONE = np.int64(-1)
#: Use a sparse product for XᵀX when fewer than this share of values are non-zero.
_SPARSE_BELOW = 0.05


@dataclass
class _Block:
    """Contiguous samples ``lo..hi`` and the open parts at their edges (see module doc)."""

    lo: int
    hi: int
    single: bool  # one sequence part spans the whole block (head part is tail part)
    head_seq: int
    tail_seq: int
    head_step: int  # first step of the head part
    tail_step: int  # last step of the tail part
    head_count: np.ndarray  # (units,) float64 spike count of the head part
    tail_count: np.ndarray
    head_first: np.ndarray  # (units,) int64 first spike step in the head part (-1 none)
    tail_last: np.ndarray  # (units,) int64 last spike step in the tail part (-1 none)


class SpikeStats:
    """Streaming spike statistics per neuron: firing rate, ISI coefficient of variation,
    Fano factor across sequences and (``synchrony=True``) pairwise spike-train correlation.
    See the module docstring for the definitions and how sequences cross batches."""

    kind = "spikes"

    def __init__(self, units: int, sequence: str | None = "item", step: str | None = "step",
                 synchrony: bool = True) -> None:
        self.units = int(units)
        self.sequence = sequence
        self.step = step
        self.synchrony = bool(synchrony)
        u = self.units
        self.bins = 0
        self.count = np.zeros(u)
        self.spike_bins = np.zeros(u, dtype=np.int64)
        self.isi_n = np.zeros(u, dtype=np.int64)
        self.isi_sum = np.zeros(u, dtype=np.int64)
        self.isi_sq = np.zeros(u, dtype=np.int64)
        self.trials = 0
        self.trial_sum = np.zeros(u)
        self.trial_sq = np.zeros(u)
        self.sq = np.zeros(u)
        self.xtx = np.zeros((u, u)) if self.synchrony else np.zeros((0, 0))
        self.blocks: list[_Block] = []

    # ------------------------------------------------------------------ update

    def _coords(self, b: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sid = b.samples["sample"].astype(np.int64)
        seq = b.coord(self.sequence) if self.sequence else None
        seq = np.zeros(b.n, dtype=np.int64) if seq is None else seq
        st = b.samples.get(self.step) if self.step else None
        if st is None:
            step = sid
        else:
            st = np.asarray(st)
            if st.dtype.kind == "f" and not np.array_equal(st, np.round(st)):
                raise NeuronscopeError(f"step coordinate {self.step!r} is not integer; give step indices "
                                       "(or step=None to use the sample order)")
            step = st.astype(np.int64)
        if (step < 0).any():
            raise NeuronscopeError(f"step coordinate {self.step!r} has negative values; give steps >= 0")
        return sid, seq, step

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a batch of spike counts per bin, float32 ``(n, units)``, non-negative."""
        b = as_batch(acts, samples, self.units)
        if b.n == 0:
            return
        a = b.acts
        if float(a.min()) < 0:
            raise NeuronscopeError("spike statistics need non-negative spike counts; record spikes, not potentials")
        sid, seq, step = self._coords(b)
        if (np.diff(sid) <= 0).any():
            raise NeuronscopeError("a batch's sample ids must increase; feed rows in recording order")
        mask = b.pos_mask
        a64 = a.astype(np.float64)
        self.bins += b.n
        self.count += a64.sum(0)
        self.spike_bins += col_count(mask)
        self.sq += np.einsum("ij,ij->j", a64, a64)
        unit, row = np.nonzero(mask.T)  # every spike bin, unit-major, rows ascending within a unit
        if self.synchrony:
            self._cross(a, unit, row)
        # segments: maximal runs of one sequence over consecutive sample ids
        gap = np.diff(sid) != 1
        new_seg = np.ones(b.n, dtype=bool)
        new_seg[1:] = gap | (seq[1:] != seq[:-1])
        starts = np.flatnonzero(new_seg)
        seg = np.cumsum(new_seg) - 1
        inside = ~new_seg[1:]
        if (np.diff(step)[inside] <= 0).any():
            raise NeuronscopeError(f"steps ({self.step or 'sample'}) must increase within a sequence "
                                   f"({self.sequence or 'the recording'})")
        self._isis(unit, row, seg, step)
        seg_counts = np.add.reduceat(a64, starts, axis=0)  # (S, units)
        # contiguous runs of sample ids -> blocks; their first/last segments stay open
        run_start = np.ones(b.n, dtype=bool)
        run_start[1:] = gap
        run_starts = np.flatnonzero(run_start)
        run_ends = np.append(run_starts[1:], b.n) - 1
        first_seg, last_seg = seg[run_starts], seg[run_ends]
        interior = np.ones(len(starts), dtype=bool)
        interior[first_seg] = False
        interior[last_seg] = False
        if interior.any():
            c = seg_counts[interior]
            self.trials += int(interior.sum())
            self.trial_sum += c.sum(0)
            self.trial_sq += np.einsum("ij,ij->j", c, c)
        seg_end = np.append(starts[1:], b.n) - 1
        for r0, r1, s0, s1 in zip(run_starts.tolist(), run_ends.tolist(), first_seg.tolist(), last_seg.tolist(),
                                  strict=True):
            h0, h1, t0, t1 = starts[s0], seg_end[s0], starts[s1], seg_end[s1]
            blk = _Block(
                lo=int(sid[r0]), hi=int(sid[r1]), single=s0 == s1,
                head_seq=int(seq[h0]), tail_seq=int(seq[t1]),
                head_step=int(step[h0]), tail_step=int(step[t1]),
                head_count=seg_counts[s0].copy(), tail_count=seg_counts[s1].copy(),
                head_first=self._edge_spike(mask[h0 : h1 + 1], step[h0 : h1 + 1], first=True),
                tail_last=self._edge_spike(mask[t0 : t1 + 1], step[t0 : t1 + 1], first=False),
            )
            self._insert(blk)

    @staticmethod
    def _edge_spike(mask: np.ndarray, step: np.ndarray, first: bool) -> np.ndarray:
        """Per unit the first (or last) step of ``step`` whose row holds a spike; -1 if none."""
        if not first:
            mask, step = mask[::-1], step[::-1]
        has = mask.any(0)
        idx = mask.argmax(0)
        return np.where(has, step[idx], _NONE).astype(np.int64)

    def _isis(self, unit: np.ndarray, row: np.ndarray, seg: np.ndarray, step: np.ndarray) -> None:
        """ISIs between consecutive spike bins of a unit within one segment of the batch."""
        if len(unit) < 2:
            return
        same = (unit[1:] == unit[:-1]) & (seg[row[1:]] == seg[row[:-1]])
        if not same.any():
            return
        u = unit[1:][same]
        isi = (step[row[1:]] - step[row[:-1]])[same]
        self.isi_n += np.bincount(u, minlength=self.units)
        self.isi_sum += np.bincount(u, weights=isi, minlength=self.units).astype(np.int64)
        self.isi_sq += np.bincount(u, weights=isi.astype(np.float64) ** 2, minlength=self.units).astype(np.int64)

    def _cross(self, a: np.ndarray, unit: np.ndarray, row: np.ndarray) -> None:
        """XᵀX of the batch: a sparse product over the spike bins when spikes are sparse."""
        if len(unit) < _SPARSE_BELOW * a.size:
            import scipy.sparse as sp

            indptr = np.concatenate([[0], np.cumsum(np.bincount(unit, minlength=self.units))])
            xt = sp.csr_matrix((a[row, unit].astype(np.float64), row, indptr), shape=(self.units, len(a)))
            self.xtx += (xt @ xt.T).toarray()
        else:
            # a float32 GEMM of spike counts (small integers) is exact while sums stay below 2**24
            self.xtx += (a.T @ a).astype(np.float64) if len(a) < (1 << 24) else a.T.astype(np.float64) @ a

    # ------------------------------------------------------------------ blocks

    def _fold(self, c: np.ndarray) -> None:
        """A complete sequence with spike counts ``c``."""
        self.trials += 1
        self.trial_sum += c
        self.trial_sq += c * c

    def _join(self, a: _Block, b: _Block) -> _Block:
        """Blocks ``a`` then ``b`` with ``a.hi + 1 == b.lo`` as one block."""
        if a.tail_seq == b.head_seq:
            if b.head_step <= a.tail_step:
                raise NeuronscopeError("steps must increase within a sequence across batches; "
                                       "feed each sequence's steps in order")
            both = (a.tail_last >= 0) & (b.head_first >= 0)
            if both.any():
                isi = np.where(both, b.head_first - a.tail_last, 0)
                self.isi_n += both
                self.isi_sum += isi
                self.isi_sq += isi * isi
            c = a.tail_count + b.head_count
            first = np.where(a.head_first >= 0, a.head_first, b.head_first) if a.single else a.head_first
            last = np.where(b.tail_last >= 0, b.tail_last, a.tail_last) if b.single else b.tail_last
            if a.single and b.single:
                return _Block(a.lo, b.hi, True, a.head_seq, b.tail_seq, a.head_step, b.tail_step, c, c.copy(),
                              first, last)
            if not a.single and not b.single:
                self._fold(c)
            head_count = c if a.single else a.head_count
            tail_count = c if b.single else b.tail_count
            return _Block(a.lo, b.hi, False, a.head_seq, b.tail_seq, a.head_step, b.tail_step,
                          head_count, tail_count, first, last)
        if not a.single:
            self._fold(a.tail_count)
        if not b.single:
            self._fold(b.head_count)
        return _Block(a.lo, b.hi, False, a.head_seq, b.tail_seq, a.head_step, b.tail_step,
                      a.head_count, b.tail_count, a.head_first, b.tail_last)

    def _insert(self, blk: _Block) -> None:
        los = [x.lo for x in self.blocks]
        i = bisect.bisect_left(los, blk.lo)
        if (i > 0 and self.blocks[i - 1].hi >= blk.lo) or (i < len(self.blocks) and self.blocks[i].lo <= blk.hi):
            raise NeuronscopeError("spike statistics saw the same sample twice; merge summaries of disjoint samples")
        if i > 0 and self.blocks[i - 1].hi + 1 == blk.lo:
            blk = self._join(self.blocks.pop(i - 1), blk)
            i -= 1
        if i < len(self.blocks) and blk.hi + 1 == self.blocks[i].lo:
            blk = self._join(blk, self.blocks.pop(i))
        self.blocks.insert(i, blk)

    # ------------------------------------------------------------------ merge / result

    def merge(self, other: Self) -> Self:
        """Fold in the statistics of disjoint samples (any order)."""
        if (other.units, other.sequence, other.step, other.synchrony) != (
                self.units, self.sequence, self.step, self.synchrony):
            raise NeuronscopeError("cannot merge spike statistics with different units, coordinates or synchrony")
        self.bins += other.bins
        self.count += other.count
        self.spike_bins += other.spike_bins
        self.isi_n += other.isi_n
        self.isi_sum += other.isi_sum
        self.isi_sq += other.isi_sq
        self.trials += other.trials
        self.trial_sum += other.trial_sum
        self.trial_sq += other.trial_sq
        self.sq += other.sq
        if self.synchrony:
            self.xtx += other.xtx
        for blk in other.blocks:
            self._insert(_Block(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(blk).items()}))
        return self

    def _closed_trials(self) -> tuple[int, np.ndarray, np.ndarray]:
        n, s, q = self.trials, self.trial_sum.copy(), self.trial_sq.copy()
        for blk in self.blocks:
            parts = [blk.head_count] if blk.single else [blk.head_count, blk.tail_count]
            for c in parts:
                n += 1
                s += c
                q += c * c
        return n, s, q

    def correlation(self) -> np.ndarray:
        """The (units, units) Pearson correlation of the binned spike trains (NaN for a
        neuron without variance; 1 on the diagonal of the others)."""
        if not self.synchrony:
            raise NeuronscopeError("synchrony was not kept; create SpikeStats(..., synchrony=True)")
        n = max(self.bins, 1)
        mu = self.count / n
        cov = self.xtx / n - np.outer(mu, mu)
        var = np.maximum(self.sq / n - mu * mu, 0.0)
        sd = np.sqrt(var)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.outer(sd, sd)
        ok = sd > 1e-12 * np.maximum(np.abs(mu), 1.0)
        r[~ok, :] = np.nan
        r[:, ~ok] = np.nan
        r = np.clip(r, -1.0, 1.0)
        np.fill_diagonal(r, np.where(ok, 1.0, np.nan))
        return r

    def result(self) -> dict[str, np.ndarray]:
        """Per neuron: ``rate`` (spikes per bin), ``count``, ``spike_bins``, ``isi_n``,
        ``isi_mean``, ``isi_cv``, ``trials`` (sequences), ``count_mean``, ``count_var``,
        ``fano``; ``bins`` (); with synchrony ``synchrony`` (units, units) and
        ``mean_synchrony`` (each neuron's mean correlation with the others)."""
        bins = self.bins
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = self.count / bins if bins else np.full(self.units, np.nan)
            n = self.isi_n.astype(np.float64)
            mean = np.where(n > 0, self.isi_sum / np.maximum(n, 1), np.nan)
            var = np.maximum(np.where(n > 0, self.isi_sq / np.maximum(n, 1), np.nan) - mean * mean, 0.0)
            cv = np.where(mean > 0, np.sqrt(var) / mean, np.nan)
            trials, s, q = self._closed_trials()
            cm = s / trials if trials else np.full(self.units, np.nan)
            cvar = np.maximum(q / trials - cm * cm, 0.0) if trials else np.full(self.units, np.nan)
            fano = np.where(cm > 0, cvar / cm, np.nan)
        out = {
            "bins": np.int64(bins), "rate": rate, "count": self.count.copy(), "spike_bins": self.spike_bins.copy(),
            "isi_n": self.isi_n.copy(), "isi_mean": mean, "isi_cv": cv, "trials": np.int64(trials),
            "count_mean": cm, "count_var": cvar, "fano": fano,
        }
        if self.synchrony:
            r = self.correlation()
            off = r.copy()
            np.fill_diagonal(off, np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out["mean_synchrony"] = np.nanmean(off, axis=1) if self.units > 1 else np.full(self.units, np.nan)
            out["synchrony"] = r
        return out

    # ------------------------------------------------------------------ state

    _BLOCK_INT = ("lo", "hi", "head_seq", "tail_seq", "head_step", "tail_step")
    _BLOCK_ARR = ("head_count", "tail_count", "head_first", "tail_last")

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Sums and the open blocks as arrays; the configuration as JSON attrs."""
        u, k = self.units, len(self.blocks)
        arrays: dict[str, np.ndarray] = {
            "bins": np.array([self.bins], dtype=np.int64), "count": self.count, "spike_bins": self.spike_bins,
            "isi_n": self.isi_n, "isi_sum": self.isi_sum, "isi_sq": self.isi_sq,
            "trials": np.array([self.trials], dtype=np.int64), "trial_sum": self.trial_sum,
            "trial_sq": self.trial_sq, "sq": self.sq, "xtx": self.xtx,
            "block_single": np.array([b.single for b in self.blocks], dtype=bool),
        }
        for f in self._BLOCK_INT:
            arrays[f"block_{f}"] = np.array([getattr(b, f) for b in self.blocks], dtype=np.int64)
        for f in self._BLOCK_ARR:
            dt = np.float64 if f.endswith("count") else np.int64
            arrays[f"block_{f}"] = (np.stack([getattr(b, f) for b in self.blocks]).astype(dt) if k
                                    else np.zeros((0, u), dtype=dt))
        attrs = {"kind": self.kind, "units": u, "sequence": self.sequence, "step": self.step,
                 "synchrony": self.synchrony}
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), attrs.get("sequence"), attrs.get("step"), bool(attrs["synchrony"]))
        self.bins = int(np.asarray(arrays["bins"]).reshape(-1)[0])
        self.trials = int(np.asarray(arrays["trials"]).reshape(-1)[0])
        for f, dt in (("count", np.float64), ("spike_bins", np.int64), ("isi_n", np.int64), ("isi_sum", np.int64),
                      ("isi_sq", np.int64), ("trial_sum", np.float64), ("trial_sq", np.float64),
                      ("sq", np.float64), ("xtx", np.float64)):
            setattr(self, f, np.array(arrays[f], dtype=dt))
        if self.synchrony:
            self.xtx = self.xtx.reshape(self.units, self.units)
        single = np.asarray(arrays["block_single"], dtype=bool)
        for i in range(len(single)):
            kw: dict[str, Any] = {f: int(arrays[f"block_{f}"][i]) for f in cls._BLOCK_INT}
            for f in cls._BLOCK_ARR:
                kw[f] = np.array(arrays[f"block_{f}"][i], dtype=np.float64 if f.endswith("count") else np.int64)
            self.blocks.append(_Block(single=bool(single[i]), **kw))
        return self
