"""``neuronscope compare``: response files, RDM files and a real recorded run (tiny torch
model through ``neuronscope.record``), single values and site matrices; metric options
reach ``compare_all`` only when given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.distance import squareform
from typer.testing import CliRunner

from neuronscope.analyses.compare import linear_cka, procrustes_distance, rsa
from neuronscope.analyses.rsa import rdm
from neuronscope.cli import app
from neuronscope.errors import NeuronscopeError

runner = CliRunner()


def _invoke(*args: str) -> dict:
    res = runner.invoke(app, ["compare", *args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 12))
    y = x @ rng.normal(size=(12, 7)) + rng.normal(size=(30, 7))
    np.save(tmp_path / "model.npy", x)
    np.save(tmp_path / "brain.npy", y)
    return tmp_path / "model.npy", tmp_path / "brain.npy", x, y


def test_compare_response_files(files: tuple) -> None:
    a, b, x, y = files
    out = _invoke(str(a), str(b))
    assert out["metric"] == "cka" and out["value"] == pytest.approx(linear_cka(x, y), abs=1e-12)
    out = _invoke(str(a), str(b), "--metric", "procrustes")
    assert out["value"] == pytest.approx(procrustes_distance(x, y), abs=1e-9)
    out = _invoke(str(a), str(b), "--metric", "rsa", "--compare", "pearson")
    assert out["value"] == pytest.approx(rsa(x, y, compare="pearson"), abs=1e-12)
    out = _invoke(str(a), str(b), "--metric", "encoding", "--cv", "3")
    assert -1 <= out["value"] <= 1
    plain = runner.invoke(app, ["compare", str(a), str(b), "--metric", "svcca"])
    assert plain.exit_code == 0 and f"svcca({a}, {b}) =" in plain.output


def test_compare_with_precomputed_rdm_file(files: tuple, tmp_path: Path) -> None:
    a, _, x, y = files
    scipy.io.savemat(tmp_path / "subjects.mat", {"rdms": np.stack([squareform(rdm(y)), squareform(rdm(y + 0.3))])})
    out = _invoke(str(a), str(tmp_path / "subjects.mat"), "--metric", "rsa")
    assert out["value"] == pytest.approx(np.mean([rsa(x, y), rsa(x, y + 0.3)]), abs=1e-10)
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "subjects.mat"), "--metric", "cka"])
    assert isinstance(res.exception, NeuronscopeError)


def test_compare_bad_specs(files: tuple) -> None:
    a, _, _, _ = files
    res = runner.invoke(app, ["compare", str(a), "nowhere/run:layer*"])
    assert isinstance(res.exception, NeuronscopeError) and "does not exist" in str(res.exception)
    res = runner.invoke(app, ["compare", str(a), str(a), "--metric", "bogus"])
    assert isinstance(res.exception, NeuronscopeError) and "unknown metric" in str(res.exception)


def test_compare_sites_of_a_recorded_run(tmp_path: Path, files: tuple) -> None:
    import neuronscope

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Tanh())
    _, b, x, y = files
    src = neuronscope.TensorSource(torch.tensor(x, dtype=torch.float32), batch_size=8)
    run_dir = tmp_path / "run"
    neuronscope.record(model, src, "1,3", out=run_dir, keep="activations", dtype="float32", progress=False)
    with torch.no_grad():
        h1 = model[1](model[0](torch.tensor(x, dtype=torch.float32))).numpy()
        h3 = model(torch.tensor(x, dtype=torch.float32)).numpy()
    out = _invoke(f"{run_dir}:*", str(b))
    assert out["rows"] == ["1", "3"] and out["cols"] == ["brain"]
    assert out["values"][0][0] == pytest.approx(linear_cka(h1, y), abs=1e-6)
    assert out["values"][1][0] == pytest.approx(linear_cka(h3, y), abs=1e-6)
    out = _invoke(f"{run_dir}:*", f"{run_dir}:*", "--metric", "shape")
    m = np.array(out["values"])
    assert m.shape == (2, 2) and np.allclose(np.diag(m), 0, atol=1e-5) and m[0, 1] == pytest.approx(m[1, 0])
    table = runner.invoke(app, ["compare", f"{run_dir}:*", str(b)])
    assert table.exit_code == 0 and "cka" in table.output


def test_only_the_options_given_reach_compare_all(files: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import neuronscope.analyses.compare as compare_module

    a, b, x, y = files
    seen: list[dict] = []
    real = compare_module.compare_all

    def spy(pops, metric="cka", others=None, **kw):
        assert kw.pop("progress") is False  # --json: no progress bar
        seen.append(dict(kw))
        return real(pops, metric, others=others, **kw)

    monkeypatch.setattr(compare_module, "compare_all", spy)
    _invoke(str(a), str(b), "--metric", "rsa")
    _invoke(str(a), str(b), "--metric", "rsa", "--rdm-method", "euclidean", "--compare", "pearson")
    _invoke(str(a), str(b), "--metric", "procrustes", "--alpha", "1")
    _invoke(str(a), str(b), "--metric", "svcca", "--keep", "0.9")
    out = _invoke(str(a), str(b), "--metric", "encoding", "--cv", "3")
    assert seen == [{}, {"rdm_method": "euclidean", "compare": "pearson"}, {"alpha": 1.0},
                    {"keep": 0.9}, {"cv": 3}]
    assert -1 <= out["value"] <= 1



# ----------------------------------------------------------------------------- output (issue 11, item 7)

LONG = ("encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense",
        "encoder.layer.1.attention.output.dense", "encoder.layer.1.intermediate.dense")


class Wide(torch.nn.Module):
    """Four sites with BERT-length dotted names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Module()
        self.encoder.layer = torch.nn.ModuleList()
        for _ in range(2):
            layer = torch.nn.Module()
            layer.attention = torch.nn.Module()
            layer.attention.output = torch.nn.Module()
            layer.attention.output.dense = torch.nn.Linear(12, 12)
            layer.intermediate = torch.nn.Module()
            layer.intermediate.dense = torch.nn.Linear(12, 12)
            self.encoder.layer.append(layer)

    def forward(self, x):
        for layer in self.encoder.layer:
            x = torch.tanh(layer.intermediate.dense(torch.tanh(layer.attention.output.dense(x))))
        return x


@pytest.fixture()
def wide_run(tmp_path: Path, files: tuple) -> Path:
    import neuronscope

    _, _, x, _ = files
    run_dir = tmp_path / "wide.zarr"
    neuronscope.record(Wide(), neuronscope.TensorSource(torch.tensor(x, dtype=torch.float32), batch_size=8),
                       "encoder.layer.*.dense", out=run_dir, keep="activations", dtype="float32", progress=False)
    return run_dir


def test_save_names_both_specs_refuses_to_overwrite_and_says_where(wide_run: Path, files: tuple) -> None:
    import neuronscope

    _, b, _, _ = files
    spec = f"{wide_run}:encoder.layer.*.intermediate.dense"
    res = runner.invoke(app, ["compare", spec, str(b), "--save", str(wide_run)])
    assert res.exit_code == 0, res.output
    name = "compare-cka-wide.zarr-encoder.layer.all.intermediate.dense-vs-brain.npy"
    assert f"saved in run {wide_run} as {name!r} ({wide_run / 'extras' / name})" in res.output
    first = neuronscope.open_run(wide_run).extras(name)["arrays"]["matrix"].copy()
    # the same name again: refused before anything is computed, the stored result unchanged
    again = runner.invoke(app, ["compare", spec, spec, "--save", str(wide_run), "--name", name])
    assert isinstance(again.exception, NeuronscopeError)
    assert f"already holds a result named {name!r}; pass --overwrite" in str(again.exception)
    np.testing.assert_array_equal(neuronscope.open_run(wide_run).extras(name)["arrays"]["matrix"], first)
    out = _invoke(spec, spec, "--save", str(wide_run), "--name", name, "--overwrite")
    assert out["saved"] == {"run": str(wide_run), "name": name, "path": str(wide_run / "extras" / name)}
    stored = neuronscope.open_run(wide_run).extras(name)["arrays"]["matrix"]
    assert stored.shape == (2, 2) and np.allclose(stored, out["values"])
    # another metric gets another default name: both results kept
    out = _invoke(spec, str(b), "--metric", "svcca", "--save", str(wide_run))
    assert out["saved"]["name"] == "compare-svcca-wide.zarr-encoder.layer.all.intermediate.dense-vs-brain.npy"
    assert len(neuronscope.open_run(wide_run).extra_names()) == 2
    assert _invoke(spec, str(b))["saved"] is None
    for bad, message in ((["--name", "x"], "--name names a saved result; give --save RUN too"),
                         (["--save", str(wide_run), "--name", "../up"], "'../up' cannot name a result")):
        res = runner.invoke(app, ["compare", spec, str(b), *bad])
        assert isinstance(res.exception, NeuronscopeError) and message in str(res.exception)


def test_single_value_names_the_runs(wide_run: Path, files: tuple) -> None:
    _, b, _, _ = files
    a = f"{wide_run}:encoder.layer.0.intermediate.dense"
    res = runner.invoke(app, ["compare", a, str(b)])
    assert res.exit_code == 0
    assert f"cka({wide_run}:encoder.layer.0.intermediate.dense, {b}) =" in res.output
    out = _invoke(a, str(b))
    assert out["a_population"] == f"{wide_run}:encoder.layer.0.intermediate.dense" and out["b_population"] == str(b)


@pytest.mark.parametrize("width", [80, 200])
def test_tables_show_full_site_names(wide_run: Path, width: int) -> None:
    spec = f"{wide_run}:encoder.layer.*.dense"
    res = runner.invoke(app, ["compare", spec, spec], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    assert "sites: encoder.layer.*.dense" in res.output  # the shared prefix and suffix, once
    for name in LONG:  # every site in full: the legend's shared parts around its own part
        short = name.removeprefix("encoder.layer.").removesuffix(".dense")
        assert short in res.output
    values = _invoke(spec, spec)["values"]
    for row in values:  # every value printed (4 decimals)
        for v in row:
            assert f"{v:.4f}" in res.output
