"""Store analysis results inside a run so the atlas shows them (``extras/<name>``).

* :func:`save_comparison` — a ``compare_all`` matrix as a heatmap page of the atlas; an
  existing result of the same name is replaced only with ``overwrite=True``.
* :func:`comparison_name` — the default name of a comparison of two specs under a metric
  (``compare-cka-run.zarr-encoder.layer.all.intermediate-vs-brain.npz``), and
  :func:`check_extra_name` for names users give.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

#: Longest extras name written (longer default names keep a prefix and a hash of the rest).
MAX_NAME = 150
_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def check_extra_name(name: str) -> str:
    """``name`` if it can name a result in a run (letters, digits, ``.``, ``_``, ``-``; not
    starting with ``.`` or ``__``; at most :data:`MAX_NAME` characters), else a one-line error."""
    if (not name or _BAD.search(name) or name.startswith((".", "__")) or len(name) > MAX_NAME):
        raise NeuronscopeError(
            f"{name!r} cannot name a result in a run; use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME} characters, not starting with '.' or '__')"
        )
    return name


def _spec_label(spec: str | Path) -> str:
    """A short label of a population spec: ``RUN:GLOB`` → run directory name + glob, a file →
    its name."""
    text = str(spec)
    path = Path(text)
    if _is_file(path):
        return path.name
    run, sep, glob = text.rpartition(":")
    if sep and run:
        return f"{Path(run).name}-{glob or 'all'}"
    return path.name or text


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return False


def comparison_name(metric: str, a: str | Path, b: str | Path) -> str:
    """The default extras name of the comparison of specs ``a`` and ``b`` under ``metric``:
    ``compare-<metric>-<a>-vs-<b>``, with run specs as ``<run dir name>-<glob>`` and files by
    name, ``*`` spelled ``all`` and any other character outside ``[A-Za-z0-9._-]`` as ``-``
    (names longer than :data:`MAX_NAME` keep a prefix and a hash of the full name)."""
    raw = f"compare-{metric}-{_spec_label(a)}-vs-{_spec_label(b)}".replace("*", "all").replace("?", "any")
    name = re.sub(r"-{2,}", "-", _BAD.sub("-", raw)).strip("-.")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = name[: MAX_NAME - 11].rstrip("-.") + "-" + digest
    return check_extra_name(name)


def save_comparison(run: Any, matrix: Any, metric: str, title: str | None = None, name: str | None = None,
                    overwrite: bool = False) -> str:
    """Write a comparison matrix (``compare_all``'s DataArray with dims ``a``, ``b``) into
    ``run`` as ``extras/<name>`` (default ``compare-<metric>``); the atlas renders it as a
    heatmap. A result already stored under that name is an error unless ``overwrite=True``.
    Returns the extras name."""
    from neuronscope.store import Run, open_run

    run = run if isinstance(run, Run) else open_run(Path(run))
    if getattr(matrix, "dims", None) != ("a", "b"):
        raise NeuronscopeError("save_comparison needs compare_all's matrix (an xarray.DataArray with dims a, b)")
    name = check_extra_name(name or f"compare-{metric}")
    if not overwrite and name in run.extra_names():
        raise NeuronscopeError(
            f"run {run.path} already holds a result named {name!r}; pass --overwrite "
            "(overwrite=True) to replace it, or another --name (name=) to keep both"
        )
    values = np.asarray(matrix.values, dtype=np.float64)
    rows = [str(x) for x in matrix["a"].values]
    cols = [str(x) for x in matrix["b"].values]
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
