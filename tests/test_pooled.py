"""``Run.pooled``: grouped reductions straight from the store equal xarray's groupby on the
population, and the lazy groupby itself is fast with flox (issue 11, item 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import neuronscope as ns
from neuronscope.errors import NeuronscopeError


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> ns.Run:
    """A conv net over 60 labelled 6×6 images, one sample per spatial position (36 per item),
    stored in chunks of 100 rows so groups straddle chunks; labels unsorted along the rows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 5, 3, padding=1), torch.nn.Tanh())
    x = np.random.default_rng(0).normal(size=(60, 2, 6, 6)).astype(np.float32)
    labels = {"shape": [["round", "square", "star"][i % 3] for i in range(60)]}
    return ns.record(model, ns.TensorSource(x, batch_size=16, labels=labels), "1",
                     out=tmp_path_factory.mktemp("pooled") / "run.zarr", keep="activations",
                     dtype="float32", chunk_rows=100, progress=False)


@pytest.mark.parametrize("how", ["mean", "sum", "max", "min", "first", "last"])
@pytest.mark.parametrize("by", ["item", "shape"])
def test_pooled_equals_groupby(conv_run, how, by) -> None:
    pop = conv_run.population("1")
    ref = getattr(pop.load().groupby(by), how)()
    got = conv_run.pooled("1", by=by, how=how, block_rows=70)  # blocks cut through groups and chunks
    assert got.dims == ("sample", "neuron") and got.dtype == np.float32
    np.testing.assert_array_equal(got[by].values, ref[by].values)
    np.testing.assert_allclose(got.values, ref.transpose(by, "neuron").values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["count"].values, pop.groupby(by).count().values[:, 0])
    assert list(got["site"].values) == ["1"] * 5 and list(got["unit"].values) == list(range(5))


def test_pooled_keeps_coordinates_constant_within_groups(conv_run) -> None:
    got = conv_run.pooled("1", by="item")
    assert got.sizes["sample"] == 60
    assert list(got["shape"].values[:4]) == ["round", "square", "star", "round"]  # a per-item label
    assert "pos" not in got.coords  # varies within an item
    assert set(np.unique(got["count"].values)) == {36}
    with pytest.raises(NeuronscopeError, match="unknown pooling 'median'"):
        conv_run.pooled("1", how="median")
    with pytest.raises(NeuronscopeError, match="no sample coordinate 'doc'"):
        conv_run.pooled("1", by="doc")


def test_pooled_per_document_of_a_text_run(minilm, small_corpus, tmp_path) -> None:
    model, tok = minilm
    texts = [json.loads(ln) for ln in small_corpus.read_text().splitlines()[:10]]
    source = ns.TextSource([t["text"] for t in texts], tok, batch_size=4, max_tokens=24)
    run = ns.record(model, source, "encoder.layer.1.intermediate,encoder.layer.4.intermediate",
                    out=tmp_path / "run.zarr", keep="activations", dtype="float16", chunk_rows=64,
                    progress=False)
    pop = run.population()
    mean = run.pooled(by="doc")
    ref = pop.astype("float32").groupby("doc").mean()  # lazy: flox makes this the fast path
    np.testing.assert_allclose(mean.values, ref.values, rtol=1e-5, atol=1e-5)
    assert list(mean["doc"].values) == list(range(10))
    last = run.pooled("encoder.layer.4.*", by="doc", how="last")
    ends = np.r_[np.flatnonzero(np.diff(pop["doc"].values)), pop.sizes["sample"] - 1]
    ends = ends[np.argsort(pop["doc"].values[ends])]  # by document id (batches need not be in corpus order)
    np.testing.assert_array_equal(last.values, pop.sel(neuron=pop.site == "encoder.layer.4.intermediate")
                                  .values[ends].astype(np.float32))


def test_flox_is_the_groupby_engine() -> None:
    import flox  # noqa: F401  (a pinned dependency: xarray's grouped reductions use it)

    assert xr.get_options()["use_flox"]
