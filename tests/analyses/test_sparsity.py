"""MoEfication, routers, activation predictors and the sparse FFN: planted answers, exactness
with every expert on, bad input, and real runs on the tiny LM and MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.analyses.sparsity import (
    Experts,
    balanced_kmeans,
    collect_ffn_data,
    embedding_quality,
    evaluate_predictor,
    expert_scores,
    find_ffns,
    hot_cold,
    lm_quality,
    moefication_curve,
    moefy,
    router_recall,
    sparsify,
    split_experts,
    time_ffn,
    train_predictor,
    train_router,
)
from neuronscope.errors import NeuronscopeError


@pytest.fixture(scope="module")
def lm():
    from neuronscope.testing.tinylm import load_tinylm

    return load_tinylm(0)


class Block(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.fc_in, self.act, self.fc_out = nn.Linear(d, f), nn.ReLU(), nn.Linear(f, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class Net(nn.Module):
    def __init__(self, d: int = 16, f: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Block(d, f) for _ in range(2))
        self.gate = nn.Sequential(nn.Linear(d, f), nn.Linear(f, d))  # no activation: not an FFN
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_find_ffns_accepts_ffn_blocks_and_refuses_the_rest(lm, minilm) -> None:
    model, _ = lm
    acts = find_ffns(model, "blocks.*.mlp.act")
    assert [f.name for f in acts] == [f"blocks.{i}.mlp.act" for i in range(3)]
    assert acts[0].kind == "sequential" and acts[0].w_in is model.blocks[0].mlp.fc_in
    assert [f.d_ff for f in find_ffns(model, "blocks.1.mlp")] == [512]
    bert = find_ffns(minilm[0], "encoder.layer.*.intermediate")
    assert len(bert) == 6 and bert[2].kind == "bert" and bert[2].d_ff == 1536
    assert bert[2].w_out is minilm[0].encoder.layer[2].output.dense
    for bad in ("blocks.0.attn", "ln_f", "blocks.0.mlp.fc_in"):
        with pytest.raises(NeuronscopeError, match="Linear → activation → Linear"):
            find_ffns(model, bad)
    with pytest.raises(NeuronscopeError, match="Linear → activation → Linear"):
        find_ffns(minilm[0], "encoder.layer.0.attention")
    with pytest.raises(NeuronscopeError, match="Linear → activation → Linear"):
        find_ffns(Net(), "gate")


def test_more_experts_than_neurons_is_refused(lm) -> None:
    f = find_ffns(lm[0], "blocks.0.mlp.act")[0]
    with pytest.raises(NeuronscopeError, match="at most 512 experts"):
        split_experts(f, 513)
    with pytest.raises(NeuronscopeError, match="at most 512 experts"):
        moefy(lm[0], None, "blocks.0.mlp.act", 1000, data={})
    with pytest.raises(NeuronscopeError, match="positive integer"):
        split_experts(f, 0)


def test_balanced_kmeans_recovers_planted_clusters_with_equal_sizes() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 10)) * 5
    truth = np.repeat(np.arange(6), 20)
    x = centers[truth] + rng.normal(size=(120, 10))
    labels = balanced_kmeans(x, 6, seed=1)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.bincount(labels).tolist() == [20] * 6
    uneven = balanced_kmeans(x[:103], 6)
    assert sorted(np.bincount(uneven).tolist()) == [17, 17, 17, 17, 17, 18]


def test_every_expert_on_equals_the_dense_model(lm, minilm) -> None:
    model, tok = lm
    enc = tok(["Hello there, how are you?", "Bonjour"], padding=True, return_tensors="pt")
    with torch.no_grad():
        dense = model(enc["input_ids"], enc["attention_mask"])
        ffns = find_ffns(model, "blocks.*.mlp.act")
        experts = {f.name: split_experts(f, 8, seed=0) for f in ffns}
        means = {f.name: np.full(f.d_ff, 0.3, np.float32) for f in ffns}
        with sparsify(model, ffns, experts=experts, compensate=True, means=means) as sp:
            assert isinstance(model.blocks[0].mlp, nn.Module) and model.blocks[0].mlp is sp.modules[ffns[0].name]
            sparse = model(enc["input_ids"], enc["attention_mask"])
            assert sp.fraction_used() == 1.0
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
        assert model.blocks[0].mlp is ffns[0].owner  # restored
        assert torch.equal(model(enc["input_ids"], enc["attention_mask"]), dense)
    bert, btok = minilm
    benc = btok(["A sentence.", "Eine andere, längere Zeile Text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = bert(**benc).last_hidden_state
        bffns = find_ffns(bert, "encoder.layer.*.intermediate")
        handle = sparsify(bert, bffns, experts={f.name: Experts.contiguous(f.d_ff, 16) for f in bffns})
        got = bert(**benc).last_hidden_state
        handle.restore()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert bert.encoder.layer[0].output.dense is bffns[0].w_out
        assert torch.equal(bert(**benc).last_hidden_state, ref)


def test_a_router_beats_chance_on_planted_expert_needs() -> None:
    """Tokens come from 8 clusters; a token of cluster c needs experts c and c+1 (mod 8).
    The router's top-2 recall must beat chance (2/8 = 0.25) by at least 0.6."""
    rng = np.random.default_rng(0)
    n, d, e = 4000, 24, 8
    centers = rng.normal(size=(e, d)) * 3
    c = rng.integers(0, e, n)
    x = centers[c] + rng.normal(size=(n, d))
    scores = 0.05 * rng.random((n, e))
    scores[np.arange(n), c] += 1.0
    scores[np.arange(n), (c + 1) % e] += 0.8
    router = train_router(x[:3000], scores[:3000], hidden=32, epochs=20, seed=0)
    recall = router_recall(router, x[3000:], scores[3000:], 2)
    assert recall >= 0.25 + 0.6
    assert router_recall(router, x[3000:], scores[3000:], 1) >= 0.125 + 0.6


def test_expert_scores_are_the_output_error_of_skipping_an_expert(lm) -> None:
    f = find_ffns(lm[0], "blocks.0.mlp.act")[0]
    ex = split_experts(f, 4)
    x = torch.randn(5, f.d_model)
    with torch.no_grad():
        a = f.neurons(x)
        mu = np.linspace(-0.1, 0.2, f.d_ff).astype(np.float32)
        s = expert_scores(a, ex, f, "output", mu)
        full = f.dense(x)
        e = 2
        m = torch.as_tensor(ex.members(e))
        skipped = a.clone()
        skipped[:, m] = torch.as_tensor(mu)[m]
        err = (full - f.w_out(skipped)).norm(dim=1)
    torch.testing.assert_close(s[:, e], err, rtol=1e-4, atol=1e-5)
    act = expert_scores(a, ex, target="activation")
    torch.testing.assert_close(act[:, e], a[:, m].clamp(min=0).sum(1))


def test_activation_predictor_on_a_planted_relu_ffn() -> None:
    """A ReLU FFN whose pre-activations are a rank-4 function of the input: a rank-8 predictor
    recovers the active set almost exactly, and the sparse FFN driven by it equals the dense one
    token by token (inactive ReLU neurons contribute nothing)."""
    torch.manual_seed(0)
    d, f = 16, 96
    block = Block(d, f)
    with torch.no_grad():
        block.fc_in.weight.copy_(torch.randn(f, 4) @ torch.randn(4, d) / 2)
        block.fc_in.bias.fill_(-0.5)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = block

        def forward(self, x):
            return self.mlp(x)

    model = Holder()
    ffn = find_ffns(model, "mlp.act")[0]
    x = torch.randn(6000, d)
    with torch.no_grad():
        fired = (ffn.neurons(x) > 0).numpy()
    freq = fired[:5000].mean(0)
    hot = hot_cold(freq, 0.1)
    assert hot.sum() == 10 and freq[hot].min() >= freq[~hot].max()
    pred = train_predictor(x[:5000].numpy(), fired[:5000], rank=8, hot=hot, epochs=40, seed=0)
    ev = evaluate_predictor(pred, x[5000:].numpy(), fired[5000:])

    assert ev["recall"] > 0.97 and ev["precision"] > 0.8  # hot neurons are always on
    assert ev["cold_recall"] > 0.95
    assert abs(ev["true_fraction"] - fired[5000:].mean()) < 1e-9
    # one token at a time (decode-style), computing only the predicted neurons
    pred.threshold = 0.2  # favour recall: a missed active neuron changes the output
    with torch.no_grad():
        dense = model(x[5000:5020])
        with sparsify(model, [ffn], predictors=pred) as sp:
            outs = torch.cat([model(x[i : i + 1]) for i in range(5000, 5020)])
            frac = sp.fraction_used()
        exact = np.mean([torch.allclose(o, dd, atol=1e-5) for o, dd in zip(outs, dense, strict=True)])
    assert frac < 0.75 and exact >= 0.9


def test_moefied_tiny_lm_keeps_perplexity_along_the_curve(lm) -> None:
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.testing.tinylm import tinylm_corpus

    model, tok = lm
    train = tinylm_corpus("train").texts[::8]
    held = tinylm_corpus("heldout").texts[:60]
    moe = moefy(model, TextSource(Corpus(train), tok, batch_size=32, max_tokens=96), "blocks.*.mlp.act", 8,
                max_tokens=6000, epochs=15, seed=0)
    assert set(moe.experts) == {f"blocks.{i}.mlp.act" for i in range(3)}
    assert all(np.bincount(e.labels).tolist() == [64] * 8 for e in moe.experts.values())

    def evaluate(m):
        return lm_quality(m, tok, held)

    rows = moefication_curve(model, moe, evaluate, [2, 4, 8], routers=("learned", "oracle"),
                             quality=lambda q, b: b["perplexity"] / q["perplexity"])
    by = {(r["router"], r["top_k"]): r for r in rows}
    assert by[("learned", 8)]["quality"] == pytest.approx(1.0, abs=1e-4)
    assert by[("learned", 8)]["fraction"] == 1.0
    assert by[("learned", 4)]["fraction"] == pytest.approx(0.5, abs=1e-9)
    # quality rises with the experts used, the oracle is an upper bound, and half the
    # neurons keep most of the quality
    assert by[("learned", 2)]["quality"] < by[("learned", 4)]["quality"] <= 1.0 + 1e-6
    assert by[("oracle", 4)]["quality"] >= by[("learned", 4)]["quality"] - 0.01
    assert by[("learned", 4)]["quality"] > 0.8


def test_minilm_moefication_on_a_subset(minilm) -> None:
    """Real model, small: the six FFNs of MiniLM on 300 documents, 16 experts; every expert on
    reproduces the dense embeddings, quality falls as experts are dropped, the measured share
    of neurons is k/E, and the sparse FFN is timed against the dense one."""
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.testing.tinylm import tinylm_corpus

    model, tok = minilm
    train = tinylm_corpus("train").texts[::9]
    held = tinylm_corpus("heldout").texts[:80]
    src = TextSource(Corpus(train), tok, batch_size=64, max_tokens=48)
    moe = moefy(model, src, "encoder.layer.*.intermediate", 16, max_tokens=3000, epochs=10, seed=0)
    assert len(moe.ffns) == 6
    base = embedding_quality(model, tok, held)
    assert base["cosine"] == 1.0 and 0.5 < base["retrieval"] <= 1.0

    def evaluate(m):
        q = embedding_quality(m, tok, held, base["embeddings"])
        return {"cosine": q["cosine"], "retrieval": q["retrieval"]}

    rows = moefication_curve(model, moe, evaluate, [4, 8, 16], baseline={"cosine": 1.0},
                             quality=lambda q, b: q["cosine"])
    by = {r["top_k"]: r for r in rows}
    assert by[16]["quality"] == pytest.approx(1.0, abs=1e-5)
    assert by[16]["retrieval"] == base["retrieval"]
    assert by[4]["fraction"] == pytest.approx(0.25, abs=1e-9)
    assert by[4]["quality"] < by[8]["quality"] < by[16]["quality"]
    assert by[8]["quality"] > 0.8
    # the FFN timing helper measures both paths on the same inputs
    data = collect_ffn_data(model, src, moe.ffns[:1], max_tokens=512)
    x = torch.as_tensor(data[moe.ffns[0].name].x)
    with moe.sparsify(model, 4) as sp:
        t = time_ffn(moe.ffns[0], sp.modules[moe.ffns[0].name], x, repeats=3)
    assert t["dense_s"] > 0 and t["sparse_s"] > 0 and t["speedup"] > 0


def test_sparse_module_validates_its_configuration(lm) -> None:
    f = find_ffns(lm[0], "blocks.0.mlp.act")[0]
    with pytest.raises(NeuronscopeError, match="router"):
        sparsify(lm[0], [f], experts=split_experts(f, 4), top_k=2)
    with pytest.raises(NeuronscopeError, match="exactly one"):
        sparsify(lm[0], [f])
    assert lm[0].blocks[0].mlp is f.owner  # a failed swap leaves the model as it was


@pytest.mark.slow
def test_minilm_moefication_curve_on_the_corpus(minilm) -> None:
    """The full recipe on MiniLM (16 experts, routers on 8,192 training tokens, 150 held-out
    documents): some top-k using at most half of the FFN neurons keeps ≥ 95% of the dense
    model's retrieval recall, and every expert on is the dense model."""
    from neuronscope.analyses.sparsity import moefy_report
    from neuronscope.testing.tinylm import tinylm_corpus

    model, tok = minilm
    held = tinylm_corpus("heldout").texts[::2][:150]
    rep = moefy_report(model, tok, 16, [2, 4, 8, 16], train_texts=tinylm_corpus("train").texts[::3],
                       heldout_texts=held, timing=False)
    rows = {r["top_k"]: r for r in rep["rows"]}
    assert rows[16]["quality"] == pytest.approx(1.0) and rows[16]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rep["best"] is not None and rep["best"]["fraction"] <= 0.5
