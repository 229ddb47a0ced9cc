"""Statistics per group of samples: how samples fall into groups, and firing counts per group.

A :class:`Grouping` says which group each sample belongs to, from one int64 sample
coordinate: a label field (groups are its categories; LAPE's per-language firing) or an
ordered coordinate cut into buckets (positions). :class:`GroupFiring` counts firing per
group; :class:`GroupMoments` streams count, mean and M2 per group (per-label moments).
Any other per-group statistic reuses the same :class:`Grouping`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples
from neuronscope.summaries.kernels import (
    INT32_MAX,
    Batch,
    add_counts,
    as_batch,
    compact_counts,
    group_sum,
)


@dataclass(frozen=True)
class Grouping:
    """The group ``g`` of each sample, from the int64 sample coordinate ``key``.

    * labels (``categories`` given, ``size = C``): ``g = code`` for label codes in
      ``[0, C)``; any other code (-1 = unlabeled) is in no group.
    * buckets (``categories`` None): ``g = min(v, size - 1)`` for a coordinate ``v >= 0``
      (positions: ``pos >= max_pos`` share the last bucket); ``v < 0`` is an error.
    """

    key: str
    size: int
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            what = f"label field {self.key!r} needs at least one category" if self.categories is not None \
                else f"the number of {self.key} buckets (max_pos) must be >= 1"
            raise NeuronscopeError(what)

    @classmethod
    def labels(cls, field: str, categories: Sequence[str]) -> Grouping:
        """One group per category of the label field ``field`` (codes index ``categories``)."""
        cats = tuple(str(c) for c in categories)
        return cls(str(field), len(cats), cats)

    @classmethod
    def buckets(cls, key: str, size: int) -> Grouping:
        """``size`` buckets of a non-negative coordinate, the last one open-ended."""
        return cls(str(key), int(size))

    def codes(self, b: Batch) -> np.ndarray:
        """Group index of every row of ``b`` (int64; -1 = in no group)."""
        v = b.coord(self.key)
        if v is None:
            if self.categories is not None:
                raise NeuronscopeError(
                    f"samples lack label field {self.key!r}; drop it from SummaryConfig.label_fields"
                )
            raise NeuronscopeError(
                f"samples lack {self.key!r}; set SummaryConfig(max_pos=0) for sources without positions"
            )
        if self.categories is not None:
            return np.where((v >= 0) & (v < self.size), v, -1)
        if len(v) and v.min() < 0:
            raise NeuronscopeError(f"{self.key} values must be >= 0 (positions count from 0)")
        return np.minimum(v, self.size - 1)

    def stored(self, n: np.ndarray) -> int:
        """Groups to store: up to the last one with samples (trailing empty groups are not stored)."""
        seen = np.flatnonzero(n)
        return int(seen[-1]) + 1 if len(seen) else 0

    def attrs(self) -> dict[str, Any]:
        """JSON attributes (``key``, ``size``, ``categories``)."""
        cats = None if self.categories is None else list(self.categories)
        return {"key": self.key, "size": self.size, "categories": cats}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Grouping:
        """Inverse of :meth:`attrs`."""
        cats = attrs.get("categories")
        return cls(str(attrs["key"]), int(attrs["size"]), None if cats is None else tuple(str(c) for c in cats))


class GroupFiring:
    """Firing counts per group of samples (a :class:`Grouping`).

    ``count[g, u] = #{samples in group g: a_u > 0}`` and ``n[g] = #{samples in group g}``,
    so ``count[g, u] / n[g]`` is neuron ``u``'s activation probability in group ``g``:
    per language for LAPE (Tang et al., *Language-Specific Neurons*), per position for
    positional neurons (Voita et al., *Neurons in LLMs: Dead, N-gram, Positional*; see
    ``analyses.characterize.positional_scores``). Integer counts: merge is exact in any order;
    ``count`` is int32 while every group holds fewer than ``2**31`` samples, int64 past that.
    """

    kind = "group_firing"

    def __init__(self, units: int, grouping: Grouping) -> None:
        self.units = int(units)
        self.grouping = grouping
        self.count = np.zeros((grouping.size, self.units), dtype=np.int32)
        self.n = np.zeros(grouping.size, dtype=np.int64)

    @classmethod
    def by_label(cls, units: int, field: str, categories: Sequence[str]) -> GroupFiring:
        """Counts per category of the label field ``field``."""
        return cls(units, Grouping.labels(field, categories))

    @classmethod
    def by_position(cls, units: int, max_pos: int, key: str = "pos") -> GroupFiring:
        """Counts per position ``0 .. max_pos - 1`` (``pos >= max_pos`` in the last)."""
        return cls(units, Grouping.buckets(key, max_pos))

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a batch; ``samples[grouping.key]`` holds the int64 coordinate."""
        b = as_batch(acts, samples, self.units)
        g = self.grouping.codes(b)
        if b.n == 0:
            return
        groups, sums = group_sum(b.pos_mask_f32, g, self.grouping.size)
        n_g = np.bincount(g[g >= 0], minlength=self.grouping.size)
        self.fold(groups, n_g[groups], sums.astype(np.int64))

    def fold(self, groups: np.ndarray, n_g: np.ndarray, counts: np.ndarray) -> None:
        """Add a batch's ``counts[i, u] = #{samples in group groups[i]: a_u > 0}`` and its
        ``n_g[i]`` samples per group (``groups`` distinct, ascending)."""
        if not len(groups):
            return
        self.n[groups] += n_g
        bound = int(self.n.max())
        if self.count.dtype == np.int32 and bound > INT32_MAX:
            self.count = self.count.astype(np.int64)
        self.count[groups] += counts

    def merge(self, other: Self) -> Self:
        """Add the counts of a summary of disjoint samples."""
        if other.grouping != self.grouping or other.units != self.units:
            raise NeuronscopeError(
                f"cannot merge group counts of {self.grouping.key!r}: units, groups or categories differ"
            )
        self.n += other.n
        self.count = add_counts(self.count, other.count, int(self.n.max(initial=0)))
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``count`` (groups, units) int64 and ``n`` (groups,) int64."""
        return {"count": self.count.astype(np.int64), "n": self.n.copy()}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``count``, ``n`` up to the last group with samples (trailing empty groups are
        not stored); attrs ``units`` and the grouping."""
        last = self.grouping.stored(self.n)
        attrs = {"kind": self.kind, "units": self.units, **self.grouping.attrs()}
        return {"count": self.count[:last], "n": self.n[:last]}, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), Grouping.from_attrs(attrs))
        n = np.asarray(arrays["n"], dtype=np.int64)
        self.n[: len(n)] = n
        self.count = compact_counts(self.count, int(n.max(initial=0)))
        self.count[: len(n)] = np.asarray(arrays["count"]).reshape(len(n), self.units)
        return self


class GroupMoments:
    """Streaming count, mean and sum of squared deviations per group of samples and neuron.

    For group ``g`` (a :class:`Grouping`: the categories of a label field) and neuron ``u``::

        n[g]       = #{samples in g}
        mean[g, u] = Σ_{s∈g} a_u(s) / n[g]
        M2[g, u]   = Σ_{s∈g} (a_u(s) − mean[g, u])²          var = M2 / n (ddof 0)

    A batch's rows are sorted by group once; each group's slice contributes its own
    ``n_b``, ``m_b``, ``M2_b = Σa² − n_b m_b²`` (float64 accumulation, as
    :class:`~neuronscope.summaries.moments.Moments`) and enters with Chan, Golub &
    LeVeque's parallel update per group::

        n = n_a + n_b;  d = m_b − m_a
        m = m_a + d n_b / n;  M2 = M2_a + M2_b + d² n_a n_b / n

    so merge is associative and order changes results only by float64 rounding. Samples
    in no group (label code −1: the label is missing) are not counted. The per-label
    means and variances are what label statistics (Welch t, one-way ANOVA F), sparse-probe
    rankings (Gurnee et al. 2023) and difference-in-means directions need
    (``neuronscope.analyses.locate``).
    """

    kind = "group_moments"

    def __init__(self, units: int, grouping: Grouping) -> None:
        self.units = int(units)
        self.grouping = grouping
        self.n = np.zeros(grouping.size, dtype=np.int64)
        self.mean = np.zeros((grouping.size, self.units), dtype=np.float64)
        self.m2 = np.zeros((grouping.size, self.units), dtype=np.float64)

    @classmethod
    def by_label(cls, units: int, field: str, categories: Sequence[str]) -> GroupMoments:
        """Moments per category of the label field ``field``."""
        return cls(units, Grouping.labels(field, categories))

    def _combine(self, g: int, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = int(self.n[g])
        n = n_a + n_b
        if n_a == 0:
            self.mean[g] = mean_b
            self.m2[g] = m2_b
        else:
            delta = mean_b - self.mean[g]
            self.mean[g] += delta * (n_b / n)
            self.m2[g] += m2_b + delta**2 * (n_a * n_b / n)
        self.n[g] = n

    def update(self, acts: np.ndarray | Batch, samples: Samples | None = None) -> None:
        """Fold in a batch; ``samples[grouping.key]`` holds the int64 label codes."""
        b = as_batch(acts, samples, self.units)
        g = self.grouping.codes(b)
        if b.n == 0:
            return
        ok = g >= 0
        if not ok.any():
            return
        first = int(g[ok][0])
        if ok.all() and (g == first).all():
            groups, starts, a = np.array([first]), np.array([0]), b.acts
        else:
            order = np.argsort(np.where(ok, g, self.grouping.size), kind="stable")[: int(ok.sum())]
            gs = g[order]
            starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
            groups = gs[starts]
            a = b.acts[order]
        bounds = [*starts.tolist(), len(a)]
        for gi, lo, hi in zip(groups.tolist(), bounds[:-1], bounds[1:], strict=True):
            rows = a[lo:hi]
            self.fold(
                np.array([gi]),
                np.array([hi - lo]),
                rows.sum(axis=0, dtype=np.float64)[None],
                np.einsum("ij,ij->j", rows, rows, dtype=np.float64)[None],
            )

    def fold(self, groups: np.ndarray, n_g: np.ndarray, sums: np.ndarray, sumsq: np.ndarray) -> None:
        """Fold in a batch given, per group ``groups[i]``, its ``n_g[i]`` samples and per-neuron
        ``Σa`` / ``Σa²`` (float64 rows of ``sums`` / ``sumsq``): ``m_b = Σa / n_b``,
        ``M2_b = max(Σa² - Σa m_b, 0)``, then the parallel update per group."""
        for i, gi in enumerate(groups.tolist()):
            n_b = int(n_g[i])
            if n_b == 0:
                continue
            mean_b = sums[i] / n_b
            m2_b = sumsq[i] - sums[i] * mean_b
            np.maximum(m2_b, 0.0, out=m2_b)
            self._combine(gi, n_b, mean_b, m2_b)

    def merge(self, other: Self) -> Self:
        """Fold in a summary of disjoint samples (Chan et al. parallel update per group)."""
        if other.grouping != self.grouping or other.units != self.units:
            raise NeuronscopeError(
                f"cannot merge group moments of {self.grouping.key!r}: units, groups or categories differ"
            )
        for g in np.flatnonzero(other.n).tolist():
            self._combine(g, int(other.n[g]), other.mean[g], other.m2[g])
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``n`` (groups,) int64, ``mean`` and ``var`` (groups, units) float64 (ddof 0;
        NaN for a group without samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            has = self.n[:, None] > 0
            mean = np.where(has, self.mean, np.nan)
            var = np.where(has, self.m2 / np.maximum(self.n[:, None], 1), np.nan)
        return {"n": self.n.copy(), "mean": mean, "var": var}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``n``, ``mean``, ``m2`` up to the last group with samples; attrs ``units``
        and the grouping."""
        last = self.grouping.stored(self.n)
        attrs = {"kind": self.kind, "units": self.units, **self.grouping.attrs()}
        return {"n": self.n[:last], "mean": self.mean[:last], "m2": self.m2[:last]}, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state`."""
        self = cls(int(attrs["units"]), Grouping.from_attrs(attrs))
        n = np.asarray(arrays["n"], dtype=np.int64)
        k = len(n)
        self.n[:k] = n
        self.mean[:k] = np.asarray(arrays["mean"], dtype=np.float64).reshape(k, self.units)
        self.m2[:k] = np.asarray(arrays["m2"], dtype=np.float64).reshape(k, self.units)
        return self
