"""The atlas's label pages, badges, per-label firing bars and vocabulary projections, rendered by
headless Chromium; label values are hostile strings and must stay text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from atlas_browser import page_url, parse_dom

from neuronscope.atlas.build import build_atlas

sys.path.insert(0, str(Path(__file__).parents[1] / "analyses"))
from locate_models import L_AND_M, planted_inputs, record_planted  # noqa: E402

HOSTILE_LABELS = {
    "L": "<script>document.title='pwned'</script>",
    "M": "<img src=x onerror=\"document.title='pwned'\">",
    "N": "N & <b id=injected>",
    "O": "O",
}


@pytest.fixture(scope="module")
def labelled_atlas(tmp_path_factory):
    from neuronscope.analyses.locate import lape, sparse_probe
    from neuronscope.store import open_run

    tmp = tmp_path_factory.mktemp("labels-atlas")
    _, labels = planted_inputs()
    run = record_planted(tmp, labels=[HOSTILE_LABELS[v] for v in labels])
    lape(run, "lang", top_rate=0.07).save(run)
    sparse_probe(run, "lang", ks=[1, 2, 4]).save(run)
    run = open_run(run.path)
    return run, build_atlas(run, tmp / "atlas", examples=2)


def _assert_text_only(root, html):
    assert "pwned" not in root.find(tag="title").text
    assert not root.find_all(id="injected") and "data-pwned" not in html
    assert not [n for n in root.iter() if n.tag in ("img", "b")]


def test_labels_page_counts_and_curves(labelled_atlas, chromium):
    run, index = labelled_atlas
    html = chromium.dump_dom(page_url(index, "labels", "lang"))
    root = parse_dom(html)
    assert root.find(tag="body").attrs.get("data-ready") == "1"
    tables = {t.attrs["data-method"]: t for t in root.find_all(tag="table", cls="labelcounts")}
    assert set(tables) == {"lape", "probe"}
    cats = run.label_categories["lang"]
    rows = {r.find_all(tag="td")[0].text: r.find_all(tag="td")[1].text for r in tables["lape"].find_all(tag="tr")[1:]}
    # LAPE (top 7 %): unit 0 specific to L, unit 1 to L and M
    assert rows[HOSTILE_LABELS["L"]] == "2" and rows[HOSTILE_LABELS["M"]] == "1" and rows["O"] == "0"
    assert rows["any value"] == "2 of 32"
    assert set(rows) == {*cats, "any value"}
    curves = root.find_all(tag="svg", cls="curves")
    assert len(curves) == 1 and len(curves[0].find_all(tag="polyline")) == len(cats) + 1
    index_root = chromium.dom(page_url(index))
    assert [a.text for a in index_root.find(id="labels").find_all(tag="a")] == ["lang"]
    _assert_text_only(root, html)


def test_neuron_page_badges_bars_and_no_injection(labelled_atlas, chromium):
    run, index = labelled_atlas
    html = chromium.dump_dom(page_url(index, "act", L_AND_M))
    root = parse_dom(html)
    badges = [b.text for b in root.find(id="badges").find_all(tag="span", cls="badge")]
    lm = sorted([HOSTILE_LABELS["L"], HOSTILE_LABELS["M"]])
    assert f"specific to: {', '.join(lm)} (lang, LAPE)" in badges
    bars = root.find(id="label-firing-lang").find_all(tag="rect")
    cats = run.label_categories["lang"]
    assert len(bars) == len(cats)
    pop = run.population()
    x, lab = np.asarray(pop.values), np.asarray(pop["lang"].values)
    for rect, v in zip(bars, cats, strict=True):
        title = rect.find(tag="title").text
        assert title.startswith(v + ": ")
        assert float(title.rsplit(": ", 1)[1]) == pytest.approx((x[lab == v, L_AND_M] > 0).mean(), abs=5e-3)
    _assert_text_only(root, html)
    plain = parse_dom(chromium.dump_dom(page_url(index, "act", 5)))
    assert not plain.find_all(id="badges")  # a random unit is specific to nothing


def test_vocab_projection_on_tiny_lm_neuron_pages(tmp_path, chromium):
    from neuronscope.analyses.locate import (
        neuron_logits,
        save_vocab_projection,
        token_counts,
        vocab_projection,
    )
    from neuronscope.recording import record
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.specs import load_model
    from neuronscope.store import open_run

    model, tok = load_model("tinylm:0")
    src = TextSource(Corpus(["hello there", "hallo daar", "hola amigo"], {"lang": ["en", "nl", "es"]}), tok)
    run = record(model, src, "blocks.1.mlp.act", tmp_path / "tiny.zarr", keep="summaries", progress=False)
    save_vocab_projection(run, vocab_projection(model, "blocks.1.mlp.act", token_counts=token_counts(run)))
    index = build_atlas(open_run(run.path), tmp_path / "atlas", examples=2)
    root = chromium.dom(page_url(index, "blocks.1.mlp.act", 3))
    sec = root.find(id="vocab")
    promoted = [li.find(tag="span").text for li in sec.find_all(tag="ol")[0].find_all(tag="li")]
    c = neuron_logits(model, "blocks.1.mlp.act", 3)
    vocab = run.vocab
    assert promoted == [vocab[i] for i in np.argsort(-c, kind="stable")[:8]]
