"""MiniLM on the bundled corpus: the per-neuron table covers all 9,216 FFN neurons and agrees
with the stored activations (the dead neurons are really never active)."""

from __future__ import annotations

import numpy as np
import pytest

import neuronscope as ns
from neuronscope.sources.models import BERT_FFN_SITES
from neuronscope.sources.text import load_corpus


@pytest.fixture(scope="module")
def minilm_run(minilm, tmp_path_factory):
    model, tok = minilm
    corpus = load_corpus("default")  # the first 1,000 of its 2,852 documents (the demo runs all)
    corpus.texts = corpus.texts[:1000]
    corpus.labels = {k: v[:1000] for k, v in corpus.labels.items()}
    source = ns.TextSource(corpus, tok, batch_size=64, max_tokens=64)
    out = tmp_path_factory.mktemp("minilm") / "run.zarr"
    return ns.record(model, source, BERT_FFN_SITES, out=out, keep="both", dtype="float16", progress=False)


def test_table_covers_every_neuron(minilm_run):
    table = ns.characterize(minilm_run)
    assert len(table) == 9216
    assert table.groupby("site").size().to_dict() == {f"encoder.layer.{i}.intermediate": 1536 for i in range(6)}
    assert table["freq"].between(0, 1).all()
    assert (table["hot_rank"].groupby(table["site"]).apply(lambda r: sorted(r) == list(range(1536)))).all()
    sites = ns.site_summary(minilm_run)
    assert len(sites) == 6 and sites["pct_active_per_token"].between(0, 100).all()
    assert (sites["samples"] == minilm_run.n_samples).all()


def test_dead_neurons_never_active_in_stored_activations(minilm_run):
    table = ns.characterize(minilm_run)
    for site in minilm_run.sites:
        acts = minilm_run.population(site).values.astype(np.float32)
        rows = table[table.site == site].sort_values("unit")
        stored_max = acts.max(axis=0)
        dead = rows["dead"].to_numpy()
        assert (stored_max[dead] <= 0).all()
        # firing frequency equals the stored count of a > 0 up to fp16 underflow of tiny values
        stored_freq = (acts > 0).mean(axis=0)
        assert np.abs(stored_freq - rows["freq"].to_numpy()).max() < 1e-3
        # every neuron the summaries saw firing fired in the float32 pass (freq > 0 ⇒ not dead)
        assert ((rows["freq"] > 0).to_numpy() == ~dead).all()
        # a dead neuron has no token score (its top-k are its least negative values, on [CLS])
        assert rows["token_score"][dead].isna().all() and (rows["top_token"][dead] == "").all()
        assert not rows["token_detector"][dead].any()
    assert table["dead"].sum() > 0  # the check above is not vacuous


def test_top_example_is_the_stored_maximum(minilm_run):
    site = "encoder.layer.3.intermediate"
    pop = minilm_run.population(site)
    acts = pop.values
    unit = int(np.argmax(acts.max(axis=0)))
    ex = ns.top_examples(minilm_run, site, unit)
    row = int(np.argmax(acts[:, unit]))
    assert ex[0]["activation"] == pytest.approx(float(acts[row, unit]), rel=1e-3)
    assert ex[0]["doc"] == int(pop["doc"].values[row]) and ex[0]["pos"] == int(pop["pos"].values[row])
    assert ex[0]["tokens"][ex[0]["peak"]] == pop["token"].values[row]
