"""``neuronscope attribute`` / ``ablate`` / ``steer``: the CLI gives the API's numbers, saves
importance into a run, plots, and fails with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neuronscope.cli import app, main

runner = CliRunner()
SITE = "encoder.layer.2.intermediate"


def _json(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


@pytest.fixture(scope="module")
def source(minilm, small_corpus):
    from neuronscope.sources.text import Corpus, TextSource, load_corpus

    _, tok = minilm
    full = load_corpus(small_corpus)
    cut = Corpus(full.texts[:6], {k: v[:6] for k, v in full.labels.items()}, name=full.name)
    return TextSource(cut, tok, batch_size=4, max_tokens=24, label_categories=full.categories())


def test_attribute_equals_the_api_and_saves_into_a_run(minilm, small_corpus, source, tmp_path: Path) -> None:
    import neuronscope as ns
    from neuronscope.analyses.attribute import conductance_over
    from neuronscope.analyses.targets import embedding_cosine

    model, _ = minilm
    run = ns.record(model, source, SITE, tmp_path / "run.zarr", keep="summaries", progress=False)
    args = ["attribute", "minilm", "--site", SITE, "--corpus", str(small_corpus), "--docs", "6", "--steps", "4",
            "--batch-size", "4", "--max-tokens", "24", "--label", "lang", "--top", "5", "--save", str(run.path)]
    out = _json(*args)
    api = conductance_over(model, source, SITE, embedding_cosine(), steps=4, label="lang")[SITE].result()
    top = out["sites"][SITE]["top"]
    order = np.argsort(-api["mean_abs"], kind="stable")[:5]
    assert [r["unit"] for r in top] == order.tolist()
    np.testing.assert_allclose([r["mean_abs"] for r in top], api["mean_abs"][order], rtol=1e-9)
    assert out["target"] == {"target": "embedding_cosine", "reference": "clean"} and out["documents"] == 6
    saved = ns.open_run(run.path).extras("conductance")
    np.testing.assert_allclose(saved["arrays"][f"{SITE}.mean_abs"], api["mean_abs"], rtol=1e-12)
    assert saved["arrays"][f"{SITE}.label_mean_abs"].shape == (len(source.label_categories["lang"]), 1536)
    assert saved["attrs"]["steps"] == 4 and saved["attrs"]["sites"] == [SITE]
    table = runner.invoke(app, args[:-2])
    assert table.exit_code == 0 and "completeness" in table.output and str(order[0]) in table.output

    # ablate --top reads that ranking; effects equal the API's
    from neuronscope.analyses.attribute import ablation_effects

    res = _json("ablate", "minilm", "--site", SITE, "--top", "3", "--importance", str(run.path), "--corpus",
                str(small_corpus), "--docs", "6", "--batch-size", "4", "--max-tokens", "24")
    assert res["units"] == order[:3].tolist()
    api_eff = ablation_effects(model, SITE, order[:3].tolist(), embedding_cosine(), source)
    np.testing.assert_allclose(res["effect"], api_eff.effect, atol=1e-7)
    res = _json("ablate", "minilm", "--site", SITE, "--units", "4,9", "--how", "mean", "--means-run", str(run.path),
                "--cumulative", "--corpus", str(small_corpus), "--docs", "6", "--batch-size", "4", "--max-tokens", "24")
    api_eff = ablation_effects(model, SITE, [4, 9], embedding_cosine(), source, how="mean", run=run, cumulative=True)
    np.testing.assert_allclose(res["effect"], api_eff.effect, atol=1e-7)
    assert res["cumulative"] and res["how"] == "mean"


def test_attribute_on_a_digits_net_is_complete_at_the_last_hidden_layer() -> None:
    out = _json("attribute", "digits-mlp:0", "--target", "unit:3", "--docs", "24", "--steps", "30")
    assert set(out["sites"]) == {"act1", "act2"}
    # act2 feeds the linear readout only: Σ cond = F(x) − F(0) for any steps
    assert out["sites"]["act2"]["completeness"]["relative"] < 1e-5
    assert out["sites"]["act1"]["completeness"]["relative"] < 0.02


def test_steer_sweep_and_plot(small_corpus, tmp_path: Path) -> None:
    import neuronscope as ns

    plot = tmp_path / "curve.png"
    run = ns.record(torch.nn.Sequential(torch.nn.Linear(2, 3)), ns.TensorSource(np.ones((4, 2), np.float32)), "0",
                    tmp_path / "run", keep="summaries", progress=False)
    out = _json("steer", "minilm", "--site", SITE, "--label", "lang", "--positive", "tr", "--negative", "es",
                "--coefficients", "-4,0,4", "--corpus", str(small_corpus), "--docs", "4", "--plot", str(plot),
                "--save", str(run.path))
    saved = run.extras(out["saved"]["extras"])  # the curve page of the atlas
    assert out["saved"]["extras"] == f"steer-{SITE}" and saved["attrs"]["kind"] == "steering_curve"
    np.testing.assert_array_equal(saved["arrays"]["mean"], out["mean"])
    assert saved["attrs"]["clean"] == out["clean"]
    assert out["coefficients"] == [-4.0, 0.0, 4.0] and out["mean"][1] == pytest.approx(1.0, abs=1e-6)
    assert out["mean"][0] < 1.0 and out["mean"][2] < 1.0
    assert out["vector"]["n_positive"] > 0 and out["vector"]["norm"] > 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("I love this.\nWhat a great day.\n")
    neg.write_text("I hate this.\nWhat a terrible day.\n")
    res = runner.invoke(app, ["steer", "minilm", "--site", SITE, "--positive", str(pos), "--negative", str(neg),
                              "--coefficients", "0,1", "--corpus", str(small_corpus), "--docs", "2",
                              "--positions", "last"])
    assert res.exit_code == 0 and "steering" in res.output, res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["ablate", "minilm", "--site", SITE, "--units", "3,1536", "--docs", "2"],
         "unit 1536 is out of range for site 'encoder.layer.2.intermediate' with 1536 units; use indices 0..1535"),
        (["ablate", "minilm", "--site", "encoder.nothing", "--units", "3", "--docs", "2"],
         "site pattern 'encoder.nothing' matched no site among the model's modules"),
        (["attribute", "minilm", "--site", SITE, "--target", "logit:hello", "--docs", "2"],
         "target logit('hello') needs a model with an output vocabulary; BertModel has none"),
        (["ablate", "minilm", "--site", SITE, "--units", "3", "--how", "mean"],
         "--how mean needs --means-run RUN"),
        (["attribute", "digits-mlp:0", "--docs", "2"], "tensor models need --target unit:INDEX"),
        (["steer", "minilm", "--site", SITE, "--positive", "nope.txt", "--negative", "nada.txt", "--docs", "2"],
         "nope.txt is not a file"),
        (["attribute", "minilm", "--target", "bogus"], "unknown target 'bogus'; use one of cosine, loss"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"error: {message}"), err
    assert torch.is_grad_enabled()
