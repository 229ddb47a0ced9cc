"""Conductance (closed forms on a Captum-style hand-set model, equality with Captum 0.9.0's
LayerConductance on it and on MiniLM), its dataset summary, batched ablation effects,
joint influence and the influential-path search (a planted path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerConductance
from causalmodels import MultiLayer, PlantedPath, Readout

from neuronscope.analyses.attribute import (
    ConductanceSummary,
    ablation_effects,
    conductance,
    conductance_over,
    influential_path,
    integration_alphas,
    joint_influence,
    plot_path,
)
from neuronscope.analyses.targets import (
    as_model_batch,
    embedding_cosine,
    embedding_readout,
    logit,
    next_token_loss,
    output_unit,
    probe_score,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import ablate

X = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
W2 = [2.0, -1.0, 3.0, 0.0]  # outgoing weights of the 4 hidden units to output 0


def test_post_relu_conductance_closed_form_and_completeness() -> None:
    # F = Σ_u W2[0,u] r_u + b: ∂F/∂r_u = W2[0,u] is constant, so for any rule that includes
    # both ends the sum telescopes: cond_u = W2[0,u] (relu(h_u(x)) − relu(h_u(0))).
    # h(1) = (3, 3, −0.5, 4), h(0) = (−3, 1, 0.5, 0) for x = (1, 2, 3).
    expected = [2.0 * (3 - 0), -1.0 * (3 - 1), 3.0 * (0 - 0.5), 0.0]  # 6, −2, −1.5, 0
    for steps in (1, 7, 50):
        r = conductance(MultiLayer(), "relu", X[:1], output_unit(0), steps=steps)
        np.testing.assert_allclose(r.conductance["relu"][0], expected, atol=1e-6)
        assert abs(r.delta["relu"][0]) < 1e-4  # completeness: Σ cond = F(x) − F(0) = 2.5
        assert r.f_input[0] - r.f_baseline[0] == pytest.approx(2.5, abs=1e-6)


def test_pre_relu_conductance_riemann_closed_form_and_convergence() -> None:
    # At the pre-activation site ∂F/∂h_u = W2[0,u]·1[h_u > 0] jumps at the kinks. The left
    # Riemann sum on α_k = k/n (Captum's layer-conductance form) gives
    #   cond_u = W2[0,u] · Δh_u / n · #{k < n : h_u(k/n) > 0},   Δh = W1 x = (6, 2, −1, 4)
    # h0 = −3 + 6k/n > 0 ⟺ k > n/2;  h1 > 0 always;  h2 = ½ − k/n > 0 ⟺ k < n/2.
    def closed(n: int) -> list[float]:
        on0 = sum(1 for k in range(n) if -3 + 6 * k / n > 0)
        on2 = sum(1 for k in range(n) if 0.5 - k / n > 0)
        return [2.0 * 6 / n * on0, -1.0 * 2 / n * n, 3.0 * -1 / n * on2, 0.0]

    errors = []
    for n in (3, 11, 101, 1001):  # odd: no path point sits exactly on a kink
        r = conductance(MultiLayer(), "linear1", X[:1], output_unit(0), steps=n)
        np.testing.assert_allclose(r.conductance["linear1"][0], closed(n), atol=1e-5)
        errors.append(abs(r.delta["linear1"][0]))
    # odd n: Σ cond = 6(1 − 1/n) − 2 − 1.5(1 + 1/n) = 2.5 − 7.5/n → |δ| = 7.5/n, shrinking with n
    np.testing.assert_allclose(errors, [7.5 / 3, 7.5 / 11, 7.5 / 101, 7.5 / 1001], atol=1e-5)
    # the exact integral W2[0,u](relu(h_u(1)) − relu(h_u(0))) is the limit
    r = conductance(MultiLayer(dtype=torch.float64), "linear1", X[:1].double(), output_unit(0), steps=200_001)
    np.testing.assert_allclose(r.conductance["linear1"][0], [6.0, -2.0, -1.5, 0.0], atol=1e-4)
    assert abs(r.delta["linear1"][0]) < 1e-4


@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_left", "riemann_middle", "gausslegendre"])
@pytest.mark.parametrize("site", ["linear1", "relu"])
def test_equal_to_captum_layer_conductance_on_the_hand_set_model(site: str, method: str) -> None:
    m = MultiLayer()
    base = torch.tensor([[0.5, -1.0, 0.0]])
    ours = conductance(m, site, X, output_unit(1), baseline=base, steps=13, method=method, per_position=True)
    ref = LayerConductance(lambda t: m(t)[:, 1], getattr(m, site)).attribute(
        X, baselines=base.expand_as(X), n_steps=13, method=method)
    np.testing.assert_allclose(ours.per_position[site].detach().numpy(), ref.detach().numpy(), atol=1e-5)


def test_integration_alphas_match_captum() -> None:
    from captum.attr._utils.approximation_methods import approximation_parameters

    for method in ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre"):
        assert integration_alphas(21, method) == approximation_parameters(method)[1](21)


def test_zero_outgoing_weight_unit_has_zero_conductance_and_zero_ablation_effect() -> None:
    m = MultiLayer()
    r = conductance(m, "relu", X, output_unit(0), steps=20)
    assert np.all(r.conductance["relu"][:, 3] == 0.0)
    eff = ablation_effects(m, "relu", [0, 3], output_unit(0), X)
    # ablating r_0 removes W2[0,0]·relu(h_0(x)): x1: 2·3 = 6, x2: h0 = −1+0.5+2−3 < 0 → 0
    np.testing.assert_allclose(eff.effect, [-(6.0 + 0.0) / 2, 0.0], atol=1e-6)


def _minilm_captum(model, enc, site_idx: int, forward, steps: int, baseline: torch.Tensor):
    emb = model.get_input_embeddings()(enc["input_ids"]).detach()
    lc = LayerConductance(forward, model.encoder.layer[site_idx].intermediate)
    return lc.attribute(emb, baselines=baseline, additional_forward_args=(enc["attention_mask"], enc["token_type_ids"]),
                        n_steps=steps, method="riemann_trapezoid").detach()


def test_equal_to_captum_layer_conductance_on_minilm(minilm) -> None:
    model, tok = minilm
    texts = ["The cat sat on the mat.", "Hola, ¿cómo estás?", "Neurons fire."]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    w = torch.randn(384, generator=torch.Generator().manual_seed(1))
    site = "encoder.layer.2.intermediate"

    def pooled(e, mask, tt):
        h = model(inputs_embeds=e, attention_mask=mask, token_type_ids=tt).last_hidden_state
        m = mask.to(h.dtype)[:, :, None]
        return (h * m).sum(1) / m.sum(1)

    ref = _minilm_captum(model, enc, 2, lambda e, m, t: pooled(e, m, t) @ w + 0.25, 8, 0.0)
    ours = conductance(model, site, enc, embedding_readout(w, 0.25), steps=8, per_position=True)
    np.testing.assert_allclose(ours.per_position[site].detach().numpy(), ref.detach().numpy(), atol=1e-5)
    assert np.abs(ref.detach().numpy()).max() > 1e-2  # not trivially zero
    mask = enc["attention_mask"].bool()
    np.testing.assert_allclose(ours.conductance[site], (ref * mask[:, :, None]).sum(1).double().numpy(), atol=1e-5)

    # embedding cosine to the clean embedding, [PAD] baseline
    with torch.no_grad():
        clean = pooled(model.get_input_embeddings()(enc["input_ids"]), enc["attention_mask"], enc["token_type_ids"])
    steps = 6
    pad = model.get_input_embeddings()(torch.zeros_like(enc["input_ids"])).detach()
    ref = _minilm_captum(
        model, enc, 4,
        lambda e, m, t: torch.nn.functional.cosine_similarity(pooled(e, m, t), clean.repeat(e.shape[0] // 3, 1), dim=-1),
        steps, pad)
    ours = conductance(model, "encoder.layer.4.intermediate", enc, embedding_cosine(), baseline="pad", steps=steps,
                       per_position=True)
    np.testing.assert_allclose(ours.per_position["encoder.layer.4.intermediate"].detach().numpy(), ref.detach().numpy(), atol=1e-5)
    assert np.allclose(ours.f_input, 1.0, atol=1e-5)  # cos(clean, clean)


def test_chunked_path_equals_one_pass(minilm) -> None:
    model, tok = minilm
    enc = dict(tok(["A short one.", "And a second sentence here."], padding=True, return_tensors="pt"))
    w = torch.randn(384, generator=torch.Generator().manual_seed(2))
    sites = ["encoder.layer.0.intermediate", "encoder.layer.5.intermediate"]
    whole = conductance(model, sites, enc, embedding_readout(w), steps=7)
    parts = conductance(model, sites, enc, embedding_readout(w), steps=7, internal_batch_size=6)  # 3 points per pass
    for s in sites:
        np.testing.assert_allclose(parts.conductance[s], whole.conductance[s], atol=1e-5)


def test_dataset_conductance_summary_streams_and_merges(minilm, small_corpus) -> None:
    from neuronscope.sources.text import TextSource

    model, tok = minilm
    src = TextSource(small_corpus, tok, batch_size=4, max_tokens=24)
    src.corpus.texts = src.corpus.texts[:8]
    src.corpus.labels = {k: v[:8] for k, v in src.corpus.labels.items()}
    src._codes = {k: v[:8] for k, v in src._codes.items()}
    w = torch.randn(384, generator=torch.Generator().manual_seed(3))
    site = "encoder.layer.3.intermediate"
    summ = conductance_over(model, src, site, embedding_readout(w), steps=4, label="lang")[site]
    per_doc, langs = [], []
    for batch in src.batches():
        r = conductance(model, site, batch.inputs, embedding_readout(w), steps=4)
        per_doc.append(r.conductance[site])
        docs = batch.samples["doc"]
        firsts = docs[np.r_[True, docs[1:] != docs[:-1]]]  # the batch's documents, in its order
        langs.extend(src.corpus.labels["lang"][src.corpus.ids().index(int(d))] for d in firsts)
    c = np.concatenate(per_doc)
    res = summ.result()
    np.testing.assert_allclose(res["mean"], c.mean(0), atol=1e-9)
    np.testing.assert_allclose(res["mean_abs"], np.abs(c).mean(0), atol=1e-9)
    cats = src.label_categories["lang"]
    for code, lang in enumerate(cats):
        sel = np.array([lg == lang for lg in langs])
        assert res["label_count"][code] == sel.sum()
        if sel.any():
            np.testing.assert_allclose(res["label_mean"][code], c[sel].mean(0), atol=1e-9)
        else:
            assert np.isnan(res["label_mean"][code]).all()
    # merge of halves equals the whole; state round trip
    a, b = ConductanceSummary(1536, cats), ConductanceSummary(1536, cats)
    codes = np.array([cats.index(lg) for lg in langs])
    a.update(c[:5], codes[:5], np.ones(5), np.ones(5))
    b.update(c[5:], codes[5:], 2 * np.ones(3), np.ones(3))
    whole = ConductanceSummary(1536, cats)
    whole.update(c, codes, np.r_[np.ones(5), 2 * np.ones(3)], np.ones(8))
    merged = ConductanceSummary.from_state(*a.merge(b).state())
    for k, v in whole.result().items():
        np.testing.assert_allclose(merged.result()[k], v, atol=1e-12, err_msg=k)
    assert merged.result()["completeness_max_abs"] == 2.0


def test_batched_ablation_equals_looped_single_ablations(minilm) -> None:
    from tinymodels import TinyText

    model, tok = minilm
    enc = dict(tok(["The weather is nice.", "Ich bin hier.", "Yes"], padding=True, return_tensors="pt"))
    units = [0, 7, 100, 511, 1024, 1535, 33, 64]
    site = "encoder.layer.2.intermediate"
    tgt = embedding_cosine()
    got = ablation_effects(model, site, units, tgt, enc, max_batch=9)  # 3 copies per pass
    as_mb = as_model_batch(enc)
    tgt.prepare(model, as_mb)
    with torch.no_grad():
        clean = tgt(model(**enc), as_mb)
        loop = []
        for u in units:
            with ablate(model, site, [u]):
                loop.append(float((tgt(model(**enc), as_mb) - clean).double().mean()))
    np.testing.assert_allclose(got.effect, loop, atol=1e-6)
    # float64 hand-set text model: bit-for-bit the same numbers as the loop
    tiny = TinyText(width=8).double()
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    inp = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    units = list(range(48))
    w = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = ablation_effects(tiny, "act", units, embedding_readout(w), inp, max_batch=20)
    cum = ablation_effects(tiny, "act", units[:5], embedding_readout(w), inp, cumulative=True)
    with torch.no_grad():
        mb = as_model_batch(inp)
        r = embedding_readout(w)
        clean = r(tiny(**inp), mb)
        loop = []
        for u in units:
            with ablate(tiny, "act", [u]):
                loop.append(float((r(tiny(**inp), mb) - clean).mean()))
        cum_loop = []
        for j in range(5):
            with ablate(tiny, "act", units[: j + 1]):
                cum_loop.append(float((r(tiny(**inp), mb) - clean).mean()))
    np.testing.assert_array_equal(got.effect, loop)
    np.testing.assert_array_equal(cum.effect, cum_loop)
    assert cum.sets[2] == [0, 1, 2]


def test_mean_ablation_effect_closed_form_on_a_source() -> None:
    from neuronscope.sources.tensors import TensorSource

    m = Readout()
    xs = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    means = torch.linspace(-1, 1, 6, dtype=torch.float64)
    eff = ablation_effects(m, "hidden", [1, 3], output_unit(0), TensorSource(xs, batch_size=3), how="mean", means=means)
    y = m.hidden(xs).detach()
    w = m.readout.weight.detach()[0]
    for j, u in enumerate([1, 3]):
        assert eff.effect[j] == pytest.approx(float((w[u] * (means[u] - y[:, u])).mean()), abs=1e-12)
    assert eff.count == 10


def test_joint_influence_and_planted_path() -> None:
    m = PlantedPath()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    # F(x) = 4.5 + 10.5 + 18 = 33; ablating (act1[0], act2[1], act3[0]) leaves 1 + 0.5 + 0.5 + 1 = 3
    assert joint_influence(m, {"act1": [0], "act2": [1], "act3": [0]}, output_unit(0), x) == pytest.approx(30.0)
    assert joint_influence(m, {"act3": [2]}, output_unit(0), x) == pytest.approx(12.0)
    path = influential_path(m, "act*", output_unit(0), x)
    assert path.sites == ["act1", "act2", "act3"]
    assert path.units == [0, 1, 0]  # not (0, 1, 2): act3[2] is silenced once act2[1] is ablated
    np.testing.assert_allclose(path.influence, [9.0, 25.0, 30.0])
    # per example: (0, 1) only drives act1[2] → act2[2] and act3[0]
    xs = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    paths = influential_path(m, "act*", output_unit(0), xs, per_example=True, max_batch=4)
    assert [p.units for p in paths] == [[0, 1, 0], [2, 2, 0]]
    np.testing.assert_allclose(paths[1].influence, [0.5, 1.0, 6.0])
    assert influential_path(m, "act*", output_unit(0), xs, candidates={"act3": [1, 2]}).units[2] in (1, 2)


def test_plot_path(tmp_path) -> None:
    m = PlantedPath()
    x = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    out = plot_path(influential_path(m, "act*", output_unit(0), x), tmp_path / "path.png")
    assert out.stat().st_size > 1000
    out = plot_path(influential_path(m, "act*", output_unit(0), x, per_example=True), tmp_path / "paths.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_score_target() -> None:
    m = Readout()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    w = torch.arange(6, dtype=torch.float64)
    tgt = probe_score(w.numpy()[None], np.array([0.5]), "hidden")
    eff = ablation_effects(m, "hidden", [2, 5], tgt, x)
    y = m.hidden(x).detach()
    np.testing.assert_allclose(eff.effect, [-(2 * y[:, 2]).mean(), -(5 * y[:, 5]).mean()], atol=1e-12)
    # linear in y: cond_u = w_u (y_u(x) − y_u(0)), y(0) = the bias, for any steps
    r = conductance(m, "hidden", x, tgt, steps=3)
    np.testing.assert_allclose(r.conductance["hidden"], (w * (y - m.hidden.bias.detach())).numpy(), atol=1e-9)


def test_bad_input_is_one_line_error(minilm) -> None:
    model, tok = minilm
    enc = dict(tok(["Hello there."], return_tensors="pt"))
    cases = [
        (lambda: ablation_effects(model, "encoder.layer.0.intermediate", [1536], embedding_cosine(), enc),
         "unit 1536 is out of range for site 'encoder.layer.0.intermediate' with 1536 units; use indices 0..1535"),
        (lambda: ablation_effects(model, "encoder.layer.0.intermediate", [3], logit("hello", tokenizer=tok), enc),
         "target logit('hello') needs a model with an output vocabulary; BertModel has none"),
        (lambda: conductance(model, "encoder.layer.0.intermediate", enc, next_token_loss()),
         "target next_token_loss() needs a model with an output vocabulary"),
        (lambda: ablation_effects(model, "encoder.layer.*.intermediate", [3], embedding_cosine(), enc),
         "matches 6 modules"),
        (lambda: conductance(Readout(), "unused", torch.zeros(2, 5, dtype=torch.float64), output_unit(0)),
         "site 'unused' did not run in the forward pass; choose modules the model calls"),
        (lambda: conductance(MultiLayer(), "relu", X, output_unit(0), method="simpson"), "method must be one of"),
    ]
    for fn, msg in cases:
        with pytest.raises(NeuronscopeError) as e:
            fn()
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_conv_sites_equal_captum_and_looped_channel_ablation() -> None:
    from neuronscope.testing.digits import digits_data, digits_model

    m = digits_model("digits-cnn:0")
    x = torch.as_tensor(digits_data("all", "cnn")[0][:5])
    ours = conductance(m, "act2", x, output_unit(2), steps=10, per_position=True)
    ref = LayerConductance(lambda t: m(t)[:, 2], m.act2).attribute(x, baselines=torch.zeros_like(x), n_steps=10,
                                                                  method="riemann_trapezoid").detach()
    np.testing.assert_allclose(ours.per_position["act2"].numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.conductance["act2"], ref.sum((2, 3)).double().numpy(), atol=1e-4)
    eff = ablation_effects(m, "act2", [0, 5, 15], output_unit(2), x, max_batch=10)
    with torch.no_grad():
        clean = m(x)[:, 2]
        loop = []
        for c in (0, 5, 15):
            with ablate(m, "act2", [c]):
                loop.append(float((m(x)[:, 2] - clean).double().mean()))
    np.testing.assert_allclose(eff.effect, loop, atol=1e-6)
