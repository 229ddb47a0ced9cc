"""Locate on real models: MiniLM (default suite, a subset of the bundled corpus) and, marked
slow, MiniLM, the tiny LM and multilingual-e5-small over all 2,852 documents in 20 languages."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscope.analyses.locate import label_statistics, lape, sparse_probe

SITES = "encoder.layer.0.intermediate,encoder.layer.5.intermediate"


def _subset_source(tok, n: int, max_tokens: int):
    from neuronscope.sources.text import Corpus, TextSource, load_corpus

    full = load_corpus("default")
    cut = Corpus(full.texts[:n], {k: v[:n] for k, v in full.labels.items()}, name="subset")
    return TextSource(cut, tok, batch_size=32, max_tokens=max_tokens, label_categories=full.categories())


@pytest.fixture(scope="module")
def minilm_run(minilm, tmp_path_factory):
    from neuronscope.recording import record

    model, tok = minilm
    return record(model, _subset_source(tok, 120, 32), SITES, tmp_path_factory.mktemp("minilm-locate") / "r.zarr",
                  dtype="float32", progress=False)


def test_minilm_lape_finds_language_specific_neurons(minilm_run):
    res = lape(minilm_run, "lang")
    pop = minilm_run.population()
    lab = np.asarray(pop["lang"].values)
    x = np.asarray(pop.values)
    # the per-language activation probabilities are numpy's on the stored activations
    for j, v in enumerate(res.labels):
        np.testing.assert_allclose(np.concatenate([res.score[s][:, j] for s in res.sites]),
                                   (x[lab == v] > 0).mean(0), atol=1e-12)
    assert res.info["selected"] == round(0.01 * 3072) == 31  # the paper's 1 %
    counts = res.counts()
    spec_langs = [v for v in res.labels if counts[v].sum() > 0]
    assert counts["neurons"].sum() >= 10 and len(spec_langs) >= 5
    # a neuron LAPE calls specific to a value fires on it far more often than on the others
    for s in res.sites:
        p = res.score[s]
        for u, j in zip(*np.nonzero(res.specific[s]), strict=True):
            assert p[u, j] > res.info["activation_bar"] and p[u, j] > 2 * np.median(p[u])


def test_minilm_statistics_and_language_probe(minilm_run):
    st = label_statistics(minilm_run, "lang")
    assert st.counts()["neurons"].sum() > 0
    res = sparse_probe(minilm_run, "lang", ks=[1, 4, 16], values=["ko", "zh"], per_label=400)
    pop = minilm_run.population()
    lab = np.asarray(pop["lang"].values)
    for s, curves in res.info["curves"].items():
        x = np.asarray(minilm_run.population(s).values, dtype=np.float64)
        for v, c in curves.items():
            # the streamed ranking is numpy's mean difference on the stored activations
            diff = np.abs(x[lab == v].mean(0) - x[lab != v].mean(0))
            assert c["neurons"][:16] == np.argsort(-diff, kind="stable")[:16].tolist()
            assert max(c["accuracy"]) > 0.6, (s, v, c)  # chance: 0.5


# --------------------------------------------------------------------------- the whole corpus (slow)


def _full_run(name: str, sites: str, tmp_path_factory, sample_rate: float = 0.35):
    from neuronscope.recording import record
    from neuronscope.sources.text import TextSource
    from neuronscope.specs import load_model

    model, tok = load_model(name)
    src = TextSource("default", tok, batch_size=32, max_tokens=128)
    out = tmp_path_factory.mktemp(name.replace(":", "-")) / "run.zarr"
    return record(model, src, sites, out, keep="both", sample_rate=sample_rate, progress=False), model


def _report(res, probe):
    counts = res.counts()
    per_layer = counts["neurons"].tolist()
    curves = {s: c["all"]["accuracy"] for s, c in probe.info["curves"].items()}
    print("LAPE neurons per layer:", per_layer)
    for s, acc in curves.items():
        print(s, " ".join(f"{a:.3f}" for a in acc))
    return per_layer, curves


@pytest.mark.slow
@pytest.mark.parametrize("name,sites,layers", [
    ("minilm", "encoder.layer.*.intermediate", 6),
    ("tinylm:0", "blocks.*.mlp.act", 3),
    ("e5-small", "encoder.layer.*.intermediate", 12),
])
def test_full_corpus_lape_and_language_probe(name, sites, layers, tmp_path_factory):
    run, _ = _full_run(name, sites, tmp_path_factory)
    res = lape(run, "lang")
    n = sum(run.sites.values())
    assert res.info["selected"] == round(0.01 * n)
    ks = [1, 4, 16, 64, 256]
    probe = sparse_probe(run, "lang", ks=ks, task="multiclass", rank="f", per_label=500)
    per_layer, curves = _report(res, probe)
    assert len(per_layer) == layers and sum(per_layer) > 0
    assert len({v for v in res.labels if res.counts()[v].sum()}) >= 5  # several languages have neurons
    for acc in curves.values():
        assert acc[-1] > acc[0] and acc[-1] > 0.5  # 20 languages: chance is 0.05
