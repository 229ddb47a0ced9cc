"""Comparison results stored in a run reach the atlas data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuronscope as ns
from neuronscope.analyses.compare import compare_all
from neuronscope.analyses.extras import comparison_name, save_comparison
from neuronscope.atlas.build import collect_atlas_data
from neuronscope.errors import NeuronscopeError


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(5, 8)
        self.b = torch.nn.Linear(8, 6)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_saved_comparison_is_a_heatmap_in_the_atlas(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    run = ns.record(TwoLayer(), ns.TensorSource(x, batch_size=16), "a,b", out=tmp_path / "r.zarr", keep="both",
                    dtype="float32", progress=False)
    mat = compare_all({s: run.population(s).values for s in run.sites}, "cka")
    np.testing.assert_allclose(np.diag(mat.values), 1.0, atol=1e-9)  # CKA of a population with itself
    name = save_comparison(run, mat, "cka")
    stored = ns.open_run(run.path).extras(name)
    np.testing.assert_allclose(stored["arrays"]["matrix"], mat.values)
    data = collect_atlas_data(ns.open_run(run.path))
    (page,) = data["extras"]
    assert page["name"] == "compare-cka"
    (hm,) = page["heatmaps"]
    np.testing.assert_allclose(hm["matrix"], mat.values)
    assert hm["rows"] == ["a", "b"] and hm["cols"] == ["a", "b"]



def test_a_saved_comparison_is_replaced_only_on_request(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    run = ns.record(TwoLayer(), ns.TensorSource(x, batch_size=16), "a,b", out=tmp_path / "r.zarr",
                    keep="activations", dtype="float32", progress=False)
    pops = {s: run.population(s) for s in run.sites}
    cka = compare_all(pops, "cka", progress=False)
    assert save_comparison(run, cka, "cka", name="layers") == "layers"
    svcca = compare_all(pops, "svcca", progress=False)
    with pytest.raises(NeuronscopeError, match="already holds a result named 'layers'; pass --overwrite"):
        save_comparison(run, svcca, "svcca", name="layers")
    np.testing.assert_allclose(ns.open_run(run.path).extras("layers")["arrays"]["matrix"], cka.values)
    save_comparison(run, svcca, "svcca", name="layers", overwrite=True)
    np.testing.assert_allclose(ns.open_run(run.path).extras("layers")["arrays"]["matrix"], svcca.values)
    with pytest.raises(NeuronscopeError, match="cannot name a result"):
        save_comparison(run, cka, "cka", name="a/b")


def test_comparison_names(tmp_path):
    (tmp_path / "brain.npz").write_bytes(b"")
    assert comparison_name("cka", "runs/r1.zarr:encoder.layer.*.intermediate", str(tmp_path / "brain.npz")) == (
        "compare-cka-r1.zarr-encoder.layer.all.intermediate-vs-brain.npz")
    assert comparison_name("rsa", "a.zarr:", "b.zarr:x[0]") == "compare-rsa-a.zarr-all-vs-b.zarr-x-0"
    long = comparison_name("cka", "r.zarr:" + "a" * 300, "r.zarr:b")
    assert len(long) <= 150 and long.startswith("compare-cka-r.zarr-aaa")
    assert long != comparison_name("cka", "r.zarr:" + "a" * 301, "r.zarr:b")  # the hash keeps them apart
