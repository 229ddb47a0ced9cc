"""Store analysis results inside a run so the atlas shows them (``extras/<name>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError


def save_comparison(run: Any, matrix: Any, metric: str, title: str | None = None, name: str | None = None) -> str:
    """Write a comparison matrix (``compare_all``'s DataArray with dims ``a``, ``b``) into
    ``run`` as ``extras/compare-<metric>`` (or ``name``); the atlas renders it as a heatmap.
    Returns the extras name."""
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(Path(run))
    if getattr(matrix, "dims", None) != ("a", "b"):
        raise NeuronscopeError("save_comparison needs compare_all's matrix (an xarray.DataArray with dims a, b)")
    values = np.asarray(matrix.values, dtype=np.float64)
    rows = [str(x) for x in matrix["a"].values]
    cols = [str(x) for x in matrix["b"].values]
    name = name or f"compare-{metric}"
    finite = values[np.isfinite(values)]
    spec = {
        "title": title or f"{metric} between populations",
        "rows": rows,
        "cols": cols,
        "vmin": float(min(0.0, finite.min())) if finite.size else 0.0,
        "vmax": float(max(1.0, finite.max())) if finite.size else 1.0,
    }
    run.write_extras(name, {"matrix": values}, {"title": spec["title"], "metric": metric, "heatmaps": {"matrix": spec}})
    return name
