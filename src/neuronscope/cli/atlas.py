"""``neuronscope atlas`` and ``neuronscope serve``: build and serve the static HTML atlas.

Thin over :func:`neuronscope.atlas.build.build_atlas`; :func:`make_server` is the local
HTTP server ``serve`` runs.
"""

from __future__ import annotations

import functools
import os
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import typer

from neuronscope.cli.checks import output_dir
from neuronscope.cli.output import emit_json
from neuronscope.errors import NeuronscopeError


def atlas(
    run: Path = typer.Argument(..., help="A run directory written by `neuronscope record`."),
    out: Path = typer.Option(..., "--out", help="Directory to write the static atlas into (created if missing; an atlas already there is replaced)."),
    examples: int = typer.Option(16, min=1, help="Top-activating examples shown per neuron (at most the run's top-k)."),
    json_out: bool = typer.Option(False, "--json", help='Print {"index": path, "bytes": n, "seconds": s} as JSON.'),
) -> None:
    """Build a static HTML atlas of every neuron of a run (opens from the file system, no server)."""
    from neuronscope.atlas.build import build_atlas, site_bytes

    output_dir(out, "--out")
    t0 = time.perf_counter()
    index = build_atlas(run, out, examples=examples)
    seconds = round(time.perf_counter() - t0, 3)
    nbytes = site_bytes(index.parent)
    if json_out:
        emit_json({"index": index.resolve(), "bytes": nbytes, "seconds": seconds})
    else:
        typer.echo(f"atlas written in {seconds:.1f} s ({nbytes / 1e6:.1f} MB); open {index.resolve()}")


#: Host names a request to the atlas server may carry (with or without the server's port):
#: anything else is refused, so a web page cannot reach the server through a DNS name that
#: rebinds to 127.0.0.1 (DNS rebinding).
LOCAL_HOSTS = ("127.0.0.1", "localhost")


class AtlasRequestHandler(SimpleHTTPRequestHandler):
    """Serves the atlas's files and nothing else: no directory listings (a directory
    without ``index.html`` is 404) and no request whose ``Host`` header is not
    ``127.0.0.1`` / ``localhost`` (optionally with the server's port) — 403."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        name, sep, port = host.rpartition(":")
        if not sep:
            name, port = host, ""
        return name in LOCAL_HOSTS and port in ("", str(self.server.server_address[1]))

    def send_head(self) -> Any:
        """Refuse foreign ``Host`` headers before anything is looked up on disk."""
        if not self._host_ok():
            self.send_error(403, "Forbidden: the atlas server answers only to 127.0.0.1 and localhost")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        """No listings: a directory without index.html is not found."""
        self.send_error(404, "File not found")
        return None


def make_server(directory: Path, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for an atlas directory bound to 127.0.0.1 (``port=0`` picks a free port)
    that serves its files only to local ``Host`` names (see :class:`AtlasRequestHandler`)."""
    if not 0 <= port <= 65535:
        raise NeuronscopeError(f"port {port} is out of range; pass --port in 0..65535")
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise NeuronscopeError(f"{directory} holds no index.html; build one with `neuronscope atlas RUN --out {directory}`")
    handler = functools.partial(AtlasRequestHandler, directory=str(directory.resolve()))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise NeuronscopeError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}); pass another --port") from None


def serve(
    dir: Path = typer.Argument(..., help="An atlas directory written by `neuronscope atlas`."),  # noqa: A002
    port: int = typer.Option(8000, min=0, max=65535, help="Port on 127.0.0.1 to serve on (0 picks a free one)."),
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
