"""``neuronscope`` command line: thin verbs over the Python API.

Every verb takes ``--json`` for machine-readable output. Errors are one line on stderr
that names the fix, with exit code 2.

* :mod:`neuronscope.cli.output` — the one output module: JSON emitter and rich tables.
* :mod:`neuronscope.cli.checks` — early checks of output paths, runs written into and
  half-open option ranges, made before any model loads or any computing starts.
* :mod:`neuronscope.cli.run` — ``record``, ``info``, ``verify``, ``summarize``, ``demo``.
* :mod:`neuronscope.cli.characterize` — ``characterize``.
* :mod:`neuronscope.cli.atlas` — ``atlas``, ``serve``.
* :mod:`neuronscope.cli.compare` — ``compare``.
* :mod:`neuronscope.cli.match` — ``match``, ``sysid``.
* :mod:`neuronscope.cli.causal` — ``attribute``, ``ablate``, ``steer``.
* :mod:`neuronscope.cli.rsa` — ``rsa`` (the RSA model comparison against subjects' RDMs).
* :mod:`neuronscope.cli.locate` — ``locate``.
* :mod:`neuronscope.cli.modules` — ``modules``, ``moefy``.

The group modules define plain command functions and import nothing from this package
module; :data:`app` is built here from them, and :func:`main` is the console entry point.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
import typer.rich_utils

from neuronscope.cli import atlas, causal, characterize, compare, locate, match, rsa, run
from neuronscope.cli import modules as modules_cli
from neuronscope.errors import NeuronscopeError

try:  # typer (pinned) vendors click as typer._click; plain click for a typer that does not
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover
    from click import exceptions as _click

__all__ = ["app", "main"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Narrowest width help is rendered at: below it rich squeezes the option-help column until
#: words are cut with "…" (CI logs and pipes default to 80 columns).
MIN_HELP_WIDTH = 100
#: Width of help when stdout is not a terminal and neither TERMINAL_WIDTH nor COLUMNS is set.
PIPE_HELP_WIDTH = 120


def help_width() -> int:
    """Width ``--help`` is rendered at: ``TERMINAL_WIDTH`` when set, else the terminal's (or
    ``COLUMNS``) but at least :data:`MIN_HELP_WIDTH`, or :data:`PIPE_HELP_WIDTH` for a pipe."""
    import shutil

    if os.environ.get("TERMINAL_WIDTH", "").isdigit():
        return int(os.environ["TERMINAL_WIDTH"])
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        return PIPE_HELP_WIDTH
    return max(shutil.get_terminal_size((PIPE_HELP_WIDTH, 24)).columns, MIN_HELP_WIDTH)


def short_help(doc: str | None) -> str:
    """The first paragraph of a verb's docstring on one line (the list of commands shows it;
    typer's rich mode would keep the docstring's line breaks there)."""
    import inspect

    first = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(first.split())


typer.rich_utils.MAX_WIDTH = help_width()

#: The ``neuronscope`` Typer application, one command per verb.
app = typer.Typer(
    help="neuronscope: record, characterize, compare and browse the neurons of any network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name, _command in (
    ("record", run.record),
    ("info", run.info),
    ("verify", run.verify),
    ("summarize", run.summarize),
    ("demo", run.demo),
    ("characterize", characterize.characterize),
    ("atlas", atlas.atlas),
    ("serve", atlas.serve),
    ("compare", compare.compare),
    ("match", match.match),
    ("sysid", match.sysid),
    ("attribute", causal.attribute),
    ("ablate", causal.ablate),
    ("steer", causal.steer),
    ("rsa", rsa.rsa),
    ("locate", locate.locate),
    ("modules", modules_cli.modules),
    ("moefy", modules_cli.moefy),
):
    app.command(_name, short_help=short_help(_command.__doc__))(_command)


def _one_line(text: str) -> str:
    """``text`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _allowed(param: object) -> str:
    """``"; allowed: 0..65535"`` for an option declared with typer's ``min``/``max``, else ``""``."""
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"; allowed: {lo}..{hi}"
    return f"; allowed: >= {lo}" if lo is not None else f"; allowed: <= {hi}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app on ``argv`` (default: the process arguments).

    Every failure a user can cause is one line ``error: …`` on stderr with exit code 2:
    a :class:`NeuronscopeError` from a verb, and click's usage errors (a bad option value
    or range, a missing or unknown option), which click would otherwise print as a
    multi-line usage box. ``--help`` and a bare ``neuronscope`` print help and exit 0.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    try:
        with command.make_context("neuronscope", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as e:  # --help, --version and ctx.exit()
        sys.exit(e.exit_code)
    except _click.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help())
        sys.exit(0)
    except _click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "neuronscope"
        _fail(f"{e.format_message()}{_allowed(getattr(e, 'param', None))} (see `{where} --help`)", 2)
    except _click.ClickException as e:
        _fail(e.format_message(), 2)
    except NeuronscopeError as e:
        _fail(str(e), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)
    except OSError as e:
        # The last resort for the environment failing under a verb (a file vanished, a disk
        # filled, a permission changed): still one line, naming the path and the reason.
        if e.filename is None or not e.strerror:
            raise
        _fail(f"{e.strerror}: {e.filename}; check the path, its permissions and the free disk space", 2)
