"""``steer --deactivate/--activate`` (language steering), ``ablate --path`` and the ``--save``
options of ``ablate`` / ``steer``: the CLI gives the API's numbers and stores them in the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neuronscope.cli import app, main

runner = CliRunner()


def _json(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lang_run(tmp_path_factory, one_thread) -> Path:
    """``neuronscope record`` of the tiny LM over 12 training documents per language."""
    from neuronscope.testing.tinylm import tinylm_corpus

    d = tmp_path_factory.mktemp("langrun")
    train = tinylm_corpus("train")
    seen: dict[str, int] = {}
    lines = []
    for text, lang in zip(train.texts, train.labels["lang"], strict=True):
        if seen.get(str(lang), 0) < 12:
            seen[str(lang)] = seen.get(str(lang), 0) + 1
            lines.append(json.dumps({"text": text, "lang": str(lang)}, ensure_ascii=False))
    corpus = d / "train12.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _json("record", "--model", "tinylm:0", "--corpus", str(corpus), "--sites", "blocks.*.mlp.act", "--keep",
          "summaries", "--max-tokens", "64", "--out", str(d / "run"), "--no-progress")
    return d / "run"


def test_steer_deactivate_equals_the_api_and_saves_into_the_run(lang_run: Path) -> None:
    from neuronscope.analyses.langsteer import language_steering
    from neuronscope.analyses.locate import lape
    from neuronscope.specs import load_model
    from neuronscope.store import open_run

    out = _json("steer", "tinylm:0", "--deactivate", "ko,tr", "--lape-run", str(lang_run), "--top-rate", "0.1",
                "--prompts", "2", "--new-tokens", "8", "--save", str(lang_run))
    model, tok = load_model("tinylm:0")
    run = open_run(lang_run)
    res = lape(run, "lang", top_rate=0.1)
    api = language_steering(model, tok, res, ["ko", "tr"], n_prompts=2, max_new_tokens=8, batch_size=8, max_tokens=64)
    assert out["steered"] == ["ko", "tr"] and out["mode"] == "deactivate"
    assert out["lape"]["selected"] == res.info["selected"]
    for i, a in enumerate(api.steered):
        assert out["neurons"][a] == api.neurons[a] > 0
        for j, lang in enumerate(api.languages):
            got = out["results"][a][lang]
            assert got["loss_change"] == pytest.approx(api.loss_change[i, j], abs=1e-12)
            assert got["prob"] == pytest.approx(api.prob[i, j], abs=1e-12)
    saved = run.extras(out["saved"]["extras"])
    assert out["saved"]["extras"] == "langsteer-deactivate"
    np.testing.assert_allclose(saved["arrays"]["loss_change"], api.loss_change, atol=1e-12)
    assert saved["attrs"]["steered"] == ["ko", "tr"] and saved["attrs"]["tables"][0]["rows"][0][0] == "ko"
    # the atlas gets a page: the loss-change / probability / share heatmaps and the summary table
    from neuronscope.atlas.build import collect_atlas_data

    page = next(x for x in collect_atlas_data(run, examples=2)["extras"] if x["name"] == "langsteer-deactivate")
    titles = [h["title"] for h in page["heatmaps"]]
    assert any(t.startswith("held-out loss change") for t in titles) and len(titles) >= 3
    loss = next(h for h in page["heatmaps"] if h["title"].startswith("held-out loss change"))
    assert loss["rows"] == ["ko", "tr"] and loss["cols"] == api.languages
    np.testing.assert_allclose(loss["matrix"], api.loss_change)
    assert [r[0] for r in page["tables"][0]["rows"]] == ["ko", "tr"]
    # the human-readable table names every steered language
    res = runner.invoke(app, ["steer", "tinylm:0", "--activate", "tr", "--lape-run", str(lang_run), "--top-rate",
                              "0.1", "--prompts", "0"])
    assert res.exit_code == 0 and "activate" in res.output and "tr" in res.output, res.output


def _one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_steer_language_errors(lang_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error_line(["steer", "tinylm:0", "--deactivate", "xx", "--lape-run", str(lang_run)], capsys)
    assert "--deactivate: no language xx in the run's 'lang' label; values: bn, de" in line
    line = _one_error_line(["steer", "tinylm:0", "--activate", "tr", "--lape-run", str(lang_run), "--label", "topic"],
                           capsys)
    assert "'topic'" in line


def test_ablate_path_and_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import neuronscope as ns
    from neuronscope.analyses.attribute import influential_path
    from neuronscope.analyses.targets import output_unit
    from neuronscope.specs import load_model
    from neuronscope.testing.digits import digits_data

    model, _ = load_model("digits-mlp:0")
    x, _y = digits_data("all", "mlp")
    src = ns.TensorSource(x[:24], batch_size=8)
    run = ns.record(model, src, "act*", tmp_path / "run", keep="summaries", progress=False)
    out = _json("ablate", "digits-mlp:0", "--site", "act*", "--path", "--target", "unit:3", "--docs", "24",
                "--save", str(run.path))
    api = influential_path(model, "act*", output_unit(3), src)
    assert out["sites"] == api.sites and out["units"] == api.units
    np.testing.assert_allclose(out["influence"], api.influence, rtol=1e-9)
    saved = run.extras(out["saved"]["extras"])
    assert [r[2] for r in saved["attrs"]["tables"][0]["rows"]] == api.units
    eff = _json("ablate", "digits-mlp:0", "--site", "act2", "--units", "0,1", "--cumulative", "--target", "unit:3",
                "--docs", "24", "--save", str(run.path))
    assert eff["saved"]["extras"] == "ablate-act2"
    np.testing.assert_allclose(run.extras("ablate-act2")["arrays"]["effect"], eff["effect"])
    line = _one_error_line(["ablate", "digits-mlp:0", "--site", "act1", "--path", "--target", "unit:3"], capsys)
    assert "--path needs a --site glob matching two or more layers; 'act1' matches 1" in line
