"""RDMs: a stack of representational dissimilarity matrices over the same stimuli.

The data model of RSA (Kriegeskorte, Mur & Bandettini 2008), next to populations: RDMs are
stored condensed (the upper triangle in scipy ``squareform`` order, m = n(n-1)/2 per RDM),
one per subject, session, repeat or model, with optional stimulus ids (to align with a
population's ``stimulus`` coordinate) and names. File readers (``load_rdms``) return it and
:mod:`neuronscope.analyses.rsa` computes and compares it.

Missing dissimilarities (a pair not measured, as in rsatoolbox) are NaN; every comparator
skips them pairwise. Inf is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.distance import squareform

from neuronscope.errors import NeuronscopeError
from neuronscope.population import order_by_ids

__all__ = ["RDMs", "as_rdm_stack", "check_square", "condense_square", "n_from_m"]


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


def check_square(a: np.ndarray, what: str = "RDM") -> None:
    """Refuse square matrices (..., n, n) that are not RDMs, with a one-line error naming the
    fix: Inf anywhere, NaN or non-zero values on the diagonal, asymmetry (NaN must be
    symmetric too). The tolerance is 1e-8 of the largest absolute dissimilarity."""
    if np.isinf(a).any():
        raise NeuronscopeError(f"{what} contains Inf; replace it with NaN (a missing pair) or a finite value")
    diag = np.diagonal(a, axis1=-2, axis2=-1)
    if np.isnan(diag).any():
        raise NeuronscopeError(f"{what} has NaN on the diagonal; set the diagonal to 0 (a stimulus is 0 from itself)")
    scale = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 0.0
    tol = 1e-8 * max(scale, 1e-300)
    if (np.abs(diag) > tol).any():
        raise NeuronscopeError(
            f"{what} has a non-zero diagonal (max {float(np.abs(diag).max()):.3g}); is it a similarity "
            "matrix? convert it (e.g. 1 - r) or set the diagonal to 0"
        )
    at = np.swapaxes(a, -1, -2)
    if not np.array_equal(np.isnan(a), np.isnan(at)):
        raise NeuronscopeError(f"{what} has NaN at (i, j) but not at (j, i); make missing pairs symmetric")
    if a.size and float(np.nanmax(np.abs(a - at))) > tol:
        raise NeuronscopeError(
            f"{what} is not symmetric (max |D - Dᵀ| = {float(np.nanmax(np.abs(a - at))):.3g}); "
            "symmetrize it with (D + Dᵀ)/2 or pass the upper triangle"
        )


@dataclass
class RDMs:
    """A stack of RDMs over the same stimuli (one per subject, session or repeat).

    ``dissimilarities`` is (k, m) condensed, m = n(n-1)/2 (NaN marks a missing pair);
    ``stimulus`` optionally names the n stimuli (used to align with a population's
    ``stimulus`` coordinate); ``names`` label the k RDMs (subjects, sessions or models).
    """

    dissimilarities: np.ndarray
    stimulus: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    measure: str = ""

    def __post_init__(self) -> None:
        d = np.atleast_2d(np.asarray(self.dissimilarities, dtype=np.float64))
        if d.ndim != 2:
            raise NeuronscopeError("RDMs must be a (k, m) stack of condensed RDMs")
        if np.isinf(d).any():
            raise NeuronscopeError("RDMs contain Inf; mark a missing dissimilarity with NaN instead")
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
        self.names = [str(x) for x in self.names]
        if len(self.names) != len(d):
            raise NeuronscopeError(f"{len(self.names)} names for {len(d)} RDMs; give one name per RDM")

    @classmethod
    def from_array(cls, a: np.ndarray, stimulus: np.ndarray | None = None, name: str = "rdm",
                   names: list[str] | None = None) -> RDMs:
        """From a square (n, n), stack (k, n, n), condensed (m,) or stack (k, m) array.

        A 2-D array is square RDM when its two sides are equal (it must then be symmetric
        with a zero diagonal, see :func:`check_square`), else a stack of condensed RDMs.
        """
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 3 or (a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] > 1):
            if a.shape[-1] != a.shape[-2]:
                raise NeuronscopeError(
                    f"RDM stack of shape {a.shape} is not square; give (k, n, n) square matrices or (k, m) condensed"
                )
            check_square(a)
            a = condense_square(a)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2:
            raise NeuronscopeError(f"RDM array of shape {a.shape}; give (n,n), (k,n,n), (m,) or (k,m)")
        if names is None:
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

    def squares(self) -> np.ndarray:
        """All RDMs as a (k, n, n) stack of square matrices (zero diagonal)."""
        n = self.n_stimuli
        out = np.zeros((len(self), n, n))
        iu = np.triu_indices(n, k=1)
        out[:, iu[0], iu[1]] = self.dissimilarities
        out[:, iu[1], iu[0]] = self.dissimilarities
        return out

    def select(self, index: Any) -> RDMs:
        """The RDMs at positions ``index`` (int, slice, list or boolean mask), names kept."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return RDMs(self.dissimilarities[idx], stimulus=self.stimulus, names=[self.names[i] for i in idx],
                    measure=self.measure)

    def has_missing(self) -> bool:
        """Whether any dissimilarity is missing (NaN)."""
        return bool(np.isnan(self.dissimilarities).any())

    def reorder(self, stimulus: np.ndarray) -> RDMs:
        """The RDMs with rows/columns in the order of ``stimulus`` ids (all must be present)."""
        if self.stimulus is None:
            raise NeuronscopeError("these RDMs carry no stimulus ids; save them with a `stimulus` array")
        idx = order_by_ids(self.stimulus, stimulus, "stimulus", ("the RDMs", "the population"))
        sq = self.squares()[:, idx][:, :, idx]
        return RDMs(condense_square(sq), stimulus=np.asarray(stimulus), names=list(self.names),
                    measure=self.measure)


def as_rdm_stack(a: Any) -> RDMs:
    """``a`` as :class:`RDMs`: RDMs as given, or an array (square, stack, condensed)."""
    if isinstance(a, RDMs):
        return a
    arr = np.asarray(a, dtype=np.float64)
    return RDMs.from_array(arr)
