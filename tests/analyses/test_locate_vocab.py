"""What a neuron writes: W_U @ w_out by hand, GPT-2's transposed Conv1D, and the weight families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscope.analyses.locate import (
    load_causal_lm,
    load_vocab_projection,
    neuron_logits,
    output_weights,
    save_vocab_projection,
    vocab_projection,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.testing.tinylm import TinyLM, TinyLMConfig

# W_U: tokens 0..3 read residual dims 0..3, token 4 reads all four dims
W_U = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=np.float32)
# W_out columns = what neurons 0, 1, 2 write
W_OUT = np.array([[1, 0, 1], [0, 2, 1], [0, 0, 1], [0, -1, 1]], dtype=np.float32)
# C = W_U @ W_out, by hand: column 0 = (1, 0, 0, 0, 1), column 1 = (0, 2, 0, -1, 1), column 2 = (1, 1, 1, 1, 4)
HAND = np.array([[1, 0, 1], [0, 2, 1], [0, 0, 1], [0, -1, 1], [1, 1, 4]], dtype=np.float64)


def hand_set_model() -> TinyLM:
    m = TinyLM(TinyLMConfig(n_layers=1, d_model=4, n_heads=1, d_ffn=3, n_ctx=8, vocab_size=5))
    with torch.no_grad():
        m.lm_head.weight.copy_(torch.from_numpy(W_U))
        m.blocks[0].mlp.fc_out.weight.copy_(torch.from_numpy(W_OUT))
    return m.eval()


def test_projection_equals_w_u_times_w_out_by_hand():
    m = hand_set_model()
    name, w = output_weights(m, "blocks.0.mlp.act")
    assert name == "blocks.0.mlp.fc_out"
    np.testing.assert_array_equal(w, W_OUT)
    for u in range(3):
        np.testing.assert_array_equal(neuron_logits(m, "blocks.0.mlp.act", u), HAND[:, u])
    (p,) = vocab_projection(m, "blocks.*.mlp.act", top=2).values()
    assert p.top_ids[:, 0].tolist() == [0, 1, 4]  # the most promoted token of each neuron
    np.testing.assert_array_equal(p.top_values[:, 0], [1, 2, 4])
    assert p.bottom_ids[1, 0] == 3 and p.bottom_values[1, 0] == -1  # neuron 1 suppresses token 3
    np.testing.assert_allclose(p.norm, [1, np.sqrt(5), 2])
    c1 = HAND[:, 1]
    z = (c1 - c1.mean()) / c1.std()
    assert p.skew[1] == pytest.approx((z**3).mean()) and p.kurtosis[1] == pytest.approx((z**4).mean())


def test_families_entropy_and_token_frequency_neurons():
    # residual dim 3 is invisible to the unembedding (its null space); token counts 1, 10, 100, 1000
    w_u = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0]], dtype=np.float32)
    counts = np.array([1, 10, 100, 1000])
    logf = np.log(counts)
    # neuron 0 writes 10·e3 (huge, into the null space); neuron 1 writes exactly the log-frequency
    # direction: W_U w = log f has the solution w = (log f0 − … ) solved below; neurons 2..19 small noise
    rng = np.random.default_rng(0)
    w_out = 0.1 * rng.standard_normal((4, 20))
    w_out[:, 0] = [0, 0, 0, 10]
    w_out[:, 1] = np.linalg.lstsq(w_u.astype(np.float64), logf, rcond=None)[0]
    m = TinyLM(TinyLMConfig(n_layers=1, d_model=4, n_heads=1, d_ffn=20, n_ctx=8, vocab_size=4))
    with torch.no_grad():
        m.lm_head.weight.copy_(torch.from_numpy(w_u))
        m.blocks[0].mlp.fc_out.weight.copy_(torch.from_numpy(w_out.astype(np.float32)))
    (p,) = vocab_projection(m.eval(), "blocks.0.mlp.act", token_counts=counts, null_dims=1).values()
    assert p.null_fraction[0] == pytest.approx(1.0) and p.families["entropy"].tolist() == [True] + [False] * 19
    assert p.freq_corr[1] == pytest.approx(np.corrcoef(w_u @ w_out[:, 1].astype(np.float32), logf)[0, 1], abs=1e-6)
    assert p.freq_corr[1] > 0.99 and p.families["token_frequency"][1]


def test_gpt2_conv1d_is_transposed_and_hf_causal_lm_loads_by_path(tmp_path):
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, n_inner=16, vocab_size=30, n_positions=16,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2-tiny")
    model, _tok = load_causal_lm(tmp_path / "gpt2-tiny")
    projs = vocab_projection(model, "transformer.h.*.mlp.act", top=3)
    assert list(projs) == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    for i, site in enumerate(projs):
        w_u = model.lm_head.weight.detach().double().numpy()
        c_proj = model.transformer.h[i].mlp.c_proj.weight.detach().double().numpy()  # Conv1D: (in=16, out=8)
        full = w_u @ c_proj.T
        assert projs[site].out_proj == f"transformer.h.{i}.mlp.c_proj"
        np.testing.assert_allclose(projs[site].top_values[:, 0], full.max(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(projs[site].top_ids[:, 0], full.argmax(axis=0))
        np.testing.assert_allclose(neuron_logits(model, site, 5), full[:, 5], rtol=1e-12)


def test_models_without_vocabulary_and_save_round_trip(tmp_path):
    bare = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    with pytest.raises(NeuronscopeError, match="no output vocabulary"):
        vocab_projection(bare, "1")
    m = hand_set_model()
    with pytest.raises(NeuronscopeError, match="no FFN output projection"):
        output_weights(m, "ln_f")

    class FakeRun:
        def __init__(self):
            self.stored = {}

        def write_extras(self, name, arrays, attrs):
            self.stored[name] = {"arrays": {k: np.asarray(v) for k, v in arrays.items()}, "attrs": attrs}

        def extras(self, name):
            return self.stored.get(name)

    run = FakeRun()
    projs = vocab_projection(m, "blocks.0.mlp.act", top=2)
    save_vocab_projection(run, projs)
    back = load_vocab_projection(run)["blocks.0.mlp.act"]
    np.testing.assert_array_equal(back.top_ids, projs["blocks.0.mlp.act"].top_ids)
    assert back.params == projs["blocks.0.mlp.act"].params
