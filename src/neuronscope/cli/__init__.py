"""``neuronscope`` command line: thin verbs over the Python API.

Every verb takes ``--json`` for machine-readable output. Errors are one line on stderr
that names the fix, with exit code 2.

* :mod:`neuronscope.cli.output` — the one output module: JSON emitter and rich tables.
* :mod:`neuronscope.cli.run` — ``record``, ``info``, ``summarize``, ``demo``.
* :mod:`neuronscope.cli.characterize` — ``characterize``.
* :mod:`neuronscope.cli.atlas` — ``atlas``, ``serve``.
* :mod:`neuronscope.cli.compare` — ``compare``.
* :mod:`neuronscope.cli.match` — ``match``, ``sysid``.
* :mod:`neuronscope.cli.causal` — ``attribute``, ``ablate``, ``steer``.
* :mod:`neuronscope.cli.modules` — ``modules``, ``moefy``.

The group modules define plain command functions and import nothing from this package
module; :data:`app` is built here from them, and :func:`main` is the console entry point.
"""

from __future__ import annotations

import os
import sys

import typer

from neuronscope.cli import atlas, causal, characterize, compare, match, run
from neuronscope.cli import modules as modules_cli
from neuronscope.errors import NeuronscopeError

__all__ = ["app", "main"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    ("modules", modules_cli.modules),
    ("moefy", modules_cli.moefy),
):
    app.command(_name)(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app on ``argv`` (default: the process arguments),
    turning user errors into one line ``error: …`` on stderr and exit code 2."""
    try:
        app(args=argv)
    except NeuronscopeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)
