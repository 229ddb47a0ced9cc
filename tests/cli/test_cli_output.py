"""The CLI's one output module, and the app it builds: strict JSON, every option explained,
errors as one line that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from neuronscope.cli import app, main
from neuronscope.cli.output import emit_json, frame_table, to_jsonable


def test_emit_json_converts_numpy_paths_and_non_finite(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json({
        "int": np.int64(3), "float": np.float32(0.5), "bool": np.bool_(True),
        "array": np.arange(3), "matrix": np.eye(2), "path": Path("/tmp/x"), "tuple": (1, 2),
        "nan": float("nan"), "np_nan": np.float64("nan"), "inf": np.array([1.0, np.inf]),
        "nested": [{"k": np.float64(-np.inf)}], np.int64(7): "numpy key",
    })
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    assert json.loads(out) == {
        "int": 3, "float": 0.5, "bool": True, "array": [0, 1, 2], "matrix": [[1.0, 0.0], [0.0, 1.0]],
        "path": "/tmp/x", "tuple": [1, 2], "nan": None, "np_nan": None, "inf": [1.0, None],
        "nested": [{"k": None}], "7": "numpy key",
    }


def test_to_jsonable_keeps_python_values() -> None:
    value = {"a": [1, "b", None, True, 2.5]}
    assert to_jsonable(value) == value
    assert type(to_jsonable(np.int32(4))) is int


def test_frame_table_formats_floats_and_aligns_columns() -> None:
    import pandas as pd
    from rich.console import Console

    t = frame_table("title", pd.DataFrame({"name": ["a", "b"], "value": [0.12345, 2.0], "n": [1, 2]}))
    assert [c.justify for c in t.columns] == ["left", "right", "right"]
    console = Console(width=120, record=True)
    console.print(t)
    text = console.export_text()
    assert "0.123" in text and "2.000" in text and "0.12345" not in text


def test_every_verb_and_option_is_explained() -> None:
    group = typer.main.get_command(app)
    assert set(group.commands) == {"record", "info", "verify", "summarize", "demo", "characterize", "atlas",
                                   "serve", "compare", "match", "sysid", "attribute", "ablate", "steer", "rsa", "locate",
                                   "modules", "moefy"}
    for name, command in group.commands.items():
        assert command.help and command.help.strip(), name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"
        res = CliRunner().invoke(app, [name, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output and "--help" in res.output, name


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "/nonexistent/run.zarr"], "no run at /nonexistent/run.zarr"),
        (["compare", "nowhere/run:layer*", "nowhere/run:layer*"],
         "run 'nowhere/run' does not exist; give RUN:SITE_GLOB of a recorded run"),
        (["compare", "a.npy", "b.npy", "--metric", "bogus"],
         "unknown metric 'bogus'; use one of cka, debiased_cka, rbf_cka, rsa, trsa, cca, svcca, "
         "pwcca, procrustes, shape, encoding"),
    ],
)
def test_main_prints_one_error_line_and_exits_2(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), err


def _words(text: str) -> str:
    """Rendered help as one line of words (box drawing and wrapping removed)."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


@pytest.mark.parametrize("columns", [None, "60"])
def test_help_is_never_cut(columns: str | None) -> None:
    """Every verb's and every option's help appears whole in --help, in a pipe and in a narrow
    terminal alike (typer's rich help squeezes option help into "…" below ~100 columns)."""
    group = typer.main.get_command(app)
    env = {"COLUMNS": columns} if columns else {}
    top = CliRunner().invoke(app, ["--help"], env=env)
    assert "…" not in top.output
    for name, command in group.commands.items():
        assert _words(command.short_help) in _words(top.output), name
        res = CliRunner().invoke(app, [name, "--help"], env=env)
        assert res.exit_code == 0 and "…" not in res.output, name
        text = _words(res.output)
        for param in command.params:
            assert _words(param.help) in text, f"{name} {param.name}"
