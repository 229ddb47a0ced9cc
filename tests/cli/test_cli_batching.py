"""`neuronscope record` batching options (issue 16): explained in --help, stored in the run's
configuration, and the padding fraction shown by `neuronscope info`."""

from __future__ import annotations

import json
import os

import typer
from typer.testing import CliRunner

from neuronscope.cli import app


def test_record_help_explains_batching_options() -> None:
    res = CliRunner().invoke(app, ["record", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for option in ("--batching", "--max-batch-tokens", "--window", "--pack"):
        assert option in text, option
    helps = {p.name: p.help for p in typer.main.get_command(app).commands["record"].params}
    assert "padding a few percent" in helps["batching"] and "at least --max-tokens" in helps["max_batch_tokens"]
    assert "tokenize_and_concatenate" in helps["pack"] and "ctx" in helps["pack"]


def test_cli_record_bucketed_and_packed_runs_report_padding(tmp_path, small_corpus) -> None:
    runner = CliRunner()
    base = ["record", "--corpus", str(small_corpus), "--sites", "encoder.layer.0.intermediate", "--keep", "summaries",
            "--max-tokens", "32", "--no-progress"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b.zarr"), "--max-batch-tokens", "256", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["source"]["batching"] == "bucket" and info["source"]["max_batch_tokens"] == 256
    assert info["batching"]["tokens"] == info["samples"] and info["batching"]["padding"] < 0.2
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "p.zarr"), "--pack", "64", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["source"]["pack"] == 64 and info["items"] == -(-info["samples"] // 64)
    res = runner.invoke(app, ["info", str(tmp_path / "b.zarr")], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "padding" in res.output and "bucket" in res.output


def test_cli_record_turns_off_onednn_primitive_cache_unless_set(tmp_path, small_corpus, monkeypatch) -> None:
    """`record` over bucketed text sets ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 for its process
    (batches of many shapes would fill oneDNN's cache), packed text does not (one shape);
    a value the user set stays."""
    from neuronscope.recording import PRIMITIVE_CACHE_ENV

    base = ["record", "--corpus", str(small_corpus), "--sites", "encoder.layer.0.intermediate", "--keep", "summaries",
            "--max-tokens", "16", "--no-progress", "--json"]
    monkeypatch.setenv(PRIMITIVE_CACHE_ENV, "x")  # undone after the test, whatever record sets
    monkeypatch.delenv(PRIMITIVE_CACHE_ENV)
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "p.zarr"), "--pack", "32"])
    assert res.exit_code == 0, res.output
    assert PRIMITIVE_CACHE_ENV not in os.environ
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a.zarr")])
    assert res.exit_code == 0, res.output
    assert os.environ[PRIMITIVE_CACHE_ENV] == "0"
    monkeypatch.setenv(PRIMITIVE_CACHE_ENV, "16")
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b.zarr")])
    assert res.exit_code == 0, res.output
    assert os.environ[PRIMITIVE_CACHE_ENV] == "16"
