"""Progress of the slow analyses (comparisons over stored runs, the atlas): one rich bar on
stderr, or a callback, or nothing.

Every long-running analysis takes ``progress``: ``True`` draws a transient ``rich`` bar on
stderr (never on stdout, so ``--json`` output stays clean), ``False``/``None`` draws nothing,
and a callable ``progress(done, total, detail)`` receives the counts instead (for notebooks or
other front ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: What the ``progress`` argument of the slow analyses accepts.
ProgressArg = bool | Callable[[int, int, str], Any] | None
#: ``advance(done, detail)``: report ``done`` of the total steps, with an optional detail text.
Advance = Callable[..., None]


@contextmanager
def progress_bar(what: str, total: int, progress: ProgressArg, unit: str = "") -> Iterator[Advance]:
    """A progress reporter for ``total`` steps of ``what``; yields ``advance(done, detail="")``.

    ``progress=True``: a transient rich bar on stderr when stderr is a terminal (description,
    bar, done/total ``unit``, detail, elapsed and remaining time). A callable gets ``(done, total, detail)``. Anything
    falsy reports nothing.
    """
    if callable(progress):
        def call(done: int, detail: str = "") -> None:
            progress(int(done), int(total), detail)

        yield call
        return
    if not progress:
        yield lambda done, detail="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or a pipe gets no bar (and no stray blank line)
        yield lambda done, detail="": None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total, detail="")

        def advance(done: int, detail: str = "") -> None:
            bar.update(task, completed=done, detail=detail)

        yield advance
