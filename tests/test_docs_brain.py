"""docs/brain.md ("Compare a model with brain data") runs as written: every bash line (the
``neuronscope`` CLI and the study generator) and every Python block, in order, in a fresh
directory."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "brain.md"

pytest.importorskip("snntorch")


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def test_brain_walkthrough_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuronscope.cli import main
    from neuronscope.testing.brain import main as study_main

    blocks = _blocks(DOC.read_text(encoding="utf-8"))
    assert [k for k, _ in blocks].count("bash") >= 3 and [k for k, _ in blocks].count("python") >= 3
    with _cwd(tmp_path):
        for kind, code in blocks:
            if kind == "python":
                exec(compile(code, str(DOC), "exec"), {"__name__": "__doc__"})
                continue
            for line in code.strip().splitlines():
                args = shlex.split(line)
                if args[:3] == ["python", "-m", "neuronscope.testing.brain"]:
                    study_main(args[3:])
                    continue
                assert args[0] == "neuronscope", line
                try:
                    main(args[1:])
                except SystemExit as e:  # typer exits 0 after a command
                    assert e.code in (0, None), (line, capsys.readouterr().err)
        out = capsys.readouterr().out
    assert (tmp_path / "study" / "rsa.svg").exists()
    assert "noise ceiling: lower" in out and "spike statistics" in out
    assert "mlp:act2" in out and "snn:act1" in out  # run sites named by their run when names clash
    from neuronscope.store import open_run

    assert "rsa" in open_run(tmp_path / "study" / "mlp.zarr").extra_names()
