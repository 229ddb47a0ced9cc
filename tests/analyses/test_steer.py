"""Steering: the CAA vector equals the difference of means computed by hand, adding it moves
a linear readout by exactly coefficient × (w·v), and a real sweep on MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causalmodels import Readout

from neuronscope.analyses.steer import (
    plot_sweep,
    steering_sweep,
    steering_vector,
    steering_vector_from_labels,
)
from neuronscope.analyses.targets import embedding_cosine, output_unit
from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import add


def test_planted_direction_moves_a_linear_readout_by_coefficient_times_w_dot_v() -> None:
    m = Readout()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 5, dtype=torch.float64, generator=g)
    d = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)  # planted input direction
    pos, neg = base[:15] + d, base[15:] - d
    sv = steering_vector(m, "hidden", pos, neg, batch_size=7)
    W = m.hidden.weight.detach()
    want = (W @ (pos.mean(0) - neg.mean(0))).numpy()
    np.testing.assert_allclose(sv.vector, want, rtol=1e-6, atol=1e-6)  # float32 activations, float64 means
    assert (sv.n_positive, sv.n_negative) == (15, 15)

    w = m.readout.weight.detach()[0]
    v = torch.as_tensor(sv.vector)
    x = torch.randn(8, 5, dtype=torch.float64, generator=g)
    with torch.no_grad():
        clean = m(x)[:, 0]
        for c in (-3.0, -0.5, 0.0, 1.0, 4.0):
            with add(m, "hidden", v, coefficient=c):
                moved = m(x)[:, 0]
            np.testing.assert_allclose((moved - clean).numpy(), c * float(w @ v), rtol=1e-12, atol=1e-12)
    curve = steering_sweep(m, "hidden", sv, [-2.0, 0.0, 2.0], output_unit(0), x)
    np.testing.assert_allclose(curve.mean, float(clean.mean()) + np.array([-2.0, 0.0, 2.0]) * float(w @ v), atol=1e-10)
    np.testing.assert_allclose(curve.std, float(clean.std(unbiased=False)), atol=1e-9)  # a shift keeps the spread
    assert curve.clean == pytest.approx(float(clean.mean()), abs=1e-12)


def test_steering_on_minilm_from_labels(minilm, small_corpus, tmp_path) -> None:
    from neuronscope.sources.text import TextSource

    model, tok = minilm
    src = TextSource(small_corpus, tok, batch_size=8, max_tokens=32)
    site = "encoder.layer.3.intermediate"
    sv = steering_vector_from_labels(model, src, site, "lang", "tr", "es", positions="last")
    # by hand: the last real token's activations of every en / es document
    from neuronscope.intervene import capture

    per = {"tr": [], "es": []}
    langs = src.corpus.labels["lang"]
    for i, text in enumerate(src.corpus.texts):
        if langs[i] in per:
            enc = dict(tok([text], truncation=True, max_length=32, return_tensors="pt"))
            per[langs[i]].append(capture(model, site, enc)[site][0, -1].double())
    want = torch.stack(per["tr"]).mean(0) - torch.stack(per["es"]).mean(0)
    np.testing.assert_allclose(sv.vector, want.numpy(), atol=2e-5)
    assert sv.n_positive == len(per["tr"]) and sv.n_negative == len(per["es"])

    texts = src.corpus.texts[:6]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    curve = steering_sweep(model, site, sv, [-8.0, -2.0, 0.0, 2.0, 8.0], embedding_cosine(), enc)
    assert curve.mean[2] == pytest.approx(1.0, abs=1e-6)  # coefficient 0: the clean embedding
    assert curve.mean[0] < curve.mean[1] < 1.0 and curve.mean[4] < curve.mean[3] < 1.0
    out = plot_sweep(curve, tmp_path / "sweep.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_steering_bad_input() -> None:
    m = Readout()
    x = torch.zeros(3, 5, dtype=torch.float64)
    cases = [
        (lambda: steering_vector(m, "hidden", ["a text"], ["b"]), "texts need tokenizer="),
        (lambda: steering_sweep(m, "hidden", np.ones(4), [1.0], output_unit(0), x), "vector for site 'hidden' has 4 values; give 6"),
        (lambda: steering_sweep(m, "hidden", np.ones(6), [], output_unit(0), x), "give at least one coefficient"),
    ]
    for fn, msg in cases:
        with pytest.raises(NeuronscopeError) as e:
            fn()
        assert msg in str(e.value) and "\n" not in str(e.value)
