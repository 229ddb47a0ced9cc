"""Interventions: exact edits on hand-set models and MiniLM, restoration after exceptions,
positions, composition order, JSON descriptions, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from causalmodels import Conv, MultiLayer, Readout

from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import ablate, add, capture, clamp, compose, patch, scale

SITE = "encoder.layer.1.intermediate"
TEXTS = ["The cat sat on the mat today.", "Hola.", "Neurons fire when they are driven hard enough."]


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def enc(minilm):
    _, tok = minilm
    return dict(tok(TEXTS, padding=True, return_tensors="pt"))


def test_outputs_bit_identical_after_an_exception_inside_the_context(minilm, enc) -> None:
    model, _ = minilm
    with torch.no_grad():
        before = model(**enc).last_hidden_state.clone()
        with pytest.raises(RuntimeError, match="boom"):
            with ablate(model, SITE, [1, 5, 9]), scale(model, "encoder.layer.3.intermediate", factor=3.0):
                changed = model(**enc).last_hidden_state
                assert not torch.equal(changed, before)
                raise RuntimeError("boom")
        after = model(**enc).last_hidden_state
    assert torch.equal(before, after)
    assert _no_hooks(model)


def test_error_raised_in_the_hook_also_restores(minilm, enc) -> None:
    model, _ = minilm
    x = torch.tensor([[1.0, 2.0, 3.0]])
    m = MultiLayer()
    before = m(x).clone()
    with pytest.raises(NeuronscopeError, match="unit 7 is out of range for site 'relu' with 4 units"):
        with ablate(m, "relu", [7]):  # ReLU does not declare its width: found at the forward
            m(x)
    assert torch.equal(m(x), before) and _no_hooks(m)


def test_scale_one_and_add_zero_change_nothing(minilm, enc) -> None:
    model, _ = minilm
    with torch.no_grad():
        ref = model(**enc).last_hidden_state
        with scale(model, SITE, factor=1.0):
            assert torch.equal(model(**enc).last_hidden_state, ref)
        with add(model, SITE, torch.zeros(1536)):
            assert torch.equal(model(**enc).last_hidden_state, ref)
        with scale(model, SITE, [3, 4], factor=1.0), add(model, SITE, 0.0, units=[8]):
            assert torch.equal(model(**enc).last_hidden_state, ref)


def test_mean_ablation_moves_a_linear_readout_by_the_hand_computed_amount() -> None:
    m = Readout()
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = m.hidden(x).detach()
    w = m.readout.weight.detach()[0]
    means = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4, 1.1], dtype=torch.float64)
    units = [1, 4]
    with torch.no_grad():
        clean = m(x)[:, 0]
        with ablate(m, "hidden", units, how="mean", means=means):
            moved = m(x)[:, 0]
        with ablate(m, "hidden", units, how="mean", means=means[units]):  # one value per listed unit
            moved2 = m(x)[:, 0]
        with ablate(m, "hidden", units):
            zeroed = m(x)[:, 0]
    expected = sum(w[j] * (means[j] - y[:, j]) for j in units)
    np.testing.assert_allclose((moved - clean).numpy(), expected.numpy(), rtol=0, atol=1e-12)
    assert torch.equal(moved, moved2)
    np.testing.assert_allclose((zeroed - clean).numpy(), (-(w[units] * y[:, units]).sum(1)).numpy(), atol=1e-12)


def test_mean_ablation_takes_the_means_of_a_recorded_run(tmp_path) -> None:
    import neuronscope as ns
    from neuronscope.sources.tensors import TensorSource

    m = Readout()
    xs = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    run = ns.record(m, TensorSource(xs, batch_size=16), "hidden", tmp_path / "r.zarr", keep="summaries", progress=False)
    mu_run = run.summaries("hidden").result()["moments.mean"]
    # the recorder sees float32 activations; the mean of y = W x is W·mean(x)
    np.testing.assert_allclose(mu_run, m.hidden(xs.mean(0, keepdim=True)).detach().numpy()[0], atol=1e-6)
    x = xs[:3]
    with torch.no_grad():
        clean = m(x)[:, 0]
        with ablate(m, "hidden", [0, 2], how="mean", run=run) as iv:
            moved = m(x)[:, 0]
        y = m.hidden(x)
    w = m.readout.weight.detach()[0]
    expected = sum(w[j] * (mu_run[j] - y[:, j]) for j in (0, 2))
    np.testing.assert_allclose((moved - clean).numpy(), expected.numpy(), atol=1e-12)
    assert iv.describe()["means_from"] == str(run.path)


def test_clamp_conv_channels_exactly_and_only_at_chosen_spatial_positions() -> None:
    m = Conv()
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    clean = m.conv(x)
    with clamp(m, "conv", [1], value=7.5, positions=[(0, 1), (2, 2)]):
        got = capture(m, "conv", x)["conv"]
    want = clean.clone()
    want[:, 1, 0, 1] = 7.5
    want[:, 1, 2, 2] = 7.5
    assert torch.equal(got, want)
    with clamp(m, "conv", [0], value=-1.0):  # all positions: the readout is exact
        out = m(x)
    assert torch.equal(out[:, 0], -9.0 + (-x).flatten(1).sum(1))


def test_positions_only_the_chosen_token_positions_change(minilm, enc) -> None:
    model, _ = minilm
    v = torch.randn(1536, generator=torch.Generator().manual_seed(0))
    clean = capture(model, SITE, enc)[SITE]
    with add(model, SITE, v, coefficient=2.0, positions=[1, 3]):
        got = capture(model, SITE, enc)[SITE]
    keep = torch.ones(clean.shape[1], dtype=torch.bool)
    keep[[1, 3]] = False
    assert torch.equal(got[:, keep], clean[:, keep])
    assert torch.equal(got[:, [1, 3]], clean[:, [1, 3]] + 2.0 * v)
    # "last": the last real token of each padded row (attention mask), nothing else
    last = enc["attention_mask"].sum(1) - 1
    with clamp(model, SITE, [10, 11], value=5.0, positions="last"):
        got = capture(model, SITE, enc)[SITE]
    for b in range(len(TEXTS)):
        other = torch.ones(clean.shape[1], dtype=torch.bool)
        other[last[b]] = False
        assert torch.equal(got[b, other], clean[b, other])
        assert torch.all(got[b, last[b], [10, 11]] == 5.0)
        assert torch.equal(got[b, last[b], :10], clean[b, last[b], :10])


def test_resample_draws_whole_rows_of_the_pool_reproducibly() -> None:
    m = Readout()
    pool = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x = torch.randn(50, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with ablate(m, "hidden", [0, 3, 5], how="resample", pool=pool, seed=7):
        a = capture(m, "hidden", x)["hidden"]
    with ablate(m, "hidden", [0, 3, 5], how="resample", pool=pool, seed=7):
        b = capture(m, "hidden", x)["hidden"]
    assert torch.equal(a, b)
    clean = m.hidden(x).detach()
    assert torch.equal(a[:, [1, 2, 4]], clean[:, [1, 2, 4]])
    rows = a[:, [0, 3, 5]]
    match = (rows[:, None, :] == pool[None, :, [0, 3, 5]]).all(-1)  # [50, 4]
    assert match.any(1).all() and len(set(match.float().argmax(1).tolist())) > 1


def test_patch_replaces_activations_with_another_inputs(minilm, enc) -> None:
    m = Readout()
    a = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    b = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    src = capture(m, "hidden", b)
    with torch.no_grad(), patch(m, "hidden", src):
        assert torch.equal(m(a), m(b))
    # text: the source's last real token written into this input's last real token
    model, tok = minilm
    other = dict(tok(["Something else entirely, and longer than that."] * 3, padding=True, return_tensors="pt"))
    src = capture(model, SITE, other)
    with patch(model, SITE, src, positions="last"):
        got = capture(model, SITE, enc)[SITE]
    clean = capture(model, SITE, enc)[SITE]
    last = enc["attention_mask"].sum(1) - 1
    slast = other["attention_mask"].sum(1) - 1
    for i in range(3):
        assert torch.equal(got[i, last[i]], src[SITE][i, slast[i]])
        assert torch.equal(got[i, : last[i]], clean[i, : last[i]])


def test_composition_applies_in_entry_order_and_several_sites_at_once() -> None:
    m = Readout()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y = m.hidden(x).detach()
    v = torch.arange(6, dtype=torch.float64)
    with scale(m, "hidden", factor=2.0), add(m, "hidden", v):
        nested = capture(m, "hidden", x)["hidden"]
    with compose([scale(m, "hidden", factor=2.0), add(m, "hidden", v)]) as c:
        listed = capture(m, "hidden", x)["hidden"]
    assert torch.equal(nested, 2.0 * y + v) and torch.equal(listed, nested)
    assert [d["kind"] for d in c.describe()["members"]] == ["scale", "add"]
    with ablate(m, {"hidden": [0], "readout": [0]}):  # units_by_site over several sites
        assert torch.equal(m(x), torch.zeros(4, 1, dtype=torch.float64))


def test_works_under_inference_mode_and_autograd() -> None:
    m = Readout()
    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    with torch.inference_mode(), ablate(m, "hidden", [2]):
        out = m(x.detach())
    assert out.is_inference()
    w = m.readout.weight.detach()[0]
    with scale(m, "hidden", [2], factor=3.0):
        m(x).sum().backward()
    W = m.hidden.weight.detach()
    expected = (w[:, None] * W).sum(0) + 2.0 * w[2] * W[2]
    np.testing.assert_allclose(x.grad[0].numpy(), expected.numpy(), atol=1e-12)


def test_describe_is_json(tmp_path) -> None:
    m = Readout()
    pool = torch.randn(4, 6, dtype=torch.float64)
    ivs = [ablate(m, "hidden", [1, 2]), ablate(m, "hidden", how="resample", pool=pool, seed=3),
           clamp(m, "hidden", [0], value=1.5, positions="all"), scale(m, "hidden", factor=0.5),
           add(m, "hidden", torch.ones(6), coefficient=-2.0), patch(m, "hidden", capture(m, "hidden", torch.zeros(1, 5, dtype=torch.float64)))]
    for iv in ivs:
        d = json.loads(json.dumps(iv.describe()))
        assert d["kind"] in ("ablate", "clamp", "scale", "add", "patch")
        assert d["sites"]["hidden"] in ("all", [1, 2], [0])
    assert ivs[0].describe() == {"kind": "ablate", "sites": {"hidden": [1, 2]}, "positions": "all", "how": "zero"}
    assert ivs[4].describe()["coefficient"] == -2.0 and ivs[4].describe()["vector"]["norm"] == pytest.approx(6 ** 0.5)


def test_bad_input_is_one_line_error() -> None:
    m = Readout()
    x = torch.zeros(2, 5, dtype=torch.float64)

    def run(iv) -> None:
        with iv:
            m(x)

    cases = [
        (lambda: ablate(m, "hidden", [6]), "unit 6 is out of range for site 'hidden' with 6 units; use indices 0..5"),
        (lambda: ablate(m, "nothing*", [0]), "site pattern 'nothing*' matched no site among the model's modules"),
        (lambda: ablate(m, "hidden", [0], how="mean"), "how='mean' needs means="),
        (lambda: run(add(m, "hidden", torch.ones(4))), "vector for site 'hidden' has 4 values; give 6"),
        (lambda: run(clamp(m, "hidden", [0], value=1.0, positions=[0])), "has no positions"),
        (lambda: run(ablate(m, "unused", [0])),
         "ablate on site 'unused' never ran: the forward pass did not call this module; choose modules the model calls"),
    ]
    for fn, msg in cases:
        with pytest.raises(NeuronscopeError) as e:
            fn()
        assert msg in str(e.value) and "\n" not in str(e.value)
        assert _no_hooks(m)


def test_resample_from_a_captured_text_pool_uses_real_tokens_only(minilm, enc) -> None:
    from neuronscope.sources.torch_sites import to_samples

    model, tok = minilm
    ref = dict(tok(["Short.", "A reference batch with more tokens in it."], padding=True, return_tensors="pt"))
    pool = capture(model, SITE, ref)
    flat = pool.samples(SITE)
    assert torch.equal(flat, to_samples(pool[SITE], pool.mask))  # the recorder's flattening
    assert flat.shape[0] == int(ref["attention_mask"].sum())  # padding dropped
    with ablate(model, SITE, [3, 700], how="resample", pool=pool, seed=1):
        got = capture(model, SITE, enc)[SITE]
    rows = got[..., [3, 700]].reshape(-1, 2)
    assert (rows[:, None, :] == flat[None, :, [3, 700]]).all(-1).any(1).all()


def test_record_accepts_interventions_and_keeps_them_in_the_configuration(tmp_path) -> None:
    """An intervened model records like any other: the ablated unit reads 0, the readout
    downstream drops by exactly that unit's clean activation times its outgoing weight, and the
    run configuration names the intervention so a clean re-run into it is refused."""
    from tinymodels import HandSet

    from neuronscope.errors import ConfigMismatchError
    from neuronscope.recording import record
    from neuronscope.sources.tensors import TensorSource

    model = HandSet()
    x = torch.tensor([[2.0, 3.0], [1.0, 0.5], [-1.0, 4.0], [0.5, 2.5]])
    clean = record(model, TensorSource(x), "act,out", tmp_path / "clean.zarr", dtype="float32", progress=False)
    iv = ablate(model, "act", [1])
    cut = record(model, TensorSource(x), "act,out", tmp_path / "cut.zarr", dtype="float32", progress=False,
                 interventions=[iv])
    a0, a1 = (r.population("act").values for r in (clean, cut))
    o0, o1 = (r.population("out").values for r in (clean, cut))
    np.testing.assert_array_equal(a1[:, 1], 0.0)
    np.testing.assert_array_equal(a1[:, [0, 2]], a0[:, [0, 2]])
    w = model.out.weight.detach().numpy()
    np.testing.assert_allclose(o0 - o1, a0[:, [1]] * w[:, 1][None, :], rtol=1e-6)
    assert cut.config["interventions"] == [iv.describe()] and clean.config["interventions"] == []
    assert _no_hooks(model)
    with pytest.raises(ConfigMismatchError, match="interventions"):
        record(model, TensorSource(x), "act,out", tmp_path / "cut.zarr", dtype="float32", progress=False)
