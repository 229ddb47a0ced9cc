"""RDMs: a stack of representational dissimilarity matrices over the same stimuli.

The data model of RSA (Kriegeskorte, Mur & Bandettini 2008), next to populations: RDMs are
stored condensed (the upper triangle in scipy ``squareform`` order, m = n(n-1)/2 per RDM),
one per subject, session, repeat or model, with optional stimulus ids (to align with a
population's ``stimulus`` coordinate) and names. File readers (``load_rdms``) return it and
:mod:`neuronscope.analyses.rsa` computes and compares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.distance import squareform

from neuronscope.errors import NeuronscopeError
from neuronscope.population import order_by_ids

__all__ = ["RDMs", "as_rdm_stack", "condense_square", "n_from_m"]


def n_from_m(m: int) -> int:
    """The number of stimuli n of a condensed RDM of m = n(n-1)/2 dissimilarities."""
    n = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    if n * (n - 1) // 2 != m:
        raise NeuronscopeError(f"{m} dissimilarities is not n(n-1)/2 for any n; give a condensed RDM")
    return n


def condense_square(a: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Upper triangles (row-major, scipy ``squareform`` order) of square matrices."""
    if a.ndim == 2:
        a = np.array(a, dtype=np.float64, order="C", copy=not overwrite)
        np.fill_diagonal(a, 0.0)
        return squareform(a, checks=False)
    iu = np.triu_indices(a.shape[-1], k=1)
    return a[..., iu[0], iu[1]]


@dataclass
class RDMs:
    """A stack of RDMs over the same stimuli (one per subject, session or repeat).

    ``dissimilarities`` is (k, m) condensed, m = n(n-1)/2; ``stimulus`` optionally names the
    n stimuli (used to align with a population's ``stimulus`` coordinate).
    """

    dissimilarities: np.ndarray
    stimulus: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    measure: str = ""

    def __post_init__(self) -> None:
        d = np.atleast_2d(np.asarray(self.dissimilarities, dtype=np.float64))
        if d.ndim != 2:
            raise NeuronscopeError("RDMs must be a (k, m) stack of condensed RDMs")
        if not np.isfinite(d).all():
            raise NeuronscopeError("RDMs contain NaN or Inf; remove missing dissimilarities first")
        self.dissimilarities = d
        n = n_from_m(d.shape[1])
        if n < 3:
            raise NeuronscopeError(f"RDMs over {n} stimuli; RSA needs at least 3 stimuli")
        if self.stimulus is not None:
            self.stimulus = np.asarray(self.stimulus)
            if len(self.stimulus) != n:
                raise NeuronscopeError(f"{len(self.stimulus)} stimulus ids for RDMs over {n} stimuli")
            if len(np.unique(self.stimulus)) != n:
                raise NeuronscopeError("RDM stimulus ids are duplicated; give one id per stimulus")
        if not self.names:
            self.names = [str(i) for i in range(len(d))]

    @classmethod
    def from_array(cls, a: np.ndarray, stimulus: np.ndarray | None = None, name: str = "rdm") -> RDMs:
        """From a square (n, n), stack (k, n, n), condensed (m,) or stack (k, m) array."""
        a = np.asarray(a, dtype=np.float64)
        if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and a.shape[-1] > 1 and \
                np.allclose(np.diagonal(a, axis1=-2, axis2=-1), 0) and np.allclose(a, np.swapaxes(a, -1, -2)):
            a = condense_square(a)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2:
            raise NeuronscopeError(f"RDM array of shape {a.shape}; give (n,n), (k,n,n), (m,) or (k,m)")
        names = [name] if len(a) == 1 else [f"{name}[{i}]" for i in range(len(a))]
        return cls(a, stimulus=stimulus, names=names)

    @property
    def n_stimuli(self) -> int:
        """Number of stimuli n (m = n(n-1)/2 dissimilarities per RDM)."""
        return n_from_m(self.dissimilarities.shape[1])

    def __len__(self) -> int:
        """Number of RDMs in the stack."""
        return len(self.dissimilarities)

    def square(self, i: int = 0) -> np.ndarray:
        """RDM ``i`` as a square (n, n) matrix."""
        return squareform(self.dissimilarities[i], checks=False)

    def reorder(self, stimulus: np.ndarray) -> RDMs:
        """The RDMs with rows/columns in the order of ``stimulus`` ids (all must be present)."""
        if self.stimulus is None:
            raise NeuronscopeError("these RDMs carry no stimulus ids; save them with a `stimulus` array")
        idx = order_by_ids(self.stimulus, stimulus, "stimulus", ("the RDMs", "the population"))
        sq = np.stack([self.square(i)[np.ix_(idx, idx)] for i in range(len(self))])
        return RDMs(condense_square(sq), stimulus=np.asarray(stimulus), names=list(self.names),
                    measure=self.measure)


def as_rdm_stack(a: Any) -> RDMs:
    """``a`` as :class:`RDMs`: RDMs as given, or an array (square, stack, condensed)."""
    if isinstance(a, RDMs):
        return a
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[0] == arr.shape[1]) or arr.ndim == 3:
        return RDMs.from_array(arr)
    return RDMs(arr)
