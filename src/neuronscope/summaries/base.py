"""The streaming-summary protocol, the registry of summary kinds, and the balanced tree merge.

A summary is a small object that sees a population one batch at a time
(``update``), combines with another summary of disjoint samples (``merge``,
associative and exact to float rounding), and reports (``result``). Its whole
state is a dict of numpy arrays plus a JSON-able dict of attributes
(``state`` / ``from_state``) so that a run stores it in Zarr without pickle and a
Dask worker ships it without pickle-only objects.

Modelled on baukit's ``runningstats.py``; ours also merges. This module imports no
summary: the package ``__init__`` imports every built-in kind and registers it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import numpy as np

from neuronscope.errors import NeuronscopeError

#: Sample coordinates handed to ``update``: 1-D arrays of length n_samples.
#: Always present: ``sample`` (int64 global sample index). Text sources add
#: ``doc``, ``pos``, ``token_id`` (int64); label fields (e.g. ``lang``) arrive as
#: int64 codes with their categories given to the summary's constructor.
Samples = Mapping[str, np.ndarray]
#: A summary's stored form: named arrays and JSON attributes (``state()``).
State = tuple[dict[str, np.ndarray], dict[str, Any]]


@runtime_checkable
class Summary(Protocol):
    """Protocol every streaming summary follows."""

    kind: ClassVar[str]

    def update(self, acts: np.ndarray, samples: Samples) -> None:
        """Fold in a batch: ``acts`` is float32 ``(n_samples, n_units)``, finite."""

    def merge(self, other: Self) -> Self:
        """Fold in a summary of disjoint samples (in place); return ``self``."""

    def result(self) -> dict[str, np.ndarray]:
        """The summary's statistics as named arrays."""

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to rebuild the summary exactly: arrays and JSON attrs."""

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild a summary from ``state()``."""


T = TypeVar("T")
S = TypeVar("S", bound=Summary)

_REGISTRY: dict[str, type[Summary]] = {}


def register(cls: type[S]) -> type[S]:
    """Make a summary kind rebuildable by name (``summary_from_state``); returns ``cls``.

    The package ``neuronscope.summaries`` registers every built-in kind on import; call this
    for a summary class of your own.
    """
    _REGISTRY[cls.kind] = cls
    return cls


def summary_from_state(kind: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Summary:
    """Rebuild a registered summary of the given ``kind`` from its stored state."""
    try:
        cls = _REGISTRY[kind]
    except KeyError:
        raise NeuronscopeError(
            f"unknown summary kind {kind!r}; known: {sorted(_REGISTRY)} (register a custom kind first)"
        ) from None
    return cls.from_state(arrays, attrs)


def tree_reduce(items: Sequence[T], combine: Callable[[T, T], T]) -> T:
    """Reduce ``items`` with ``combine`` in a balanced binary tree, in order.

    Level by level, neighbours are combined pairwise (``combine(x0, x1), combine(x2, x3), …``;
    an odd last item moves up unchanged), so the depth is ``ceil(log2 n)`` and a level's
    combinations are independent: the same reduction runs in one process
    (:func:`tree_merge`) and as a tree of tasks on a Dask cluster
    (``neuronscope.distributed.tree_future``).
    """
    level = list(items)
    if not level:
        raise NeuronscopeError("tree_reduce needs at least one item; pass a non-empty list")
    while len(level) > 1:
        nxt = [combine(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merge_pair(a: S, b: S) -> S:
    """``a.merge(b)``: fold ``b`` (disjoint samples) into ``a``; returns ``a``."""
    return a.merge(b)


def tree_merge(parts: Sequence[S]) -> S:
    """Merge summaries of disjoint samples pairwise in a balanced tree (what Dask does across
    workers): :func:`tree_reduce` with ``merge``. The first part of each pair is updated in place."""
    if not parts:
        raise NeuronscopeError("tree_merge needs at least one summary")
    return tree_reduce(parts, merge_pair)
