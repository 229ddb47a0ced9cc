"""The streaming-summary protocol.

A summary is a small object that sees a population one batch at a time
(``update``), combines with another summary of disjoint samples (``merge``,
associative and exact to float rounding), and reports (``result``). Its whole
state is a dict of numpy arrays plus a JSON-able dict of attributes
(``state`` / ``from_state``) so that a run stores it in Zarr without pickle and a
Dask worker ships it without pickle-only objects.

Modelled on baukit's ``runningstats.py``; ours also merges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

#: Sample coordinates handed to ``update``: 1-D arrays of length n_samples.
#: Always present: ``sample`` (int64 global sample index). Text sources add
#: ``doc``, ``pos``, ``token_id`` (int64); label fields (e.g. ``lang``) arrive as
#: int64 codes with their categories given to the summary's constructor.
Samples = Mapping[str, np.ndarray]


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


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a summary kind rebuildable by name (``summary_from_state``)."""
    _REGISTRY[cls.kind] = cls
    return cls


def summary_from_state(kind: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Any:
    """Rebuild a registered summary of the given ``kind`` from its stored state."""
    if kind not in _REGISTRY:
        # the built-in kinds register on import of the site container
        import neuronscope.summaries.site  # noqa: F401
    try:
        cls = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown summary kind {kind!r}; known: {sorted(_REGISTRY)}") from None
    return cls.from_state(arrays, attrs)


def tree_merge(parts: list[Any]) -> Any:
    """Merge a list of summaries pairwise in a balanced tree (what Dask does across workers)."""
    if not parts:
        raise ValueError("tree_merge needs at least one summary")
    while len(parts) > 1:
        nxt = [parts[i].merge(parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]
