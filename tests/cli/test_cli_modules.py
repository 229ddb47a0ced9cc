"""``neuronscope modules`` and ``neuronscope moefy``: the API's numbers, saved extras, and one-line
errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuronscope.cli import app, main

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from neuronscope.recording import record
    from neuronscope.sources.tensors import TensorSource
    from neuronscope.testing.digits import digits_data, train_digits

    x, _ = digits_data("all", "mlp")
    out = tmp_path_factory.mktemp("mods") / "run.zarr"
    record(train_digits("mlp", 0), TensorSource(x[:500], batch_size=100), "act*", out, progress=False)
    return out


def _json(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


def test_modules_equals_the_api_and_saves_into_the_run(digits_run: Path) -> None:
    from neuronscope.analyses.modules import find_modules
    from neuronscope.store import open_run

    out = _json("modules", str(digits_run), "--seeds", "2", "--ntf-rank", "2", "--window", "sample",
                "--windows", "4", "--ntf-units", "12", "--snmf", "3", "--snmf-keep", "0.5")
    run = open_run(digits_run)
    api = find_modules(run, seeds=2)
    assert set(out["sites"]) == set(run.sites) == set(api)
    for site, e in out["sites"].items():
        assert e["n_modules"] == api[site].n_modules
        assert e["sizes"] == api[site].sizes.tolist()
        assert e["modularity"] == pytest.approx(api[site].modularity)
        assert e["saved"] == f"modules-{site}"
        assert np.array_equal(run.extras(e["saved"])["arrays"]["labels"], api[site].labels)
        assert e["connectome"]["rank"] == 2 and len(e["connectome"]["windows"]) == 4
        assert f"connectome-{site}" in run.extra_names()
        assert e["snmf"]["k"] == 3 and e["snmf"]["saved"] == f"snmf-{site}"
        assert run.extras(f"snmf-{site}")["arrays"]["features"].shape == (3, run.sites[site])
    res = runner.invoke(app, ["modules", str(digits_run), "--no-save", "--seeds", "1"])
    assert res.exit_code == 0 and "modularity" in res.output


def test_moefy_on_the_tiny_lm(tmp_path: Path) -> None:
    out = _json("moefy", "--model", "tinylm:0", "--experts", "4", "--top-k", "2,4", "--tokens", "1500",
                "--epochs", "3", "--heldout", "20", "--no-timing")
    assert out["kind"] == "causal-lm" and out["experts"] == 4 and out["site"] == "blocks.*.mlp.act"
    rows = {r["top_k"]: r for r in out["rows"]}
    assert rows[4]["quality"] == pytest.approx(1.0, abs=1e-4) and rows[4]["fraction"] == 1.0
    assert rows[2]["fraction"] == pytest.approx(0.5) and rows[2]["quality"] < 1.0
    assert out["best"]["top_k"] in (2, 4)


@pytest.mark.parametrize("args, message", [
    (["moefy", "--model", "tinylm:0", "--experts", "4", "--top-k", "8"], "at most --experts"),
    (["moefy", "--model", "tinylm:0", "--experts", "1000", "--top-k", "1"], "at most 512 experts"),
    (["moefy", "--model", "tinylm:0", "--site", "blocks.0.attn", "--top-k", "1", "--experts", "2"],
     "Linear → activation → Linear"),
    (["moefy", "--model", "digits-mlp:0"], "text model"),
    (["moefy", "--top-k", "a,b"], "comma-separated"),
    (["moefy", "--model", "tinylm:0", "--quality", "bleu"], "--quality"),
    (["modules", "/nonexistent/run.zarr"], "does not exist"),
])
def test_bad_input_is_one_line_with_exit_code_2(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
