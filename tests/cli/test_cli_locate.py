"""``neuronscope locate``: the API's answers per site, stored in the run, and one-line errors;
``neuronscope characterize`` gains the label columns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from neuronscope.cli import app, main

sys.path.insert(0, str(Path(__file__).parents[1] / "analyses"))
from locate_models import L_AND_M, ONLY_L, record_planted  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return record_planted(tmp_path_factory.mktemp("cli-locate"))


def _json(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


def test_locate_lape_equals_the_api_and_is_saved(run):
    from neuronscope.analyses.locate import lape, stored_results
    from neuronscope.store import open_run

    out = _json("locate", str(run.path), "--by", "lape", "--top-rate", "0.07")
    api = lape(run, "lang", top_rate=0.07)
    assert out["specific"]["act"] == {"L": [ONLY_L, L_AND_M], "M": [L_AND_M], "N": [], "O": []}
    assert out["specific"]["act"] == api.to_dict()["specific"]["act"] and out["saved"] == "locate-lang-lape"
    (back,) = [r for r in stored_results(open_run(run.path)) if r.method == "lape"]
    np.testing.assert_array_equal(back.specific["act"], api.specific["act"])
    table = runner.invoke(app, ["locate", str(run.path), "--top-rate", "0.07", "--no-save"])
    assert table.exit_code == 0 and "LAPE: neurons specific to each lang value" in table.output


def test_locate_stats_probe_diffmeans(run):
    st = _json("locate", str(run.path), "--by", "stats", "--no-save")
    assert st["specific"]["act"]["L"] == [ONLY_L, L_AND_M] and st["info"]["test"] == "t"
    pr = _json("locate", str(run.path), "--by", "probe", "--ks", "1,2", "--values", "L,M")
    assert pr["info"]["curves"]["act"]["L"]["neurons"][0] == ONLY_L
    assert set(pr["info"]["curves"]["act"]) == {"L", "M"}
    table = runner.invoke(app, ["locate", str(run.path), "--by", "probe", "--ks", "1,2", "--values", "L", "--no-save"])
    assert table.exit_code == 0 and "accuracy by k" in table.output and "k = 1" in table.output
    dm = _json("locate", str(run.path), "--by", "diffmeans")
    assert dm["info"]["evaluated"] and set(dm["info"]["accuracy"]["act"]) == {"L", "M", "N", "O"}


def test_locate_errors_are_one_line(run, capsys):
    for args, msg in ((["--by", "magic"], "unknown method"),
                      (["--label", "topic"], "no per-label firing for label 'topic'"),
                      (["--by", "probe", "--ks", "1,64"], "k=64 is larger than site"),
                      (["--by", "probe", "--ks", "a,b"], "--ks must be comma-separated")):
        with pytest.raises(SystemExit) as e:
            main(["locate", str(run.path), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_characterize_gains_label_columns(run, tmp_path):
    out = tmp_path / "neurons.csv"
    doc = _json("characterize", str(run.path), "--out", str(out))
    # LAPE keeps the lowest-entropy 1 % of the neurons: round(0.32) = 0 of these 32
    assert doc["label"] == "lang" and doc["label_specific"] == {"act": 0}
    df = pd.read_csv(out, keep_default_na=False)
    assert {"top_label", "top_label_prob", "lape_entropy", "lape_labels"} <= set(df.columns)
    assert df.loc[ONLY_L, "top_label"] == "L" and df.loc[ONLY_L, "top_label_prob"] > 0.99
    assert df.loc[ONLY_L, "lape_entropy"] < 0.05 and (df["lape_labels"] == "").all()
    doc = _json("characterize", str(run.path), "--label", "none", "--out", str(out))
    assert "label" not in doc and "lape_labels" not in pd.read_csv(out).columns


def test_locate_vocab_on_the_tiny_lm(tmp_path):
    from neuronscope.analyses.locate import load_vocab_projection, neuron_logits
    from neuronscope.recording import record
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.specs import load_model
    from neuronscope.store import open_run

    model, tok = load_model("tinylm:0")
    src = TextSource(Corpus(["hello there", "hallo daar", "hola"], {"lang": ["en", "nl", "es"]}), tok)
    r = record(model, src, "blocks.*.mlp.act", tmp_path / "tiny.zarr", keep="summaries", progress=False)
    out = _json("locate", str(r.path), "--by", "vocab", "--top", "3")
    assert set(out["sites"]) == {f"blocks.{i}.mlp.act" for i in range(3)}
    proj = load_vocab_projection(open_run(r.path))["blocks.1.mlp.act"]
    c = neuron_logits(model, "blocks.1.mlp.act", 7)
    assert proj.top_ids[7].tolist() == np.argsort(-c, kind="stable")[:3].tolist()


def test_record_with_a_labels_file_then_locate_a_summaries_only_run(tmp_path):
    """``record --labels FILE --keep summaries``, then ``locate --by probe``: the fits read the
    selected neurons in a second pass (the run's model over its corpus and labels file)."""
    from neuronscope.analyses.locate import sparse_probe
    from neuronscope.sources.labels import LabeledSource
    from neuronscope.sources.text import TextSource
    from neuronscope.specs import load_model
    from neuronscope.store import open_run

    texts = [("the cat sat on the mat " if i % 2 else "1234 5678 90 ") + str(i) for i in range(40)]
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(texts) + "\n")
    labels = tmp_path / "topic.txt"
    labels.write_text("\n".join("words" if i % 2 else "digits" for i in range(40)) + "\n")
    out = tmp_path / "run.zarr"
    info = _json("record", "--model", "tinylm:0", "--corpus", str(corpus), "--labels", str(labels), "--sites",
                 "blocks.2.mlp.act", "--keep", "summaries", "--out", str(out), "--batch-size", "8")
    assert info["keep"] == "summaries" and info["source"]["labels"] == {"topic": ["digits", "words"]}
    res = _json("locate", str(out), "--label", "topic", "--by", "probe", "--ks", "1,2", "--per-label", "300")
    curves = res["info"]["curves"]["blocks.2.mlp.act"]
    assert set(curves) == {"digits", "words"} and max(curves["digits"]["accuracy"]) > 0.75
    model, tok = load_model("tinylm:0")
    src = LabeledSource(TextSource(str(corpus), tok, batch_size=8), labels)
    api = sparse_probe(open_run(out), "topic", ks=[1, 2], per_label=300, model=model,
                       source=src)
    assert api.info["curves"]["blocks.2.mlp.act"] == curves
    bad = runner.invoke(app, ["record", "--model", "tinylm:0", "--corpus", str(corpus), "--labels",
                              str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.zarr")])
    assert bad.exit_code != 0 and "does not exist" in str(bad.exception)
