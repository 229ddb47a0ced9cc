"""The result every locate method returns, its tables, and its storage inside a run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from neuronscope.errors import NeuronscopeError

#: Methods of :func:`neuronscope.analyses.locate.locate` (the CLI's ``--by``).
METHODS = ("lape", "stats", "probe", "diffmeans")
#: Name prefix of locate results stored in a run (``extras/locate-<field>-<method>``).
EXTRA_PREFIX = "locate-"


@dataclass
class LocateResult:
    """Which neurons carry which value of a label, by one method.

    ``specific[site]`` is a boolean ``(units, labels)`` matrix: neuron ``u`` is specific to
    label ``labels[j]`` by the method's criterion (see the method); ``score[site]`` the
    method's per-neuron, per-label score (LAPE: activation probability; stats: Welch t;
    probe / diffmeans: standardized mean difference one-vs-rest). ``arrays[site]`` holds
    method-specific arrays (e.g. LAPE's ``entropy``), ``info`` thresholds, parameters and
    JSON results (probe curves, 1-d probe accuracies).
    """

    method: str
    field: str
    labels: list[str]
    sites: list[str]
    specific: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- tables

    def counts(self) -> pd.DataFrame:
        """Specific neurons per site (rows) and label (columns), plus ``units`` and
        ``neurons`` (neurons specific to at least one label)."""
        rows = []
        for s in self.sites:
            m = self.specific[s]
            rows.append({"site": s, "units": m.shape[0], "neurons": int(m.any(axis=1).sum()),
                         **{lab: int(m[:, j].sum()) for j, lab in enumerate(self.labels)}})
        return pd.DataFrame(rows, columns=["site", "units", "neurons", *self.labels])

    def neurons(self) -> pd.DataFrame:
        """One row per specific neuron: ``site, unit, labels`` (comma-separated values it is
        specific to), ``n_labels``, ``top_label`` (highest score among them) and ``score``."""
        rows = []
        for s in self.sites:
            m, sc = self.specific[s], self.score[s]
            for u in np.flatnonzero(m.any(axis=1)):
                js = np.flatnonzero(m[u])
                best = js[np.argmax(sc[u, js])] if np.isfinite(sc[u, js]).any() else js[0]
                rows.append({"site": s, "unit": int(u), "labels": ",".join(self.labels[j] for j in js),
                             "n_labels": len(js), "top_label": self.labels[best], "score": float(sc[u, best])})
        return pd.DataFrame(rows, columns=["site", "unit", "labels", "n_labels", "top_label", "score"])

    def units_for(self, label: str) -> dict[str, np.ndarray]:
        """``{site: units}`` of the neurons specific to ``label`` (what ``intervene.ablate`` /
        ``clamp`` take to deactivate or activate them)."""
        if label not in self.labels:
            raise NeuronscopeError(f"no label value {label!r}; values: {', '.join(self.labels)}")
        j = self.labels.index(label)
        return {s: np.flatnonzero(self.specific[s][:, j]) for s in self.sites}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: method, label field and values, parameters, per-site counts,
        and the specific neurons (``{site: {label: [units]}}``)."""
        return {
            "method": self.method,
            "field": self.field,
            "labels": list(self.labels),
            "info": self.info,
            "counts": self.counts().to_dict("records"),
            "specific": {s: {lab: np.flatnonzero(self.specific[s][:, j]).tolist()
                             for j, lab in enumerate(self.labels)} for s in self.sites},
        }

    # ---------------------------------------------------------------- storage

    def extra_name(self) -> str:
        return f"{EXTRA_PREFIX}{self.field}-{self.method}"

    def save(self, run: Any, name: str | None = None) -> str:
        """Store the result in ``run`` as ``extras/locate-<field>-<method>`` (or ``name``):
        arrays ``<site>|specific``, ``<site>|score`` and ``<site>|<key>``; the counts matrix
        (sites × labels) as ``counts`` so the atlas shows it as a heatmap; ``info`` as JSON.
        Returns the extras name."""
        arrays: dict[str, np.ndarray] = {}
        for s in self.sites:
            arrays[f"{s}|specific"] = self.specific[s].astype(np.uint8)
            arrays[f"{s}|score"] = np.asarray(self.score[s], dtype=np.float64)
            for k, v in self.arrays.get(s, {}).items():
                arrays[f"{s}|{k}"] = np.asarray(v)
        counts = self.counts()
        arrays["counts"] = counts[self.labels].to_numpy(dtype=np.float64).reshape(len(self.sites), len(self.labels))
        title = f"{self.method}: neurons specific to each {self.field} value"
        attrs = {
            "title": title,
            "locate": {"method": self.method, "field": self.field, "labels": list(self.labels),
                       "sites": list(self.sites), "array_keys": {s: sorted(self.arrays.get(s, {})) for s in self.sites}},
            "info_json": json.dumps(_jsonable(self.info), allow_nan=False),
            "heatmaps": {"counts": {"title": f"{title} (sites × values)", "rows": list(self.sites),
                                    "cols": list(self.labels)}},
        }
        name = name or self.extra_name()
        run.write_extras(name, arrays, attrs)
        return name

    @classmethod
    def from_extras(cls, extra: Mapping[str, Any]) -> LocateResult:
        """Rebuild a stored result (``run.extras(name)``)."""
        arrays, attrs = extra["arrays"], extra["attrs"]
        meta = attrs.get("locate")
        if not isinstance(meta, Mapping):
            raise NeuronscopeError("this extras entry is not a locate result")
        sites = list(meta["sites"])
        return cls(
            method=str(meta["method"]), field=str(meta["field"]), labels=[str(x) for x in meta["labels"]],
            sites=sites,
            specific={s: np.asarray(arrays[f"{s}|specific"]).astype(bool) for s in sites},
            score={s: np.asarray(arrays[f"{s}|score"], dtype=np.float64) for s in sites},
            arrays={s: {k: np.asarray(arrays[f"{s}|{k}"]) for k in meta.get("array_keys", {}).get(s, [])} for s in sites},
            info=json.loads(attrs.get("info_json", "{}")),
        )


def stored_results(run: Any) -> list[LocateResult]:
    """Every locate result stored in ``run`` (``extras/locate-*``), in name order."""
    out = []
    for name in run.extra_names():
        if name.startswith(EXTRA_PREFIX):
            extra = run.extras(name)
            if extra is not None and isinstance(extra["attrs"].get("locate"), Mapping):
                out.append(LocateResult.from_extras(extra))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj
