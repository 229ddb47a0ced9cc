"""``neuronscope atlas`` and ``neuronscope serve``: build and serve the static HTML atlas.

Thin over :func:`neuronscope.atlas.build.build_atlas`; :func:`make_server` is the local
HTTP server ``serve`` runs.
"""

from __future__ import annotations

import functools
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import typer

from neuronscope.cli.output import emit_json
from neuronscope.errors import NeuronscopeError


def atlas(
    run: Path = typer.Argument(..., help="A run directory written by `neuronscope record`."),
    out: Path = typer.Option(..., "--out", help="Directory to write the static atlas into (created if missing; an atlas already there is replaced)."),
    examples: int = typer.Option(16, help="Top-activating examples shown per neuron (at most the run's top-k)."),
    inputs: Path = typer.Option(None, "--inputs", show_default=False,
                                help="The inputs an image run was recorded on (.npy, or .npz with an 'images' "
                                     "array), checked against the run, for thumbnails of the top examples "
                                     "(the scikit-learn digits are found without it)."),
    json_out: bool = typer.Option(False, "--json", help='Print {"index": path, "bytes": n, "seconds": s} as JSON.'),
) -> None:
    """Build a static HTML atlas of every neuron of a run (opens from the file system, no server)."""
    from neuronscope.atlas.build import build_atlas, site_bytes

    t0 = time.perf_counter()
    index = build_atlas(run, out, examples=examples, inputs="auto" if inputs is None else inputs,
                        progress=not json_out)
    seconds = round(time.perf_counter() - t0, 3)
    nbytes = site_bytes(index.parent)
    if json_out:
        emit_json({"index": index.resolve(), "bytes": nbytes, "seconds": seconds})
    else:
        typer.echo(f"atlas written in {seconds:.1f} s ({nbytes / 1e6:.1f} MB); open {index.resolve()}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass


def make_server(directory: Path, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for an atlas directory bound to 127.0.0.1 (``port=0`` picks a free port)."""
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise NeuronscopeError(f"{directory} holds no index.html; build one with `neuronscope atlas RUN --out {directory}`")
    handler = functools.partial(_QuietHandler, directory=str(directory.resolve()))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise NeuronscopeError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}); pass another --port") from None


def serve(
    dir: Path = typer.Argument(..., help="An atlas directory written by `neuronscope atlas`."),  # noqa: A002
    port: int = typer.Option(8000, help="Port on 127.0.0.1 to serve on (0 picks a free one)."),
) -> None:
    """Serve an atlas on http://127.0.0.1:PORT/ (optional: the atlas also opens from the file system)."""
    server = make_server(dir, port)
    typer.echo(f"serving {Path(dir).resolve()} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
