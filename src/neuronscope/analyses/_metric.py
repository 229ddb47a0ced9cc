"""The description of a comparison metric that :mod:`neuronscope.analyses.compare` dispatches on.

Each metric module declares its :class:`Metric` objects next to the functions they describe;
``compare`` and ``compare_all`` only read these descriptions, so adding a metric never
touches the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from neuronscope.errors import NeuronscopeError


@dataclass(frozen=True)
class Metric:
    """A comparison metric ``fn(X, Y, **options) -> float``.

    * ``higher_is_similar``: True for similarities (CKA, RSA), False for distances.
    * ``symmetric``: ``fn(X, Y) == fn(Y, X)`` (``compare_all`` fills the lower triangle).
    * ``options``: keyword arguments the metric takes (anything else is refused).
    * ``factor(pop, **options)`` / ``pair(fa, fb, **options)``: the many-vs-many path — a
      population's factor (centred matrix, RDM, principal basis, …) is computed once and a
      pair costs one cross product. ``factored_options`` lists the options that path handles
      (with any other option given, ``compare_all`` calls ``fn`` pairwise).
    * ``accepts_rdms``: precomputed :class:`~neuronscope.rdms.RDMs` are valid inputs.
    * ``stats_factor(n, cxx, **options)`` / ``stats_pair(fa, fb, cxy, **options)``: the
      streamed path for populations too large for memory (dask-backed run populations) — a
      population's factor from its centred ``XᵀX`` (float64, ``n`` rows), a pair from the
      centred ``XᵀY``; both accumulated chunk by chunk from the store
      (:mod:`neuronscope.analyses._stream`). ``stats_options`` lists the options it handles;
      ``stats_float64`` multiplies in float64 even for float32 data (metrics that whiten).
    """

    name: str
    fn: Callable[..., float]
    higher_is_similar: bool
    symmetric: bool = True
    options: tuple[str, ...] = ()
    factor: Callable[..., Any] | None = None
    pair: Callable[..., float] | None = None
    factored_options: tuple[str, ...] = field(default=())
    accepts_rdms: bool = False
    stats_factor: Callable[..., Any] | None = None
    stats_pair: Callable[..., float] | None = None
    stats_options: tuple[str, ...] = field(default=())
    stats_float64: bool = False

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse keyword arguments this metric does not take (one-line error)."""
        bad = sorted(set(options) - set(self.options))
        if bad:
            takes = ", ".join(self.options) or "no options"
            raise NeuronscopeError(
                f"metric {self.name!r} takes {takes}; drop {', '.join(bad)}"
            )

    def factored(self, options: Mapping[str, Any]) -> bool:
        """Whether ``compare_all`` can use ``factor``/``pair`` with these options."""
        return self.factor is not None and set(options) <= set(self.factored_options)

    def streamed(self, options: Mapping[str, Any]) -> bool:
        """Whether populations can be compared from streamed cross-products with these options."""
        return self.stats_factor is not None and set(options) <= set(self.stats_options)
