"""Mean activation per token id, in a fixed number of token-id slots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import Batch, as_batch, group_sum


class TokenMeans:
    """Per-token-id mean activation of every neuron, for token detectors (Voita et al.).

    Memory bound: ``slots`` token ids, each with a count and a float32 sum per neuron
    — ``slots * (units * 4 + 16)`` bytes plus one float64 "other" row — whatever the
    corpus. A batch is summed per slot (float64 in the fused kernel, float32 in the numpy
    reference) and added to the float32 sums with one rounding per batch, so a mean's
    relative error is at most ``(batches holding the token) * 2**-24`` of ``Σ|a| / Σa``.

    Slot policy: a token id keeps its slot once assigned. New ids take free slots
    (smallest id first). When more ids arrive than there are free slots, the slots
    go to the ``slots`` ids with the largest counts among (held ids, their counts so
    far) and (new ids, their counts in the batch or merged summary), ties to the
    smaller id; evicted ids' sums and counts move to ``other``, and ids left out are
    counted in ``other``. Exactness: while the number of distinct token ids seen by
    all merged parts is ``<= slots`` every id has its own slot, so ``result()`` is
    exact and independent of batch and merge order. Beyond the bound the kept ids
    favour frequent tokens and an id re-admitted after eviction only reports its
    occurrences since then (the result then depends on order).
    """

    kind = "tokens"

    def __init__(self, units: int, slots: int = 512) -> None:
        self.units = int(units)
        self.slots = int(slots)
        if self.slots < 1:
            raise NeuronscopeError("token slots must be >= 1 (or disable the token summary)")
        self.ids = np.full(self.slots, -1, dtype=np.int64)
        self.count = np.zeros(self.slots, dtype=np.int64)
        self.sums = np.zeros((self.slots, self.units), dtype=np.float32)
        self.other_count = 0
        self.other_sum = np.zeros(self.units, dtype=np.float64)

    def assign(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Slot for each of the distinct ``ids`` (ascending; -1 = goes to "other") given their
        ``counts`` in the incoming batch or summary, evicting held ids by the slot policy
        above (their sums and counts move to "other")."""
        slot_of = np.full(len(ids), -1, dtype=np.int64)
        used = np.flatnonzero(self.ids >= 0)
        order = used[np.argsort(self.ids[used], kind="stable")]
        held = self.ids[order]
        at = np.searchsorted(held, ids)
        at_c = np.minimum(at, max(len(held) - 1, 0))
        found = (at < len(held)) & (held[at_c] == ids) if len(held) else np.zeros(len(ids), bool)
        slot_of[found] = order[at_c[found]]
        new = np.flatnonzero(~found)
        free = np.flatnonzero(self.ids < 0)
        if len(new) > len(free):
            # rank held and new ids by (count desc, id asc); the best `slots` keep/get slots
            cand_ids = np.concatenate([self.ids[used], ids[new]])
            cand_cnt = np.concatenate([self.count[used], counts[new]])
            rank = np.lexsort((cand_ids, -cand_cnt))
            winner = np.zeros(len(cand_ids), dtype=bool)
            winner[rank[: self.slots]] = True
            evict = used[~winner[: len(used)]]
            self.other_count += int(self.count[evict].sum())
            self.other_sum += self.sums[evict].sum(axis=0, dtype=np.float64)
            self.ids[evict] = -1
            self.count[evict] = 0
            self.sums[evict] = 0.0
            # an evicted id of this batch goes to "other" too, not to its slot's next owner
            slot_of[np.isin(slot_of, evict)] = -1
            new = new[winner[len(used) :]]
            free = np.flatnonzero(self.ids < 0)
        new = new[np.argsort(ids[new], kind="stable")]
        slot_of[new] = free[: len(new)]
        self.ids[slot_of[new]] = ids[new]
        return slot_of

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a batch; needs ``samples['token_id']``."""
        b = as_batch(acts, samples, self.units)
        tok = b.coord("token_id")
        if tok is None:
            raise NeuronscopeError(
                "samples lack 'token_id'; set SummaryConfig(token_slots=0) for non-text sources"
            )
        if b.n == 0:
            return
        uniq, inv, cnt = np.unique(tok, return_inverse=True, return_counts=True)
        slot_of = self.assign(uniq, cnt)
        keys = np.where(slot_of < 0, self.slots, slot_of)[inv.reshape(-1)]
        groups, sums = group_sum(b.acts, keys, self.slots + 1)
        mine = groups < self.slots
        self.sums[groups[mine]] += sums[mine]
        if not mine[-1:].all():
            self.other_sum += sums[-1]
        per_key = np.bincount(keys, minlength=self.slots + 1)
        self.count += per_key[: self.slots]
        self.other_count += int(per_key[self.slots])

    def fold_counts(self, slot_of: np.ndarray, counts: np.ndarray, other_sum: np.ndarray) -> None:
        """The counts of a batch whose sums the fused kernel already added to ``sums`` (per
        :meth:`assign`'s ``slot_of``): ``counts`` per distinct id, ``other_sum`` the float64
        ``Σa`` of the ids without a slot."""
        mine = slot_of >= 0
        self.count[slot_of[mine]] += counts[mine]
        if not mine.all():
            self.other_sum += other_sum
            self.other_count += int(counts[~mine].sum())

    def merge(self, other: Self) -> Self:
        """Fold in a summary of disjoint samples (exact while within the slot bound)."""
        if other.units != self.units or other.slots != self.slots:
            raise NeuronscopeError("cannot merge token means with different units or slots")
        theirs = np.flatnonzero(other.ids >= 0)
        slot_of = self.assign(other.ids[theirs], other.count[theirs])
        mine = slot_of >= 0
        self.count[slot_of[mine]] += other.count[theirs[mine]]
        self.sums[slot_of[mine]] += other.sums[theirs[mine]]
        self.other_count += other.other_count + int(other.count[theirs[~mine]].sum())
        self.other_sum += other.other_sum + other.sums[theirs[~mine]].sum(axis=0, dtype=np.float64)
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``ids`` (m,) held token ids ascending, ``count`` (m,), ``mean`` (m, units) float64,
        ``other_count`` () and ``other_mean`` (units,) for tokens without a slot."""
        used = np.flatnonzero(self.ids >= 0)
        used = used[np.argsort(self.ids[used])]
        cnt = self.count[used]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums[used] / cnt[:, None]
            other = self.other_sum / self.other_count if self.other_count else None
        return {
            "ids": self.ids[used].copy(),
            "count": cnt.copy(),
            "mean": mean,
            "other_count": np.int64(self.other_count),
            "other_mean": other if other is not None else np.full(self.units, np.nan),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``ids``, ``count``, ``sums`` of the held slots only, ``other_count`` (1,),
        ``other_sum``; attrs ``units``, ``slots``."""
        used = np.flatnonzero(self.ids >= 0)
        arrays = {
            "ids": self.ids[used],
            "count": self.count[used],
            "sums": self.sums[used],
            "other_count": np.array([self.other_count], dtype=np.int64),
            "other_sum": self.other_sum,
        }
        return arrays, {"kind": self.kind, "units": self.units, "slots": self.slots}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), int(attrs["slots"]))
        ids = np.asarray(arrays["ids"], dtype=np.int64)
        self.ids[: len(ids)] = ids
        self.count[: len(ids)] = np.asarray(arrays["count"], dtype=np.int64)
        self.sums[: len(ids)] = np.asarray(arrays["sums"]).reshape(len(ids), self.units)
        self.other_count = int(np.asarray(arrays["other_count"]).reshape(-1)[0])
        self.other_sum = np.array(arrays["other_sum"], dtype=np.float64)
        return self
