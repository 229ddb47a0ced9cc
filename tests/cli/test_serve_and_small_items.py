"""The smaller items of issue 10: ``serve`` serves files only and only to local Host names
(no directory listings, DNS rebinding refused), the atlas carries no absolute local path of
the model, the command line's own usage errors and help."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from neuronscope.cli import main
from neuronscope.cli.atlas import make_server


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "atlas"
    (root / "data" / "deep").mkdir(parents=True)
    (root / "index.html").write_text("<html>atlas</html>")
    (root / "data" / "site.js").write_text("var x = 1;")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text("<html>sub</html>")
    server = make_server(root, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_serve_serves_files_to_local_host_names(served: tuple[Path, int]) -> None:
    root, port = served
    for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "LOCALHOST"):
        status, body = _get(port, "/index.html", host)
        assert (status, body) == (200, b"<html>atlas</html>"), host
    assert _get(port, "/data/site.js", "localhost") == (200, b"var x = 1;")
    assert _get(port, "/sub/", "localhost") == (200, b"<html>sub</html>")  # a directory's index.html


def test_serve_lists_no_directory(served: tuple[Path, int]) -> None:
    _, port = served
    for path in ("/data/", "/data/deep/"):
        status, body = _get(port, path, "localhost")
        assert status == 404 and b"site.js" not in body, (path, body[:200])


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "attacker.localhost",
                                  "127.0.0.1:1", "", None])
def test_serve_refuses_foreign_host_headers(served: tuple[Path, int], host: str | None) -> None:
    """DNS rebinding: a page on evil.example whose name re-resolves to 127.0.0.1 sends
    ``Host: evil.example``; the server answers 403 and reads nothing from disk."""
    _, port = served
    status, body = _get(port, "/index.html", host)
    assert status == 403 and b"atlas</html>" not in body


def test_serve_option_range_is_checked_by_the_api_too(tmp_path: Path) -> None:
    from neuronscope.errors import NeuronscopeError

    (tmp_path / "index.html").write_text("x")
    for port in (-1, 70000):
        with pytest.raises(NeuronscopeError, match="pass --port in 0..65535"):
            make_server(tmp_path, port)


def test_atlas_strips_the_local_model_path(tmp_path: Path) -> None:
    import torch

    import neuronscope
    from neuronscope.atlas.build import collect_atlas_data

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    model.neuronscope_id = str(tmp_path / "secret" / "home" / "my-model")  # what a local HF directory records
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    run = neuronscope.record(model, neuronscope.TensorSource(x, batch_size=10), "1", out=tmp_path / "run",
                             keep="summaries", progress=False, summary_config={"k": 2})
    assert str(tmp_path) in str(run.config["model"])
    data = collect_atlas_data(run)
    text = repr(data)
    assert data["meta"]["model"] == "my-model" and data["title"].startswith("my-model")
    assert str(tmp_path) not in text and "secret" not in text


def test_usage_errors_help_and_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "x", "--port", "70000"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines() == [
        "error: Invalid value for '--port': Input should be less than or equal to 65535; allowed: 0..65535 "
        "(see `neuronscope serve --help`)"]
    with pytest.raises(SystemExit) as exc:
        main(["nosuchverb"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "No such command 'nosuchverb'" in err
    for argv in ([], ["--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        out, err = capsys.readouterr()
        assert exc.value.code == 0 and "Usage:" in out and not err, argv


def test_an_environment_failure_under_a_verb_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The last resort of ``main``: an OSError naming a file (a disk that fills, a file that
    vanishes mid-run) is one line naming the path, not a traceback."""
    import errno

    import neuronscope.store

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run.zarr/sites/x")

    monkeypatch.setattr(neuronscope.store, "open_run", full)
    with pytest.raises(SystemExit) as exc:
        main(["info", "somewhere"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines() == [
        "error: No space left on device: /data/run.zarr/sites/x; check the path, its permissions and the "
        "free disk space"]
