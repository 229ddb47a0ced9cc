"""Early checks of what a verb is given, made before any model loads or any computing starts.

* :func:`output_file` / :func:`output_dir` — an output path is of the right kind (a file
  path that is not a directory, a directory that is not a file) and can be written: the
  path itself if it exists, else the nearest existing ancestor must be a writable directory
  (so a mistyped ``--out`` fails in a second, not after the work).
* :func:`writable_run` — a run a verb writes into (``summarize``, ``compare --save``,
  ``attribute --save``) exists, is a run and can be written.
* :func:`open_interval` — a typer callback for a number in a half-open range such as
  (0, 1], which typer's ``min``/``max`` (closed bounds) cannot say.

Every failure is a one-line :class:`~neuronscope.errors.NeuronscopeError` (or, for the
callback, a typer ``BadParameter`` that ``neuronscope.cli.main`` prints as one line).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from neuronscope.errors import NeuronscopeError

__all__ = ["PLOT_SUFFIXES", "open_interval", "output_dir", "output_file", "writable_run"]

#: File types a plot can be written as (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_dir(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK)


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor of a path to be created is a writable directory."""
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise NeuronscopeError(f"{option} {path}: {anc} is a file, not a directory; choose another path")
    if not _writable_dir(anc):
        raise NeuronscopeError(f"{option} {path}: directory {anc} is not writable; choose a writable path")


def output_file(path: Path, option: str, suffixes: Sequence[str] | None = None) -> Path:
    """Check that ``path`` can be written as a file (before the work that produces it).

    ``suffixes``, when given, are the accepted file types (case-insensitive).
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise NeuronscopeError(f"{option} must end in {' or '.join(suffixes)}, not {path.name!r}")
    if path.is_dir():
        raise NeuronscopeError(f"{option} {path} is a directory; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise NeuronscopeError(f"{option} {path} is not writable; choose another path")
        return path
    _check_parent(path, option)
    return path


def output_dir(path: Path, option: str) -> Path:
    """Check that ``path`` can be written as a directory (created if missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NeuronscopeError(f"{option} {path} is a file; give a directory path")
    if path.is_dir():
        if not _writable_dir(path):
            raise NeuronscopeError(f"{option} {path} is not writable; choose a writable directory")
        return path
    _check_parent(path, option)
    return path


def writable_run(path: Path, option: str) -> Any:
    """Open the run at ``path`` that a verb will write into, checking it can be written;
    returns the :class:`~neuronscope.store.Run`."""
    from neuronscope.store import open_run

    path = Path(path)
    if not path.exists():
        raise NeuronscopeError(f"{option} {path} does not exist; give a run written by `neuronscope record`")
    run = open_run(path)
    if not _writable_dir(path):
        raise NeuronscopeError(f"{option} {path} is not writable; make the run writable or copy it")
    return run


def open_interval(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> Callable[[Any], Any]:
    """A typer option callback accepting numbers (or lists of numbers) in the interval from
    ``lo`` to ``hi``, open at the ends marked open, e.g. ``(0, 1]`` for a fraction of samples."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"

    def check(value: Any) -> Any:
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is None:
                continue
            ok_lo = v > lo if lo_open else v >= lo
            ok_hi = v < hi if hi_open else v <= hi
            if not (ok_lo and ok_hi):
                raise typer.BadParameter(f"{v:g} is not in {left}{lo:g}, {hi:g}{right}")
        return value

    return check
