"""All streaming summaries of one site, as one mergeable, storable object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import Samples, State, Summary, summary_from_state
from neuronscope.summaries.firing import Firing
from neuronscope.summaries.groups import GroupFiring, GroupMoments
from neuronscope.summaries.histogram import Histogram, calibration_edges
from neuronscope.summaries.kernels import Batch
from neuronscope.summaries.moments import Moments
from neuronscope.summaries.tokens import TokenMeans
from neuronscope.summaries.topk import TopK

#: parts that only apply when the source provides a sample coordinate (text, conv positions)
_NEEDS = {"position": "pos", "tokens": "token_id"}


@dataclass
class SummaryConfig:
    """What the per-site summaries keep.

    * ``thresholds``: magnitude thresholds ``t`` for ``|a| > t`` firing counts (ReLU²).
    * ``k``, ``window``: top-k examples per neuron and their context ``pos-W..pos+W``.
    * ``n_bins``, ``hist_margin``, ``hist_range``, ``hist_stride``: histogram bins over the
      calibration batch's ``[min, max]`` widened by ``hist_margin * span`` per side (or
      the fixed ``hist_range``); only samples with ``sample % hist_stride == 0`` counted.
    * ``label_fields``: label field -> categories (codes index into the list): per-label
      firing (LAPE) and per-label moments (label statistics, probe rankings,
      difference in means) for each field.
    * ``max_pos``: position buckets (``pos >= max_pos`` -> last); 0 disables.
    * ``token_slots``: token-id slots of the per-token mean table; 0 disables.
    * ``frac_bins``: bins of the per-token active-fraction histogram.
    * ``context_dtype``: dtype of the top-k context windows, ``float32`` or ``float16``
      (for a run that stores float16 activations: halves the largest part of the state).
    """

    thresholds: tuple[float, ...] = (0.1, 0.5, 1.0)
    k: int = 32
    window: int = 8
    n_bins: int = 64
    hist_margin: float = 0.5
    hist_range: tuple[float, float] | None = None
    hist_stride: int = 1
    label_fields: dict[str, list[str]] = field(default_factory=dict)
    max_pos: int = 512
    token_slots: int = 512
    frac_bins: int = 20
    context_dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists; ``context_dtype`` only when not float32)."""
        d = asdict(self)
        d["thresholds"] = [float(t) for t in self.thresholds]
        d["hist_range"] = None if self.hist_range is None else [float(x) for x in self.hist_range]
        d["label_fields"] = {k: [str(c) for c in v] for k, v in self.label_fields.items()}
        if d["context_dtype"] == "float32":
            del d["context_dtype"]  # the default: configs of runs recorded before it stay equal
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SummaryConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise NeuronscopeError(f"unknown summary config keys {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        if "thresholds" in kw:
            kw["thresholds"] = tuple(float(t) for t in kw["thresholds"])
        if kw.get("hist_range") is not None:
            kw["hist_range"] = tuple(float(x) for x in kw["hist_range"])
        if "label_fields" in kw:
            kw["label_fields"] = {str(k): [str(c) for c in v] for k, v in kw["label_fields"].items()}
        return cls(**kw)


class SiteSummaries:
    """The summaries of one site: moments, firing, per-label firing (``labels.<field>``),
    per-label moments (``label_moments.<field>``), histogram, top-k, per-position firing
    (``position``) and per-token means (see each class for its formula; the firing parts
    per group are a :class:`~neuronscope.summaries.groups.GroupFiring`, the per-label
    moments a :class:`~neuronscope.summaries.groups.GroupMoments`).

    ``update`` builds one :class:`~neuronscope.summaries.kernels.Batch` so shared
    intermediates (the ``a > 0`` mask, ``|a|``) are computed once per batch. Sources
    without ``pos`` / ``token_id`` (images, brain data) leave the position / token parts
    empty.
    ``result()`` and ``state()`` flatten part names into keys like ``moments.mean``,
    ``labels.lang.count``, ``topk.context``; ``state()`` attrs are JSON.
    """

    kind = "site"

    def __init__(self, units: int, cfg: SummaryConfig, parts: Mapping[str, Summary]) -> None:
        self.units = int(units)
        self.cfg = cfg
        self.parts: dict[str, Summary] = dict(parts)

    @classmethod
    def create(
        cls,
        units: int,
        cfg: SummaryConfig | None = None,
        calibration: np.ndarray | None = None,
    ) -> SiteSummaries:
        """Empty summaries for a site of ``units`` neurons. ``calibration`` (float32
        ``(n, units)``, e.g. the first batch) fixes the histogram bins; it is not
        folded in — pass it to ``update`` as well."""
        cfg = cfg or SummaryConfig()
        units = int(units)
        if cfg.hist_range is not None:
            lo, hi = cfg.hist_range
            if not hi > lo:
                raise NeuronscopeError("hist_range must be (low, high) with high > low")
            edges = np.linspace(lo, hi, cfg.n_bins + 1)
        elif calibration is not None:
            cal = np.asarray(calibration)
            if cal.ndim != 2 or cal.shape[1] != units:
                raise NeuronscopeError(f"calibration must be (n, {units}), got {cal.shape}")
            edges = calibration_edges(cal, cfg.n_bins, cfg.hist_margin)
        else:
            raise NeuronscopeError("pass a calibration batch or set SummaryConfig.hist_range")
        parts: dict[str, Summary] = {
            "moments": Moments(units),
            "firing": Firing(units, cfg.thresholds, cfg.frac_bins),
        }
        for name, cats in cfg.label_fields.items():
            parts[f"labels.{name}"] = GroupFiring.by_label(units, name, cats)
            parts[f"label_moments.{name}"] = GroupMoments.by_label(units, name, cats)
        parts["histogram"] = Histogram(units, edges, cfg.hist_stride)
        parts["topk"] = TopK(units, cfg.k, cfg.window, cfg.context_dtype)
        if cfg.max_pos > 0:
            parts["position"] = GroupFiring.by_position(units, cfg.max_pos)
        if cfg.token_slots > 0:
            parts["tokens"] = TokenMeans(units, cfg.token_slots)
        return cls(units, cfg, parts)

    def update(self, acts: np.ndarray, samples: Samples, threads: int | None = None, finite: bool = False) -> None:
        """Fold a float32 ``(n, units)`` batch into every part (position / token parts only
        when ``samples`` has ``pos`` / ``token_id``) with the fused kernel
        (:func:`~neuronscope.summaries.fused.fused_update`: one compiled pass over the batch,
        on ``threads`` threads; default :func:`~neuronscope.summaries.fused.threads`).
        Values may be ±Inf; a NaN raises before any part changes — unless ``finite`` says the
        caller has already made sure there is none (the check is then skipped)."""
        from neuronscope.summaries.fused import fused_update

        fused_update(self, self._batch(acts, samples), _NEEDS, threads, finite)

    def update_numpy(self, acts: np.ndarray, samples: Samples) -> None:
        """:meth:`update` through each part's own numpy ``update`` (one or more passes per
        part): the reference the fused kernel is tested against."""
        b = self._batch(acts, samples)
        for name, part in self.parts.items():
            needs = _NEEDS.get(name)
            if needs is None or needs in b.samples:
                part.update(b)

    def _batch(self, acts: np.ndarray, samples: Samples) -> Batch:
        b = Batch(acts, samples)
        if b.acts.shape[1] != self.units:
            raise NeuronscopeError(
                f"batch has {b.acts.shape[1]} units, site has {self.units}: pass acts of shape "
                f"(n, {self.units})"
            )
        return b

    def merge(self, other: Self) -> Self:
        """Merge every part with ``other``'s (disjoint samples, same config)."""
        if other.units != self.units or other.parts.keys() != self.parts.keys():
            raise NeuronscopeError("cannot merge site summaries with different units or parts")
        for name, part in self.parts.items():
            part.merge(other.parts[name])
        return self

    def result(self) -> dict[str, np.ndarray]:
        """Every part's result under ``<part>.<key>`` (e.g. ``moments.mean``)."""
        out: dict[str, np.ndarray] = {}
        for name, part in self.parts.items():
            for key, value in part.result().items():
                out[f"{name}.{key}"] = value
        return out

    def quantiles(self, q: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-neuron quantiles ``(values, bound)`` from the histogram, clamped to the exact
        min/max of the moments (see :meth:`Histogram.quantiles` for the error bound)."""
        m = self.parts["moments"]
        if m.count == 0:
            nan = np.full((len(np.atleast_1d(q)), self.units), np.nan)
            return nan, nan.copy()
        return self.parts["histogram"].quantiles(q, m.min.astype(np.float64), m.max.astype(np.float64))

    def state(self) -> State:
        """Flat arrays ``<part>.<name>`` (one Zarr array each) and JSON attrs."""
        arrays: dict[str, np.ndarray] = {}
        part_attrs: dict[str, Any] = {}
        for name, part in self.parts.items():
            arr, attrs = part.state()
            for key, value in arr.items():
                arrays[f"{name}.{key}"] = np.asarray(value)
            part_attrs[name] = attrs
        attrs = {
            "kind": self.kind,
            "units": self.units,
            "config": self.cfg.to_dict(),
            "parts": part_attrs,
        }
        return arrays, attrs

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state` (each part through ``summary_from_state``)."""
        parts: dict[str, Summary] = {}
        for name, part_attrs in attrs["parts"].items():
            prefix = name + "."
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            parts[name] = summary_from_state(part_attrs["kind"], sub, part_attrs)
        return cls(int(attrs["units"]), SummaryConfig.from_dict(attrs["config"]), parts)
