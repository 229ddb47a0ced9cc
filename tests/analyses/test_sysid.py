"""System identification on real trained digit networks (the tRSA paper's layer design)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from neuronscope.analyses import compare
from neuronscope.analyses.sysid import (
    layer_design,
    plot_sysid,
    recovery_table,
    simulate_brain,
    sysid,
    sysid_scores,
    sysid_sweep,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.testing.digits import digits_data, train_digits


@pytest.fixture(scope="module")
def acts():
    x = torch.from_numpy(digits_data("all")[0])
    out = {}
    for s in (0, 1, 2):
        m = train_digits("mlp", s)
        with torch.no_grad():
            h1 = m.act1(m.fc1(x))
            h2 = m.act2(m.fc2(h1))
            out[f"seed{s}"] = {"act1": h1.numpy(), "act2": h2.numpy(), "out": m.out(h2).numpy()}
    return out


def _cka_enc():
    return {
        "linear_cka": lambda m, b: compare.linear_cka(m, b),
        "encoding": lambda m, b: float(np.nanmean(compare.encoding_score(m, b, inner_cv=None))),
    }


def test_high_snr_many_stimuli_identifies_the_true_layer(acts):
    cands, brain, truth = layer_design(acts, "seed0", "act1")
    assert set(cands) == {"act1", "act2", "out"} and truth == "act1"
    assert all(len(v) == 2 for v in cands.values())  # the instances are the other seeds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = sysid(cands, truth, snr=10.0, n_stimuli=300, n_neurons=30, draws=4, brain=brain)
    assert list(table["metric"]) == ["linear_cka", "rsa", "trsa", "encoding", "procrustes"]
    t = table.set_index("metric")
    assert t.loc["linear_cka", "recovery"] == 1.0 and t.loc["encoding", "recovery"] == 1.0
    assert (t.loc[["linear_cka", "encoding"], "margin"] > 0).all()
    assert t["chance"].iloc[0] == pytest.approx(1 / 3)
    assert (t["snr"] == 10.0).all() and (t["n_stimuli"] == 300).all()


def test_heavy_noise_and_few_stimuli_lower_recovery(acts):
    kw = dict(metrics=_cka_enc(), n_neurons=10, draws=16, seed=1)
    clean, noisy = dict(snr=10.0, n_stimuli=300), dict(snr=0.03, n_stimuli=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # truth = first hidden layer: encoding loses it under noise
        c, b, t = layer_design(acts, "seed0", "act1")
        hi = sysid(c, t, brain=b, **clean, **kw).set_index("metric")["recovery"]
        lo = sysid(c, t, brain=b, **noisy, **kw).set_index("metric")["recovery"]
        assert hi["encoding"] == 1.0 and lo["encoding"] <= 0.5
        # truth = the logits: linear CKA loses it under noise (noise favours flat spectra)
        c, b, t = layer_design(acts, "seed0", "out")
        hi = sysid(c, t, brain=b, **clean, **kw).set_index("metric")["recovery"]
        lo = sysid(c, t, brain=b, **noisy, **kw).set_index("metric")["recovery"]
    assert hi["linear_cka"] == 1.0 and lo["linear_cka"] <= 0.3


def test_simulate_brain_snr_subsampling_and_mixing():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 8)) * np.arange(1, 9)
    clean = simulate_brain(a, 5, np.inf, False, np.random.default_rng(3))
    cols = [np.flatnonzero(np.isclose(a[:50], clean[:50, [j]]).all(0))[0] for j in range(5)]
    assert len(set(cols)) == 5 and cols == sorted(cols)
    noisy = simulate_brain(a, None, 4.0, False, np.random.default_rng(3))
    ratio = (noisy - a).var(0) / a.var(0)
    np.testing.assert_allclose(ratio, 0.25, rtol=0.05)  # noise variance = signal variance / snr
    mixed = simulate_brain(a, None, np.inf, True, np.random.default_rng(3))
    assert np.linalg.matrix_rank(mixed) == 8 and not np.allclose(np.abs(mixed), np.abs(a), atol=1e-3)
    with pytest.raises(NeuronscopeError):
        simulate_brain(a, 3, 0.0, False, rng)


def test_recovery_table_known_answer_and_ties():
    scores = pd.DataFrame({
        "draw": [0, 0, 0, 1, 1, 1],
        "metric": ["m"] * 6,
        "candidate": ["a", "b", "c"] * 2,
        "score": [0.9, 0.5, 0.1, 0.7, 0.7, 0.2],
    })
    vals = scores.pivot(index="draw", columns="candidate", values="score").to_numpy()
    ranks = (vals[:, None, :] >= vals[:, :, None]).sum(-1)
    scores["rank"] = ranks.ravel()
    scores["is_true"] = scores["candidate"] == "a"
    t = recovery_table(scores).iloc[0]
    assert t["recovery"] == 0.5  # the tie in draw 1 is not a recovery
    assert t["mean_rank"] == 1.5 and t["chance"] == pytest.approx(1 / 3)
    assert t["margin"] == pytest.approx(((0.9 - 0.5) + 0.0) / 2)


def test_scores_rank_and_instances(acts):
    metrics = {"neg_dist": lambda m, b: -abs(m.mean() - b.mean())}
    cands = {"a": acts["seed1"]["act1"], "b": [acts["seed1"]["out"], acts["seed2"]["out"]]}
    s = sysid_scores(cands, "a", metrics, snr=np.inf, n_stimuli=50, n_neurons=None, draws=2,
                     brain=acts["seed1"]["act1"])
    assert len(s) == 4 and set(s["rank"]) == {1, 2}
    assert (s[s["candidate"] == "a"]["score"].abs() < 1e-6).all()
    with pytest.raises(NeuronscopeError, match="not among"):
        sysid_scores(cands, "zzz", metrics)
    with pytest.raises(NeuronscopeError, match="n_stimuli"):
        sysid_scores(cands, "a", metrics, n_stimuli=10**6)


def test_sweep_and_plot(acts, tmp_path):
    c, b, t = layer_design(acts, "seed0", "act2")
    metrics = {"linear_cka": compare.linear_cka}
    sweep = sysid_sweep(c, t, snrs=(0.1, 1.0, 10.0), n_stimuli=(40,), metrics=metrics, draws=3,
                        n_neurons=20, brain=b)
    assert sorted(sweep["snr"]) == [0.1, 1.0, 10.0]
    fig = plot_sysid(sweep, path=tmp_path / "sysid.png")
    assert (tmp_path / "sysid.png").stat().st_size > 1000
    assert len(fig.axes[0].lines) == 2  # one metric + chance
    assert fig.axes[0].get_xscale() == "log"


def test_sysid_cli_json(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from neuronscope.cli.match import sysid as sysid_command

    app = typer.Typer()
    app.command("sysid")(sysid_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name
    res = CliRunner().invoke(app, [
        "sysid", "--models", "digits-mlp:0", "digits-mlp:1", "digits-mlp:2", "--metrics", "linear_cka",
        "--snr", "10", "--snr", "0.03", "--n-stimuli", "200", "--n-neurons", "20", "--draws", "3",
        "--plot", str(tmp_path / "s.png"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["truth"] == "act1" and out["candidates"] == ["act1", "act2", "out"]
    rec = {r["snr"]: r["recovery"] for r in out["recovery"]}
    assert rec[10.0] == 1.0 and set(rec) == {10.0, 0.03}
    assert (tmp_path / "s.png").stat().st_size > 1000
