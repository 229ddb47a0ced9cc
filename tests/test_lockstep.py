"""Lockstep recording and streamed cross-products: exact agreement with stored activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.lockstep import Lockstep, record_lockstep
from neuronscope.sources.tensors import TensorSource
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.crossprod import CrossProducts
from neuronscope.testing.digits import digits_data, train_digits


def _acts(model, x):
    with torch.no_grad():
        h1 = model.act1(model.fc1(torch.from_numpy(x)))
        h2 = model.act2(model.fc2(h1))
    return np.concatenate([h1.numpy(), h2.numpy()], axis=1)


@pytest.fixture(scope="module")
def digits_pair():
    x, _ = digits_data("all")
    return x, train_digits("mlp", 0), train_digits("mlp", 1)


def test_streamed_correlation_equals_corrcoef(digits_pair):
    x, a, b = digits_pair
    # batch 100 and block_rows 256 do not divide 1797: exercises buffering and ragged blocks
    lock = record_lockstep({"a": a, "b": b}, TensorSource(x, batch_size=100), "act*", block_rows=256)
    xa, xb = _acts(a, x), _acts(b, x)
    ref = np.corrcoef(xa.T.astype(np.float64), xb.T.astype(np.float64))
    assert lock.n_samples == len(x)
    assert lock.sites == {"a": {"act1": 64, "act2": 64}, "b": {"act1": 64, "act2": 64}}
    np.testing.assert_allclose(lock.correlation("a", "b"), ref[:128, 128:], atol=5e-6)
    np.testing.assert_allclose(lock.correlation("b", "a"), ref[128:, :128], atol=5e-6)
    np.testing.assert_allclose(lock.correlation("a", "b", "act2", "act1"), ref[64:128, 128:192], atol=5e-6)
    np.testing.assert_allclose(lock.within_correlation("b", "act1"), ref[128:192, 128:192], atol=5e-6)


def test_lockstep_on_text_self_correlation(minilm, small_corpus):
    from neuronscope.recording import forward_batches
    from neuronscope.sources.text import TextSource

    model, tok = minilm
    twin = copy.deepcopy(model)
    with torch.no_grad():  # a perturbed twin: correlated with, but not equal to, the model
        for p in twin.encoder.layer[5].intermediate.parameters():
            p.add_(0.1 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    src = TextSource(small_corpus, tok, batch_size=16, max_tokens=32)
    site = "encoder.layer.5.intermediate"
    lock = record_lockstep({"m": model, "twin": twin}, src, site, within=False)
    xa = np.concatenate([a[site] for _, a in forward_batches(model, src, site)])
    xb = np.concatenate([a[site] for _, a in forward_batches(twin, src, site)])
    ref = np.corrcoef(xa.T.astype(np.float64), xb.T.astype(np.float64))[:1536, 1536:]
    r = lock.correlation("m", "twin")
    assert lock.n_samples == len(xa)
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(r[ok], ref[ok], atol=1e-5)
    assert np.nanmedian(np.diag(r)) > 0.9 > np.nanmedian(np.abs(r))


def test_mismatched_samples_raise(digits_pair):
    x, a, b = digits_pair
    srcs = {"a": TensorSource(x, batch_size=100), "b": TensorSource(x, batch_size=64)}
    with pytest.raises(NeuronscopeError, match="different samples"):
        record_lockstep({"a": a, "b": b}, srcs, "act1")
    with pytest.raises(NeuronscopeError, match="at least two models"):
        record_lockstep({"a": a}, TensorSource(x), "act1")


def test_max_samples_and_save_load(digits_pair, tmp_path):
    x, a, b = digits_pair
    lock = record_lockstep({"a": a, "b": b}, TensorSource(x, batch_size=128), "act1", max_samples=300)
    assert lock.n_samples == 300
    ref = np.corrcoef(_acts(a, x[:300])[:, :64].T, _acts(b, x[:300])[:, :64].T)[:64, 64:]
    np.testing.assert_allclose(lock.correlation("a", "b"), ref, atol=5e-6)
    back = Lockstep.load(lock.save(tmp_path / "lock.npz"))
    assert back.models == lock.models and back.sites == lock.sites
    np.testing.assert_array_equal(back.correlation("a", "b"), lock.correlation("a", "b"))
    np.testing.assert_array_equal(back.within_correlation("a"), lock.within_correlation("a"))


def test_crossproducts_merge_state_and_raw_sums():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 7)) * 3 + 5).astype(np.float32)
    y = (x @ rng.normal(size=(7, 5)) + rng.normal(size=(3000, 5)) - 2).astype(np.float32)
    whole = CrossProducts.from_arrays(x, y, gram=True)
    parts = [CrossProducts.from_arrays(x[i : i + 700] + 0, y[i : i + 700], gram=True, block_rows=128)
             for i in range(0, 3000, 700)]
    merged = tree_merge(parts)
    rebuilt = summary_from_state("crossprod", *merged.state())
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    for cp in (whole, merged, rebuilt):
        res = cp.result()
        assert int(res["n"]) == 3000
        np.testing.assert_allclose(res["sum_x"], xd.sum(0), rtol=1e-9)
        np.testing.assert_allclose(res["sum_y2"], (yd**2).sum(0), rtol=1e-7)
        np.testing.assert_allclose(res["sum_xy"], xd.T @ yd, rtol=1e-6, atol=1e-6 * np.abs(xd.T @ yd).max())
        np.testing.assert_allclose(res["sum_xx"], xd.T @ xd, rtol=1e-6)
        np.testing.assert_allclose(cp.correlation(), np.corrcoef(xd.T, yd.T)[:7, 7:], atol=1e-6)
        np.testing.assert_allclose(cp.cov_yy(), np.cov(yd.T), rtol=1e-6)
    np.testing.assert_allclose(whole.transpose().correlation(), whole.correlation().T)
    sub = whole.subset([1, 3], [4])
    np.testing.assert_allclose(sub.correlation(), whole.correlation()[[1, 3]][:, [4]])


def test_crossproducts_large_offset_keeps_precision():
    # raw float32 sums would lose every digit here: means 1e4, standard deviation 1
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 3))
    x = (1e4 + z[:, :2]).astype(np.float32)
    y = (-1e4 + z[:, 1:] + 0.5 * z[:, :2]).astype(np.float32)
    cp = CrossProducts(2, 2, block_rows=1000)
    for i in range(0, 20000, 999):
        cp.update(np.concatenate([x[i : i + 999], y[i : i + 999]], axis=1), {})
    ref = np.corrcoef(x.T.astype(np.float64), y.T.astype(np.float64))[:2, 2:]
    np.testing.assert_allclose(cp.correlation(), ref, atol=5e-6)


def test_zero_variance_neuron_gives_nan():
    x = np.zeros((50, 2), np.float32)
    x[:, 1] = np.arange(50)
    y = np.arange(50, dtype=np.float32)[:, None] ** 2
    r = CrossProducts.from_arrays(x, y).correlation()
    assert np.isnan(r[0, 0]) and 0.9 < r[1, 0] < 1.0


def test_lockstep_equals_corrcoef_of_stored_runs(tmp_path):
    """Two CNNs recorded into real Zarr runs (float32, conv channels per spatial position)
    against the same two CNNs in lockstep."""
    from neuronscope.recording import record

    x, _ = digits_data("all", "cnn")
    x = x[:400]
    models = {"a": train_digits("cnn", 0), "b": train_digits("cnn", 1)}
    pops = {}
    for k, m in models.items():
        run = record(m, TensorSource(x, batch_size=50), "act1,act2", out=tmp_path / f"{k}.zarr",
                     keep="activations", dtype="float32", progress=False)
        pops[k] = run.population().values.astype(np.float64)
    lock = record_lockstep(models, TensorSource(x, batch_size=64), "act1,act2")
    assert lock.n_samples == len(x) * 64 == len(pops["a"])  # one sample per image and position
    ref = np.corrcoef(pops["a"].T, pops["b"].T)[:24, 24:]
    got = lock.correlation("a", "b")
    ok = ~np.isnan(ref)
    assert np.isnan(got[~ok]).all()
    np.testing.assert_allclose(got[ok], ref[ok], atol=5e-6)


def test_lockstep_restores_grad_mode(digits_pair):
    x, a, b = digits_pair
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    record_lockstep({"a": a, "b": b, "c": train_digits("mlp", 2)}, TensorSource(x[:300], batch_size=100), "act1")
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with pytest.raises(NeuronscopeError):
        record_lockstep({"a": a, "b": b}, {"a": TensorSource(x, batch_size=100), "b": TensorSource(x, batch_size=64)}, "act1")
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_streamed_linear_cka_equals_compare(digits_pair):
    from neuronscope.analyses import compare

    x, a, b = digits_pair
    lock = record_lockstep({"a": a, "b": b}, TensorSource(x, batch_size=100), "act*")
    xa, xb = _acts(a, x), _acts(b, x)
    cp = lock.cross("a", "b", "act1", "act2")
    ref = compare.linear_cka(xa[:, :64], xb[:, 64:])
    assert cp.linear_cka() == pytest.approx(ref, abs=1e-6)
    r = cp.result()
    from_stats = compare.linear_cka_from_stats(int(r["n"]), r["sum_x"], r["sum_y"], r["sum_xx"],
                                               r["sum_yy"], r["sum_xy"])
    assert from_stats == pytest.approx(ref, abs=1e-5)
