from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import linregress

from neuronscope.analyses.characterize import (
    NEURON_COLUMNS,
    SITE_COLUMNS,
    characterize,
    positional_scores,
    powerlaw_exponent,
    site_summary,
    token_scores,
    top_examples,
    top_share,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.site import SiteSummaries, SummaryConfig

VOCAB = [f"tok{i}" for i in range(20)]


@dataclass
class RunData:
    """What characterize reads from a Run: real arrays, built in the test."""

    sites: dict[str, int]
    samples: dict[str, np.ndarray]
    vocab: list[str] | None
    site_summaries: dict[str, SiteSummaries]

    def summaries(self, site: str) -> SiteSummaries | None:
        return self.site_summaries.get(site)


def population(seed: int = 0):
    """Units: 0 dead, 1 positional (fires iff pos < 4), 2 token detector (token 7),
    3 coin flip, 4 dormant (|a| ~ 1e-4), 5 always on (hot)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 16, 60)
    n = int(lengths.sum())
    doc = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tok = rng.integers(0, 20, n)
    acts = np.zeros((n, 6), np.float32)
    acts[:, 0] = -0.5
    acts[:, 1] = np.where(pos < 4, 1.0, -0.2)
    acts[:, 2] = np.where(tok == 7, 5.0 + rng.random(n), rng.random(n) - 0.5)
    acts[:, 3] = np.where(rng.random(n) < 0.5, 1.0, -1.0) * rng.random(n)
    acts[:, 4] = 1e-4 * rng.standard_normal(n)
    acts[:, 5] = 2.0 + rng.random(n)
    samples = {"sample": np.arange(n), "doc": doc, "pos": pos, "token_id": tok}
    return acts.astype(np.float32), samples


def summarize(acts, samples, cfg=None):
    cfg = cfg or SummaryConfig(thresholds=(0.1, 1.0), k=8, window=3, max_pos=16, token_slots=32)
    ss = SiteSummaries.create(acts.shape[1], cfg, acts[:50])
    bounds = np.flatnonzero(np.r_[True, samples["doc"][1:] != samples["doc"][:-1]])
    cuts = [*bounds[::7], len(acts)]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        ss.update(acts[a:b], {k: v[a:b] for k, v in samples.items()})
    return ss


def test_neuron_table_closed_form():
    acts, samples = population()
    ss = summarize(acts, samples)
    run = RunData({"mlp": 6}, samples, VOCAB, {"mlp": ss})
    df = characterize(run)
    assert list(df.columns) == NEURON_COLUMNS and len(df) == 6
    np.testing.assert_allclose(df["freq"], (acts > 0).mean(0), rtol=1e-12)
    np.testing.assert_allclose(df["mean"], acts.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(df["std"], acts.astype(np.float64).std(0), rtol=1e-7, atol=1e-12)
    assert df["dead"].tolist() == [True, False, False, False, False, False]
    mean_abs = np.abs(acts.astype(np.float64)).mean(0)
    np.testing.assert_allclose(df["dormant_score"], mean_abs / mean_abs.mean(), rtol=1e-9)
    assert df["dormant"].tolist() == [False, False, False, False, True, False]
    assert df.loc[1, "positional_score"] == pytest.approx(1.0)
    assert df.loc[3, "positional_score"] < 0.2 and not df.loc[3, "positional"]
    assert df["positional"].tolist() == [False, True, False, False, False, False]
    assert df.loc[2, "token_score"] == 1.0 and df.loc[2, "top_token_id"] == 7
    assert df.loc[2, "top_token"] == "tok7"
    assert df.loc[5, "hot_rank"] == 0 and df.loc[0, "hot_rank"] == 5
    assert sorted(df["hot_rank"]) == list(range(6))


def test_magnitude_threshold_frequency():
    acts, samples = population(1)
    df = characterize({"mlp": summarize(acts, samples)}, threshold=1.0)
    np.testing.assert_allclose(df["freq"], (np.abs(acts) > 1.0).mean(0), rtol=1e-12)
    with pytest.raises(NeuronscopeError, match="recorded"):
        characterize({"mlp": summarize(acts, samples)}, threshold=0.3)


def test_site_summary_closed_form():
    acts, samples = population(2)
    ss = summarize(acts, samples)
    df = site_summary({"mlp": ss, "mlp2": ss})
    assert list(df.columns) == SITE_COLUMNS and df["site"].tolist() == ["mlp", "mlp2"]
    row = df.iloc[0]
    assert row["units"] == 6 and row["samples"] == len(acts)
    assert row["pct_active_per_token"] == pytest.approx(100 * (acts > 0).mean(1).mean())
    assert row["dead_frac"] == pytest.approx(1 / 6)
    assert row["dormant_frac"] == pytest.approx(1 / 6)
    freq = (acts > 0).mean(0)
    assert row["top20_share"] == pytest.approx(np.sort(freq)[::-1][:2].sum() / freq.sum())
    # PowerInfer's exponent: least-squares slope of log freq on log rank over the firing
    # neurons, here from scipy's own regression
    firing = np.sort(freq[freq > 0])[::-1]
    fit = linregress(np.log(np.arange(1, len(firing) + 1)), np.log(firing))
    assert row["powerlaw_exponent"] == pytest.approx(-fit.slope, rel=1e-9)
    thr = site_summary({"mlp": ss}, threshold=0.1).iloc[0]
    assert thr["pct_active_per_token"] == pytest.approx(100 * (np.abs(acts) > 0.1).mean())


def test_powerlaw_exponent_of_synthetic_power_laws():
    rng = np.random.default_rng(11)
    ranks = np.arange(1, 401)
    for alpha in (0.5, 1.0, 1.5, 2.3):
        # an exact power law, shuffled, with dead neurons: the exponent itself
        f = 0.4 * ranks**-alpha
        freq = rng.permutation(np.r_[f, np.zeros(37)])
        assert powerlaw_exponent(freq) == pytest.approx(alpha, rel=1e-9)
        # log-normal noise: scipy's least-squares fit on the rank-ordered frequencies
        noisy = f * np.exp(0.2 * rng.standard_normal(len(f)))
        ordered = np.sort(noisy)[::-1]
        fit = linregress(np.log(ranks), np.log(ordered))
        assert powerlaw_exponent(rng.permutation(noisy)) == pytest.approx(-fit.slope, rel=1e-9)
        assert abs(-fit.slope - alpha) < 0.2


def test_score_helpers_closed_form():
    ranks = np.arange(1, 101)
    assert powerlaw_exponent(0.5 * ranks**-1.5) == pytest.approx(1.5)
    assert np.isnan(powerlaw_exponent(np.array([0.3, 0, 0])))
    assert top_share(np.array([4.0, 3, 1, 1, 1, 0, 0, 0, 0, 0])) == pytest.approx(0.7)
    # position 0 always fires, position 1 never: eta^2 = 1; equal rates: 0
    np.testing.assert_allclose(positional_scores([[10, 5], [0, 5]], [10, 10]), [1.0, 0.0])
    # rates 0.8 / 0.2 at equal counts: between var 0.09, total var 0.25
    assert positional_scores([[8], [2]], [10, 10])[0] == pytest.approx(0.36)
    score, top = token_scores(np.array([[3, 3, 1, 2], [5, 4, 9, 9], [1, 1, 1, 1]]),
                              np.array([[0, 1, 2, 3], [4, 5, -1, -1], [-1] * 4]))
    np.testing.assert_allclose(score[:2], [0.5, 0.5])
    assert top.tolist() == [3, 4, -1] and np.isnan(score[2])


def test_top_examples_tokens_and_context():
    acts, samples = population(3)
    ss = summarize(acts, samples)
    run = RunData({"mlp": 6}, samples, VOCAB, {"mlp": ss})
    ex = top_examples(run, "mlp", 2, k=3)
    assert len(ex) == 3
    order = np.lexsort((samples["sample"], -acts[:, 2]))[:3]
    for e, row in zip(ex, order, strict=True):
        assert e["sample"] == row and e["activation"] == pytest.approx(acts[row, 2])
        assert e["token"] == "tok7" and e["tokens"][e["peak"]] == "tok7"
        same = np.flatnonzero((samples["doc"] == samples["doc"][row])
                              & (np.abs(samples["pos"] - samples["pos"][row]) <= 3))
        assert e["tokens"] == [VOCAB[t] for t in samples["token_id"][same]]
        np.testing.assert_allclose(e["acts"], acts[same, 2])
        assert e["peak"] == int(np.flatnonzero(same == row)[0])
    plain = top_examples({"mlp": ss}, "mlp", 2, k=1)[0]
    assert plain["token"] == "7" and plain["tokens"][plain["peak"]] == "7"
    with pytest.raises(NeuronscopeError, match="out of range"):
        top_examples(run, "mlp", 6)


def test_site_selection_errors():
    acts, samples = population(4)
    with pytest.raises(NeuronscopeError, match="matched no site"):
        characterize({"mlp": summarize(acts, samples)}, site="attn*")
    with pytest.raises(NeuronscopeError, match="no summaries"):
        characterize(RunData({"mlp": 6}, samples, None, {}))
    df = characterize({"layer.0.mlp": summarize(acts, samples)}, site="layer.*")
    assert df["top_token"].isna().all()


def test_site_globs_comma_separated_and_vocab_keyword():
    acts, samples = population(5)
    ss = summarize(acts, samples)
    sites = {"attn.0": ss, "block.1": ss, "mlp.0": ss, "mlp.1": ss, "out": ss}
    run = RunData(dict.fromkeys(sites, 6), samples, VOCAB, sites)
    df = characterize(run, site="a*,b*")
    assert df["site"].drop_duplicates().tolist() == ["attn.0", "block.1"] and len(df) == 12
    df = characterize(sites, site="mlp.1,a*")  # result in site order, not glob order
    assert df["site"].drop_duplicates().tolist() == ["attn.0", "mlp.1"]
    assert site_summary(sites, site="mlp.*, out")["site"].tolist() == ["mlp.0", "mlp.1", "out"]
    with pytest.raises(NeuronscopeError, match="'z\\*' matched no site; closest names"):
        characterize(sites, site="a*,z*")
    # a dict of summaries with the run's vocab names the top tokens like the run itself
    df = characterize({"mlp": ss}, vocab=VOCAB)
    assert df.loc[2, "top_token"] == "tok7"
    run = RunData({"mlp": 6}, samples, VOCAB, {"mlp": ss})
    assert top_examples({"mlp": ss}, "mlp", 2, k=3, samples=samples, vocab=VOCAB) == top_examples(run, "mlp", 2, k=3)


def test_recorded_run_characterize_top_examples_and_cli(minilm, small_corpus, tmp_path):
    import json as _json

    import pandas as pd
    import typer
    from tinymodels import TinyText
    from typer.testing import CliRunner

    import neuronscope as ns
    from neuronscope.cli.characterize import characterize as characterize_command

    _, tok = minilm
    cfg = {"k": 5, "window": 2, "max_pos": 64, "token_slots": 64}
    run = ns.record(TinyText(), ns.TextSource(small_corpus, tok, batch_size=8), "act",
                    out=tmp_path / "run.zarr", keep="both", dtype="float32",
                    summary_config=cfg, progress=False)
    acts = run.population().values
    df = characterize(run)
    assert len(df) == 48 and (df["site"] == "act").all()
    np.testing.assert_allclose(df["freq"], (acts > 0).mean(0), rtol=1e-12)
    np.testing.assert_allclose(df["max"], acts.max(0))
    samples, vocab = run.samples, run.vocab
    ex = top_examples(run, "act", 3)
    assert len(ex) == 5
    assert ex[0]["activation"] == pytest.approx(acts[:, 3].max())
    for e in ex:
        rows = np.flatnonzero((samples["doc"] == e["doc"]) & (np.abs(samples["pos"] - e["pos"]) <= 2))
        assert e["tokens"] == [vocab[t] for t in samples["token_id"][rows]]
        np.testing.assert_allclose(e["acts"], acts[rows, 3])
        assert e["tokens"][e["peak"]] == e["token"] == vocab[samples["token_id"][e["sample"]]]
    assert df.loc[3, "top_token"] == vocab[df.loc[3, "top_token_id"]]

    app = typer.Typer()
    app.command()(characterize_command)
    out = tmp_path / "neurons.parquet"
    res = CliRunner().invoke(app, [str(tmp_path / "run.zarr"), "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = _json.loads(res.output)
    assert doc["neurons"] == 48 and doc["sites"][0]["site"] == "act"
    assert doc["sites"][0]["samples"] == len(acts)
    back = pd.read_parquet(out)
    # the run has one label field (lang): the CLI adds its label columns (neuronscope locate)
    assert list(back.columns) == [*NEURON_COLUMNS, "top_label", "top_label_prob", "lape_entropy", "lape_labels"]
    assert len(back) == 48 and doc["label"] == "lang"
    res = CliRunner().invoke(app, [str(tmp_path / "run.zarr")])
    assert res.exit_code == 0 and "neurons per site" in res.output
    res = CliRunner().invoke(app, [str(tmp_path / "run.zarr"), "--out", str(tmp_path / "x.txt")])
    assert isinstance(res.exception, NeuronscopeError) and ".parquet or .csv" in str(res.exception)


def test_short_site_names_strip_the_shared_glob():
    from neuronscope.cli.output import short_site_names

    names = [f"encoder.layer.{i}.intermediate" for i in range(3)]
    assert short_site_names(names) == (["0", "1", "2"], "encoder.layer.*.intermediate")
    assert short_site_names(["net.act1", "net.act2"]) == (["act1", "act2"], "net.*")
    assert short_site_names(["a.x", "b.y"]) == (["a.x", "b.y"], "")
    assert short_site_names(["hidden"]) == (["hidden"], "")


def test_planted_text_network_bos_positional_token_and_dead(small_corpus, tmp_path):
    """A hand-built text model over bytes: unit 0 fires only on the first token (BOS),
    unit 1 on positions 3..7, unit 2 on the byte 'e', unit 3 never (its least negative
    values are on BOS). Each gets exactly its own label."""
    import torch
    from torch import nn

    from neuronscope.recording import record
    from neuronscope.sources.text import TextSource
    from neuronscope.testing.tinylm import ByteTokenizer

    class Planted(nn.Module):
        def __init__(self):
            super().__init__()
            self.site = nn.Identity()

        def forward(self, input_ids, attention_mask=None):
            pos = torch.arange(input_ids.shape[1])[None, :].expand_as(input_ids)
            units = [
                torch.where(pos == 0, 1.0, -1.0),
                torch.where((pos >= 3) & (pos < 8), 1.0, -1.0),
                torch.where(input_ids == ord("e"), 2.0, -1.0),
                torch.where(pos == 0, -1.0, -2.0),
            ]
            return self.site(torch.stack(units, dim=-1))

    src = TextSource(small_corpus, ByteTokenizer(), batch_size=8, max_tokens=32)
    run = record(Planted(), src, "site", out=tmp_path / "p.zarr", keep="summaries", progress=False)
    df = characterize(run).set_index("unit")
    assert df["bos_detector"].tolist() == [True, False, False, False]
    assert df["positional"].tolist() == [False, True, False, False]
    assert df["token_detector"].tolist() == [False, False, True, False]
    assert df["dead"].tolist() == [False, False, False, True]
    assert df.loc[0, "bos_score"] == 1.0 and df.loc[0, "positional_score"] == pytest.approx(1.0)
    assert df.loc[1, "bos_score"] == 0.0 and df.loc[2, "top_token"] == ByteTokenizer().convert_ids_to_tokens(ord("e"))
    assert df.loc[0, "token_score"] == 1.0 and df.loc[2, "token_score"] == 1.0
    assert np.isnan(df.loc[3, "token_score"]) and df.loc[3, "top_token"] == "" and df.loc[3, "top_token_id"] == -1
    assert np.isnan(df.loc[3, "bos_score"])


def test_bos_scores_closed_form():
    from neuronscope.analyses.characterize import bos_scores

    n = np.array([10, 10, 10, 5])
    count = np.array([[10, 2, 0, 5], [0, 2, 0, 5], [0, 2, 0, 5], [0, 2, 0, 5]])
    share, rate = bos_scores(count, n)
    np.testing.assert_allclose(share[[0, 1, 3]], [1.0, 0.25, 0.25])
    assert np.isnan(share[2])
    np.testing.assert_allclose(rate, [1.0, 0.2, 0.0, 0.5])


def test_top_examples_name_the_line_of_their_document(minilm, tmp_path):
    """With blank lines in the corpus file, an example's ``doc`` is its line number and its
    context tokens are that line's tokens."""
    from tinymodels import TinyText

    from neuronscope.recording import record
    from neuronscope.sources.text import TextSource

    lines = ["", "the cat sat on the mat", "", "", "dogs bark at night", "a quiet evening sky", ""]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    tok = minilm[1]
    run = record(TinyText(), TextSource(path, tok, batch_size=2), "act", out=tmp_path / "r.zarr", keep="both",
                 progress=False)
    for unit in range(5):
        for ex in top_examples(run, "act", unit, k=8):
            assert ex["doc"] in (1, 4, 5)
            want = tok.convert_ids_to_tokens(tok(lines[ex["doc"]])["input_ids"])
            assert want[ex["pos"]] == ex["token"]
            assert ex["tokens"] == want[max(0, ex["pos"] - 8): ex["pos"] + 9]
