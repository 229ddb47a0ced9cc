"""Language steering on the tiny LM (Tang et al. 2024): does deactivating a language's LAPE
neurons raise that language's held-out loss more than the others' and lower the
language-identifier probability of its generations?

Setup: LAPE on the tiny LM's three FFN sites over the first 40 training documents of each of
the 20 languages (64 tokens each), ``top_rate=0.1``. The paper's 1 % is 15 of the tiny LM's
1,536 neurons (fa 6, he 5, ko 4, ru 2, uk 2) and deactivating them changes no language's
held-out loss by more than 0.002 nats, with the language's own change ranking 15th–20th of 20:
at the paper's rate the finding does not hold on this model at all. Measured at 10 % (all
tables in docs/language-steering.md; the full training split and this 40-document setup agree
on the loss):

* held-out loss: A's own loss change ranks first of 20 for ja, ko, tr and zh in both setups,
  in the top 5 for most languages (mean rank ≈ 6, chance 10.5), and last-but-few for bn, ru,
  uk (whose neurons change nothing); he and fa have many neurons but small effects;
* generations (greedy continuations of 12-character held-out prompts, naive Bayes char n-gram
  identifier): in this setup A's identifier probability falls for en, id, it, nl, zh-Hant and
  *rises or stays* for the rest, tr and zh included (with the full-split LAPE and 8 prompts it
  fell for tr and zh: the sign is not stable); averaged over the 20 languages it does not move.
  The tiny LM's continuations are mostly babble whose script the prompt already fixes.

So the assertions are: (1) over every language, no selection: the own-loss rank is better
than chance; (2) the languages whose own loss change ranked first of 20 in the full-split
measurement (ja, ko, tr, zh) rank first again with this independent LAPE sample — a
replication, chosen from the earlier measurement; (3) the generation half of the claim, for
tr and zh, is a strict xfail: it does not hold on this model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscope.analyses.langsteer import generate_batch, language_steering, loss_by_label
from neuronscope.analyses.locate import lape
from neuronscope.errors import NeuronscopeError
from neuronscope.recording import summarize_model
from neuronscope.sources.text import Corpus, TextSource
from neuronscope.specs import load_model
from neuronscope.testing.tinylm import heldout_loss_by_lang, tinylm_corpus

PER_LANGUAGE = 40
TOP_RATE = 0.1


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: oversubscribed threads are 5× slower
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_lape(one_thread):
    model, tok = load_model("tinylm:0")
    train = tinylm_corpus("train")
    labels = [str(v) for v in train.labels["lang"]]
    seen: dict[str, int] = {}
    keep = []
    for i, lab in enumerate(labels):
        if seen.get(lab, 0) < PER_LANGUAGE:
            keep.append(i)
            seen[lab] = seen.get(lab, 0) + 1
    sub = Corpus([train.texts[i] for i in keep], {"lang": [labels[i] for i in keep]}, name="tinylm-train-40")
    summ = summarize_model(model, TextSource(sub, tok, batch_size=32, max_tokens=64), "blocks.*.mlp.act",
                           progress=False)
    return model, tok, summ, lape(summ, "lang", top_rate=TOP_RATE)


def test_loss_by_label_equals_the_tiny_lms_own_held_out_loss(tiny_lape):
    model, tok, *_ = tiny_lape
    held = tinylm_corpus("heldout")
    ours = loss_by_label(model, tok, held.texts, held.labels["lang"], max_tokens=model.config.n_ctx)
    theirs = heldout_loss_by_lang(model, tok, held)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], rel=1e-5)


def test_batched_generation_equals_one_by_one(tiny_lape):
    model, tok, *_ = tiny_lape
    prompts = ["Hello, how", "안녕하세요", "Wie geht es dir", "x"]
    batched = generate_batch(model, tok, prompts, 12, batch_size=3)
    assert batched == [model.generate(p, 12) for p in prompts]


@pytest.fixture(scope="module")
def deactivated(tiny_lape):
    model, tok, _summ, res = tiny_lape
    return language_steering(model, tok, res, heldout=tinylm_corpus("heldout"), n_prompts=0)


def test_deactivating_a_languages_neurons_hurts_that_language_most(deactivated):
    s = deactivated.summary().set_index("steered")
    print("\n" + s[["neurons", "loss_change", "other_max_loss_change", "other_max_language", "loss_rank"]]
          .round(4).to_string())
    assert len(s) >= 15  # most languages have LAPE neurons at 10 %
    assert s["loss_rank"].mean() < 10.5 - 2  # chance: (20 + 1) / 2
    for lang in ("ja", "ko", "tr", "zh"):
        assert s.loc[lang, "loss_change"] > s.loc[lang, "other_max_loss_change"] > 0, lang
        assert s.loc[lang, "loss_rank"] == 1
    assert np.isnan(deactivated.prob).all() and np.isnan(deactivated.share).all()  # n_prompts=0: no generation


@pytest.mark.xfail(strict=True, reason="measured: the own-language probability of the tiny LM's greedy "
                   "generations does not fall for tr (0.33 → 0.39) or zh (0.21 → 0.22)")
def test_deactivating_lowers_the_own_language_probability_of_generations(tiny_lape, deactivated):
    model, tok, _summ, res = tiny_lape
    gen = language_steering(model, tok, res, ["tr", "zh"], heldout=tinylm_corpus("heldout"),
                            prompt_languages=["tr", "zh"], n_prompts=16)
    g = gen.summary().set_index("steered")
    print("\n" + g[["prob_clean", "prob", "share_clean", "share"]].round(4).to_string())
    s = deactivated.summary().set_index("steered")
    for lang in ("tr", "zh"):  # the same held-out losses either way (losses do not depend on generating)
        assert g.loc[lang, "loss_change"] == pytest.approx(s.loc[lang, "loss_change"], abs=1e-9)
    assert np.isnan(gen.prob[:, gen.languages.index("ko")]).all()  # no Korean prompts were made
    for lang in ("tr", "zh"):
        assert g.loc[lang, "prob"] < g.loc[lang, "prob_clean"], lang


def test_activating_clamps_to_the_languages_mean(tiny_lape):
    """Activation clamps the neurons to their mean over the language's tokens: the clamped
    activations are exactly those means (checked on the model's own output)."""
    model, tok, summ, res = tiny_lape
    from neuronscope.analyses.langsteer import _activation_means
    from neuronscope.intervene import capture, clamp, compose

    means = _activation_means(summ, res, "tr")
    units = {s: u for s, u in res.units_for("tr").items() if len(u)}
    enc = tok(["Merhaba dünya"], return_tensors="pt")
    with compose(clamp(model, s, u, value=means[s][u]) for s, u in units.items()):
        got = capture(model, list(units), enc)
    for s, u in units.items():
        np.testing.assert_allclose(got[s][..., u].numpy(), np.broadcast_to(means[s][u], got[s][..., u].shape),
                                   rtol=1e-6)
    out = language_steering(model, tok, res, ["tr"], mode="activate", run=summ, heldout=tinylm_corpus("heldout"),
                            n_prompts=0)
    assert out.mode == "activate" and np.isfinite(out.loss).all()


def test_bad_inputs(tiny_lape):
    model, tok, summ, res = tiny_lape
    with pytest.raises(NeuronscopeError, match="mode must be"):
        language_steering(model, tok, res, mode="boost")
    with pytest.raises(NeuronscopeError, match="needs run="):
        language_steering(model, tok, res, ["tr"], mode="activate")
    with pytest.raises(NeuronscopeError, match="no language xx in the result"):
        language_steering(model, tok, res, ["xx"], n_prompts=0)
    few = lape(summ, "lang", top_rate=0.01)  # the paper's rate: most languages get no neuron
    empty = next(v for v in few.labels if not sum(len(u) for u in few.units_for(v).values()))
    with pytest.raises(NeuronscopeError, match="no neurons specific to"):
        language_steering(model, tok, few, [empty], n_prompts=0)
    with pytest.raises(NeuronscopeError, match="LocateResult"):
        language_steering(model, tok, {"tr": [1]})
