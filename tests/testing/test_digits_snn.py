"""The digits SNN is a real model: trained deterministically, accurate, recorded and compared
with the digits MLP by CKA and RSA through the same API and CLI verbs as any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from neuronscope.analyses.compare import linear_cka  # noqa: E402
from neuronscope.analyses.rsa import rsa  # noqa: E402
from neuronscope.analyses.spikes import record_spikes, spike_table  # noqa: E402
from neuronscope.cli import app  # noqa: E402
from neuronscope.recording import record  # noqa: E402
from neuronscope.sources.tensors import TensorSource  # noqa: E402
from neuronscope.specs import load_model, load_zoo  # noqa: E402
from neuronscope.testing.digits import digits_data, train_digits  # noqa: E402
from neuronscope.testing.snn import snn_accuracy, train_snn  # noqa: E402

runner = CliRunner()


def _site(model: torch.nn.Module, site: str) -> np.ndarray:
    x, _ = digits_data("all")
    out: dict[str, np.ndarray] = {}

    def keep(_m: torch.nn.Module, _i: object, o: torch.Tensor) -> None:
        out["a"] = o.detach().numpy()

    h = model.get_submodule(site).register_forward_hook(keep)
    with torch.no_grad():
        model(torch.from_numpy(x))
    h.remove()
    return out["a"]


def test_trained_snn_is_deterministic_and_accurate() -> None:
    a, b = train_snn(0), train_snn(0)
    for (k, v), (_, w) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    assert snn_accuracy(a) > 0.9
    assert snn_accuracy(train_snn(0, trained=False)) < 0.3
    model, tok = load_model("digits-snn:0")
    assert tok is None and model.neuronscope_id == "digits-snn:0"
    assert torch.equal(model.network.fc1.weight, a.network.fc1.weight)


def test_trained_snn_is_closer_to_the_trained_mlp_than_to_the_untrained_snn() -> None:
    snn_h = _site(train_snn(0), "act1")  # spike counts per image
    mlp_h = _site(train_digits("mlp", 0), "act1")
    untrained = _site(train_snn(0, trained=False), "act1")
    to_mlp, to_untrained = linear_cka(snn_h, mlp_h), linear_cka(snn_h, untrained)
    assert to_mlp > to_untrained + 0.1, (to_mlp, to_untrained)
    assert rsa(snn_h, mlp_h) > rsa(snn_h, untrained) + 0.1


def test_cli_verbs_on_snn_runs(tmp_path: Path) -> None:
    x, y = digits_data("all")
    snn_model = train_snn(0)
    src = TensorSource(x[:300], batch_size=64, labels={"digit": y[:300].tolist()})
    snn_run = record_spikes(snn_model, src, "act1,act2,act1.mem", tmp_path / "snn.zarr", spike_sites="act1,act2",
                            progress=False)
    mlp_run = record(train_digits("mlp", 0), src, "act1,act2", tmp_path / "mlp.zarr", progress=False)
    table = spike_table(snn_run)
    assert set(table["site"]) == {"act1", "act2"} and (table["rate"] > 0).mean() > 0.9
    # counts mode: one sample per image, so Fano factors are across images
    assert int(table["trials"].iloc[0]) == 300
    res = runner.invoke(app, ["characterize", str(tmp_path / "snn.zarr"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert {s["site"] for s in doc["sites"]} == {"act1", "act2", "act1.mem"}
    assert [s["site"] for s in doc["spikes"]] == ["act1", "act2"] and doc["spikes"][0]["mean_rate"] > 0
    res = runner.invoke(app, ["compare", f"{tmp_path / 'snn.zarr'}:act1", f"{tmp_path / 'mlp.zarr'}:act1",
                              "--metric", "cka", "--json"])
    assert res.exit_code == 0, res.output
    cka = json.loads(res.output)["value"]
    pop_s = snn_run.population("act1").values.astype(np.float64)
    pop_m = mlp_run.population("act1").values.astype(np.float64)
    assert cka == pytest.approx(linear_cka(pop_s, pop_m), abs=1e-6) and cka > 0.8
    res = runner.invoke(app, ["atlas", str(tmp_path / "snn.zarr"), "--out", str(tmp_path / "atlas")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "atlas" / "index.html").exists()


def test_match_and_zoo_mix_snn_and_mlp() -> None:
    zoo = load_zoo(["digits-snn:0", "digits-mlp:0"])
    assert zoo.sites == "act1,act2" and zoo.kind == "digits"
    res = runner.invoke(app, ["match", "--models", "digits-snn:0", "digits-mlp:0", "--max-samples", "400", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["sites"] == {"digits-snn:0": {"act1": 64, "act2": 64}, "digits-mlp:0": {"act1": 64, "act2": 64}}
    corr = {c["site_a"]: c["mean_max_corr"] for c in doc["correlation"]}
    assert corr["act1"] > 0.5 and corr["act2"] > 0.5  # spiking units have rate-coded ANN partners
