"""``neuronscope rsa``: RSA-toolbox MATLAB struct files written with scipy.io.savemat and a
recorded run's sites as models give the scores of ``rsa_models``; the figure, the saved
extras, ``compare --key/--field``; bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.spatial.distance import squareform
from typer.testing import CliRunner

from neuronscope.analyses.rsa import rdm
from neuronscope.analyses.rsa_workflow import rsa_models
from neuronscope.cli import app, main
from neuronscope.rdms import RDMs
from neuronscope.recording import record
from neuronscope.sources.brain import load_rdms
from neuronscope.sources.tensors import TensorSource
from neuronscope.store import open_run
from neuronscope.testing.digits import digits_data, train_digits

runner = CliRunner()
N = 20


def _struct(rdms: list[list[np.ndarray]], names: list[list[str]]) -> np.ndarray:
    rec = np.empty((len(rdms), len(rdms[0])), dtype=[("RDM", object), ("name", object), ("color", object)])
    for i, row in enumerate(rdms):
        for j, sq in enumerate(row):
            rec[i, j]["RDM"], rec[i, j]["name"] = sq, names[i][j]
            rec[i, j]["color"] = np.array([[0.1, 0.2, 0.3]])
    return rec


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Digits MLP run over N images; 6 subjects × 2 sessions of noisy act2 RDMs; 3 model RDMs."""
    d = tmp_path_factory.mktemp("rsa")
    x, _ = digits_data("test")
    x = x[:N]
    run = record(train_digits("mlp", 0), TensorSource(x, batch_size=8), "act1,act2", d / "mlp.zarr",
                 dtype="float32", progress=False)
    truth = run.population("act2").values.astype(np.float64)
    rng = np.random.default_rng(0)
    brain = [[squareform(rdm(truth @ rng.normal(size=(64, 30)) + rng.normal(scale=4.0, size=(N, 30))))
              for _ in range(2)] for _ in range(6)]
    names = [[f"subj{s} sess{k}" for k in range(2)] for s in range(6)]
    scipy.io.savemat(d / "brainRDMs.mat", {"RDMs": _struct(brain, names)})
    models = [squareform(rdm(x)), squareform(rdm(truth)), squareform(rdm(rng.normal(size=(N, 5))))]
    scipy.io.savemat(d / "modelRDMs.mat", {"Models": _struct([models], [["pixels", "act2 model", "noise"]])})
    return {"dir": d, "run": d / "mlp.zarr"}


def _json(*args: str) -> dict:
    res = runner.invoke(app, ["rsa", *args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


def test_rsa_on_matlab_struct_files_equals_rsa_models(study: dict) -> None:
    d = study["dir"]
    out = _json("--models", str(d / "modelRDMs.mat"), "--data", str(d / "brainRDMs.mat"), "--average-sessions",
                "--n-boot", "200", "--plot", str(d / "bars.svg"))
    ref = rsa_models(load_rdms(d / "modelRDMs.mat"), load_rdms(d / "brainRDMs.mat", average_sessions=True),
                     method="corr", n_boot=200, seed=0)
    assert out["models"] == ["pixels", "act2 model", "noise"]
    assert out["subjects"] == [f"subj{s}" for s in range(6)]
    np.testing.assert_allclose(out["scores"], ref.scores, rtol=0, atol=1e-15)
    np.testing.assert_allclose(out["mean"], ref.mean, rtol=0, atol=1e-15)
    np.testing.assert_allclose(out["ci_low"], ref.ci_low, rtol=0, atol=1e-15)
    assert out["noise_ceiling"]["lower"] == pytest.approx(ref.noise_ceiling[0], abs=1e-15)
    assert out["mean"][1] > out["mean"][0] > out["mean"][2]
    svg = (d / "bars.svg").read_text()
    assert "noise_ceiling" in svg and "act2 model" in svg
    # sessions kept: 12 subject RDMs; spearman; stimulus bootstrap
    out = _json("--models", str(d / "modelRDMs.mat"), "--data", str(d / "brainRDMs.mat"), "--compare", "spearman",
                "--bootstrap", "stimuli", "--n-boot", "50")
    ref = rsa_models(load_rdms(d / "modelRDMs.mat"), load_rdms(d / "brainRDMs.mat"), method="spearman",
                     bootstrap="stimuli", n_boot=50, seed=0)
    assert len(out["subjects"]) == 12
    np.testing.assert_allclose(out["mean"], ref.mean, atol=1e-15)
    np.testing.assert_allclose(out["ci_high"], ref.ci_high, atol=1e-15)
    plain = runner.invoke(app, ["rsa", "--models", str(d / "modelRDMs.mat"), "--data", str(d / "brainRDMs.mat"),
                                "--average-sessions", "--n-boot", "20"])
    assert plain.exit_code == 0 and "noise ceiling: lower" in plain.output and "pairwise model tests" in plain.output


def test_run_sites_are_models_and_results_saved_in_the_run(study: dict) -> None:
    d, run_path = study["dir"], study["run"]
    out = _json("--models", f"{run_path}:act*", str(d / "modelRDMs.mat"), "--data", str(d / "brainRDMs.mat"),
                "--average-sessions", "--n-boot", "100", "--save", str(run_path))
    assert out["models"] == ["act1", "act2", "pixels", "act2 model", "noise"]
    run = open_run(run_path)
    pops = {s: run.population(s) for s in ("act1", "act2")}
    models = {"act1": pops["act1"], "act2": pops["act2"]}
    ref = rsa_models(models, load_rdms(d / "brainRDMs.mat", average_sessions=True), n_boot=100)
    np.testing.assert_allclose(np.asarray(out["scores"])[:2], ref.scores, atol=1e-12)
    # the act2 site and the act2 model RDM file are the same representation
    np.testing.assert_allclose(out["scores"][1], out["scores"][3], atol=1e-6)
    extra = open_run(run_path).extras("rsa")
    np.testing.assert_allclose(extra["arrays"]["scores"], np.asarray(out["scores"]), atol=1e-15)
    assert extra["attrs"]["heatmaps"]["scores"]["rows"] == out["models"]
    res = runner.invoke(app, ["atlas", str(run_path), "--out", str(d / "atlas"), "--json"])
    assert res.exit_code == 0, res.output
    pages = "".join(f.read_text() for f in (d / "atlas" / "data").glob("extra-*.js"))
    assert "RDM similarity (pearson) per model and subject" in pages and "act2 model" in pages


def test_compare_key_and_field_pick_rdm_variables(study: dict, tmp_path: Path) -> None:
    d = study["dir"]
    b = load_rdms(d / "brainRDMs.mat")
    rec = np.empty((1, 2), dtype=[("RDM", object), ("RDM_cv", object), ("name", object)])
    for j in range(2):
        rec[0, j]["RDM"] = squareform(b.dissimilarities[j])
        rec[0, j]["RDM_cv"] = squareform(b.dissimilarities[j + 2])
        rec[0, j]["name"] = f"s{j}"
    scipy.io.savemat(tmp_path / "two.mat", {"other": np.eye(3), "subjects": rec})
    x = open_run(study["run"]).population("act2").values
    np.save(tmp_path / "model.npy", x)
    res = runner.invoke(app, ["compare", str(tmp_path / "model.npy"), str(tmp_path / "two.mat"), "--metric", "rsa",
                              "--key", "subjects", "--field", "RDM_cv", "--json"])
    assert res.exit_code == 0, res.output
    from neuronscope.analyses.rsa import rsa

    expect = rsa(x, RDMs(b.dissimilarities[2:4]))  # the RDM_cv field of the `subjects` variable
    assert json.loads(res.output)["value"] == pytest.approx(expect, abs=1e-12)


def _bad_files(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    v = rng.random((N * (N - 1) // 2,))
    sq = squareform(v)
    asym = sq.copy()
    asym[0, 1] += 0.5
    scipy.io.savemat(d / "nonsquare.mat", {"rdms": rng.random((4, 6, 7))})
    scipy.io.savemat(d / "asym.mat", {"rdms": np.stack([asym, sq])})
    scipy.io.savemat(d / "small.mat", {"rdms": np.stack([squareform(rng.random(21))] * 2)})  # 7 stimuli
    scipy.io.savemat(d / "text.mat", {"labels": np.array(["a", "b"]), "note": "no matrices here"})
    return {p.stem: p for p in d.glob("*.mat")}


@pytest.mark.parametrize(
    ("which", "side", "message"),
    [
        ("nonsquare", "models", "rdms: RDM stack of shape (4, 6, 7) is not square"),
        ("asym", "data", "RDM is not symmetric"),
        ("small", "models", "model 'small[0]' covers 7 stimuli and the data 20; give model RDMs over the data's stimuli"),
        ("text", "data", "no numeric RDM array and no struct with field 'RDM' in text.mat"),
        ("text", "models", "no numeric RDM array and no struct with field 'RDM' in text.mat"),
    ],
)
def test_bad_rdm_files_are_one_line_exit_2(study: dict, tmp_path: Path, which: str, side: str, message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = _bad_files(tmp_path)[which]
    good_models, good_data = study["dir"] / "modelRDMs.mat", study["dir"] / "brainRDMs.mat"
    models, data = (bad, good_data) if side == "models" else (good_models, bad)
    with pytest.raises(SystemExit) as exc:
        main(["rsa", "--models", str(models), "--data", str(data), "--n-boot", "10"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bootstrap", "trials"], "unknown --bootstrap 'trials'; use one of subjects, stimuli, both, none"),
        (["--plot", "fig.pdf"], "--plot must end in .png or .svg, not 'fig.pdf'"),
        (["--compare", "euclid"], "unknown RDM comparator 'euclid'"),
    ],
)
def test_bad_options_are_one_line_exit_2(study: dict, args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    d = study["dir"]
    with pytest.raises(SystemExit) as exc:
        main(["rsa", "--models", str(d / "modelRDMs.mat"), "--data", str(d / "brainRDMs.mat"), "--n-boot", "5",
              *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
