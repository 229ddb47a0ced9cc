"""Neuron matching on real trained digit networks: universality, alignments, Rosetta neurons."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Lasso
from sklearn.metrics import adjusted_rand_score

from neuronscope.analyses.match import (
    _orthogonal,
    best_buddies,
    match_many_to_many,
    match_one_to_many,
    match_one_to_one,
    match_report,
    max_correlation,
    rosetta_neurons,
    rotation_baseline,
    universal_fractions,
    universal_neurons,
)
from neuronscope.lockstep import Lockstep, record_lockstep
from neuronscope.sources.tensors import TensorSource
from neuronscope.summaries.crossprod import CrossProducts
from neuronscope.testing.digits import digits_accuracy, digits_data, permuted_copy, train_digits

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def x():
    return digits_data("all")[0]


@pytest.fixture(scope="module")
def trained(x):
    models = {f"seed{s}": train_digits("mlp", s) for s in SEEDS}
    for m in models.values():
        assert digits_accuracy(m) > 0.93
    return record_lockstep(models, TensorSource(x, batch_size=256), "act*")


@pytest.fixture(scope="module")
def untrained(x):
    models = {f"seed{s}": train_digits("mlp", s, trained=False) for s in SEEDS}
    return record_lockstep(models, TensorSource(x, batch_size=256), "act*")


def test_universal_fraction_exceeds_rotation_and_untrained_baselines(trained, untrained, x):
    thr = 0.75
    neurons = universal_neurons(trained, threshold=thr)
    assert len(neurons) == 3 * 128
    assert {"corr[seed1]", "match[seed1]", "max_corr", "baseline_corr", "excess"} <= set(neurons)
    base = universal_neurons(untrained, threshold=thr, baseline=False)
    frac = universal_fractions(neurons, untrained=base)
    assert len(frac) == 6  # 3 models × 2 sites
    assert (frac["universal_frac"] > frac["baseline_frac"] + 0.1).all()
    assert (frac["universal_frac"] > frac["untrained_frac"] + 0.1).all()
    assert (frac["excess"] > 0.1).all()
    live = neurons[~neurons["dead"]]
    # the statistic is the minimum over the other models of each max correlation
    np.testing.assert_allclose(live["max_corr"], np.minimum(
        live.filter(like="corr[").min(axis=1), 1.0))
    # against a brute-force computation for one model pair, from the networks' activations
    a, b = _mlp_activations(train_digits("mlp", 0), x), _mlp_activations(train_digits("mlp", 2), x)
    names = [f"act{k}:{u}" for k in (1, 2) for u in range(64)]
    s0 = neurons[neurons["model"] == "seed0"].reset_index(drop=True)
    assert list(s0["site"] + ":" + s0["unit"].astype(str)) == names
    live_b = [j for j in range(b.shape[1]) if b[:, j].std() > 0]
    for i in range(a.shape[1]):
        if a[:, i].std() == 0:  # a dead neuron has no partner
            assert np.isnan(s0.loc[i, "corr[seed2]"]) and s0.loc[i, "match[seed2]"] == ""
            continue
        r = {j: np.corrcoef(a[:, i], b[:, j])[0, 1] for j in live_b}
        best = max(r, key=r.get)
        assert s0.loc[i, "corr[seed2]"] == pytest.approx(r[best], abs=1e-5)
        # the partner is the best one, or ties it within float32 streaming error
        assert r[names.index(s0.loc[i, "match[seed2]"])] >= r[best] - 1e-5


def _mlp_activations(model, x):
    """act1 | act2 of a digits MLP on every image, float64."""
    import torch

    with torch.no_grad():
        h1 = model.act1(model.fc1(torch.from_numpy(x)))
        h2 = model.act2(model.fc2(h1))
    return np.concatenate([h1.numpy(), h2.numpy()], axis=1).astype(np.float64)


def test_permuted_copy_is_matched_exactly_and_fully_universal(x):
    rng = np.random.default_rng(7)
    net = train_digits("mlp", 0)
    perms = {"act1": rng.permutation(64), "act2": rng.permutation(64)}
    perms2 = {"act1": rng.permutation(64), "act2": rng.permutation(64)}
    twin, twin2 = permuted_copy(net, perms), permuted_copy(net, perms2)
    lock = record_lockstep({"net": net, "twin": twin, "twin2": twin2}, TensorSource(x, batch_size=300), "act*")
    for site, p in perms.items():
        m = match_one_to_one(lock.cross("net", "twin", site, site))
        # unit j of the twin is unit p[j] of the net, so net unit p[j] matches twin unit j
        inverse = np.argsort(p)
        np.testing.assert_array_equal(m["unit_b"], inverse[m["unit_a"]])
        np.testing.assert_allclose(m["corr"], 1.0, atol=1e-5)
    u = universal_neurons(lock, threshold=0.99, same_site=True)
    assert u["universal"].all() and not u["dead"].any()
    ros = rosetta_neurons(lock)
    assert ros["group"].nunique() == 128
    wide = ros.pivot(index="group", columns="model", values="unit")
    sites = ros.pivot(index="group", columns="model", values="site")
    assert (sites["net"] == sites["twin"]).all()
    for site in ("act1", "act2"):
        rows = sites["net"] == site
        np.testing.assert_array_equal(np.argsort(perms[site])[wide.loc[rows, "net"]], wide.loc[rows, "twin"])
        np.testing.assert_array_equal(np.argsort(perms2[site])[wide.loc[rows, "net"]], wide.loc[rows, "twin2"])


def test_rosetta_groups_are_pairwise_best_buddies(trained):
    ros = rosetta_neurons(trained, sites="act2", min_corr=0.5)
    assert ros["group"].nunique() >= 5
    models = trained.models
    for _, g in ros.groupby("group"):
        assert sorted(g["model"]) == sorted(models)
        unit = dict(zip(g["model"], g["unit"], strict=True))
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                r = trained.correlation(a, b, "act2", "act2")
                assert np.nanargmax(r[unit[a]]) == unit[b] and np.nanargmax(r[:, unit[b]]) == unit[a]
                assert r[unit[a], unit[b]] >= 0.5


def test_max_correlation_and_best_buddies_known_answer():
    r = np.array([[0.1, 0.9, 0.2], [np.nan, np.nan, np.nan], [0.8, 0.95, 0.3]])
    val, arg = max_correlation(r)
    np.testing.assert_array_equal(arg, [1, -1, 1])
    assert val[0] == 0.9 and np.isnan(val[1])
    np.testing.assert_array_equal(best_buddies(r), [[2, 1]])
    np.testing.assert_array_equal(best_buddies(r, min_corr=0.99).shape, (0, 2))


def test_rotation_baseline_equals_explicit_rotation():
    rng = np.random.default_rng(0)
    xa = rng.normal(size=(500, 6))
    ya = np.concatenate([xa[:, :3] + 0.1 * rng.normal(size=(500, 3)), rng.normal(size=(500, 5))], axis=1)
    cp = CrossProducts.from_arrays(xa.astype(np.float32), ya.astype(np.float32), gram=True)
    got = rotation_baseline(cp, blocks=[3, 5], seed=4)
    g = np.random.default_rng(4)
    q = np.zeros((8, 8))
    q[:3, :3] = _orthogonal(3, g)
    q[3:, 3:] = _orthogonal(5, g)
    y32 = ya.astype(np.float32).astype(np.float64)
    ref = np.corrcoef(xa.astype(np.float32).astype(np.float64).T, (y32 @ q).T)[:6, 6:]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=1e-12)


def test_one_to_many_lasso_agrees_with_sklearn_and_finds_sums():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(2000, 12))
    a = np.stack([b[:, 0] + b[:, 1], b[:, 5] - 0.5 * b[:, 7] + 0.3 * rng.normal(size=2000)], axis=1)
    cp = CrossProducts.from_arrays(a.astype(np.float32), b.astype(np.float32), gram=True)
    res = match_one_to_many(cp, alpha=0.05, tol=1e-10, max_iter=2000)
    za = (a - a.mean(0)) / a.std(0)
    zb = (b - b.mean(0)) / b.std(0)
    for i in range(2):
        ref = Lasso(alpha=0.05, fit_intercept=False, tol=1e-12, max_iter=100000).fit(zb, za[:, i]).coef_
        np.testing.assert_allclose(res.coef[:, i], ref, atol=2e-5)
    table = res.table()
    assert set(table.loc[0, "predictors"]) == {0, 1} and table.loc[0, "n_predictors"] == 2
    assert set(table.loc[1, "predictors"][:2]) == {5, 7}
    assert res.r2[0] > 0.85 and res.r2_single[0] < 0.6  # a sum is one-to-many, not one-to-one


def test_many_to_many_recovers_shared_subspaces():
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(3000, 4))
    # each net spreads every latent factor over 3 of its own neurons (mixed, noisy)
    truth_a, truth_b = np.repeat(np.arange(4), 3), rng.permutation(np.repeat(np.arange(4), 3))
    a = latent[:, truth_a] * rng.uniform(0.5, 2, 12) + 0.3 * rng.normal(size=(3000, 12))
    b = latent[:, truth_b] * rng.uniform(0.5, 2, 12) + 0.3 * rng.normal(size=(3000, 12))
    cp = CrossProducts.from_arrays(a.astype(np.float32), b.astype(np.float32), gram=True)
    res = match_many_to_many(cp, n_clusters=4)
    joint_truth = np.concatenate([truth_a, truth_b])
    assert adjusted_rand_score(joint_truth, np.concatenate([res.labels_a, res.labels_b])) == 1.0
    assert (res.clusters[["n_a", "n_b"]] == 3).all().all()
    assert (res.clusters["mean_between"] > 0.8).all()


def test_lockstep_from_arrays_matches_record(trained, x):
    import torch

    models = {f"seed{s}": train_digits("mlp", s) for s in SEEDS}
    acts = {}
    for k, m in models.items():
        with torch.no_grad():
            h1 = m.act1(m.fc1(torch.from_numpy(x)))
            acts[k] = {"act1": h1.numpy(), "act2": m.act2(m.fc2(h1)).numpy()}
    lock = Lockstep.from_arrays(acts)
    np.testing.assert_allclose(lock.correlation("seed0", "seed1"), trained.correlation("seed0", "seed1"), atol=5e-6)


def test_match_report_on_a_permuted_copy(x):
    """A permuted copy planted as the second model: every neuron's partner is known."""
    import json

    import pandas as pd

    rng = np.random.default_rng(11)
    net = train_digits("mlp", 0)
    perms = {"act1": rng.permutation(64), "act2": rng.permutation(64)}
    lock = record_lockstep({"net": net, "twin": permuted_copy(net, perms)}, TensorSource(x, batch_size=300), "act*")
    live = _mlp_activations(net, x).std(0) > 0
    live_per_site = {"act1": int(live[:64].sum()), "act2": int(live[64:].sum())}
    rep = match_report(lock, threshold=0.99, top_groups=5)
    assert rep.models == ["net", "twin"] and rep.samples == len(x) and rep.threshold == 0.99
    assert [(c["site_a"], round(c["mean_max_corr"], 4), round(c["median_max_corr"], 4))
            for c in rep.correlation] == [("act1", 1.0, 1.0), ("act2", 1.0, 1.0)]
    for m in rep.matching:
        n_live = live_per_site[m["site"]]
        assert m["pairs"] == 64 and m["mean_matched_corr"] == pytest.approx(1.0, abs=1e-5)
        assert m["matched_above_threshold"] == n_live and m["same_as_best"] == pytest.approx(n_live / 64)
    assert rep.rosetta_groups == int(live.sum()) and len(rep.rosetta_top) == 5
    for g in rep.rosetta_top:
        (model_a, site_a, unit_a), (model_b, site_b, unit_b) = (
            (n.split("/")[0], *n.split("/")[1].split(":")) for n in g["neurons"])
        assert (model_a, model_b) == ("net", "twin") and site_a == site_b
        assert perms[site_b][int(unit_b)] == int(unit_a) and g["mean_corr"] == pytest.approx(1.0, abs=1e-5)
    assert len(rep.neurons) == 2 * 128 and (rep.fractions["universal_frac"] == 1.0).all()
    doc = json.loads(json.dumps(rep.to_dict()))
    pd.testing.assert_frame_equal(pd.DataFrame(doc["universal"]), rep.fractions, check_dtype=False)
    assert doc["rosetta"] == {"groups": rep.rosetta_groups, "top": rep.rosetta_top}
    assert doc["sites"] == {"net": {"act1": 64, "act2": 64}, "twin": {"act1": 64, "act2": 64}}


def _cli():
    from neuronscope.cli import app

    return app


def test_match_cli_json_agrees_with_api(trained, tmp_path):
    import json

    from typer.testing import CliRunner

    res = CliRunner().invoke(_cli(), [
        "match", "--models", "digits-mlp:0", "digits-mlp:1", "digits-mlp:2", "--threshold", "0.75",
        "--out", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["models"] == ["digits-mlp:0", "digits-mlp:1", "digits-mlp:2"] and out["samples"] == 1797
    api = universal_fractions(universal_neurons(trained, threshold=0.75))
    cli = {(r["model"].replace("digits-mlp:", "seed"), r["site"]): r["universal_frac"] for r in out["universal"]}
    for r in api.itertuples():
        assert cli[(r.model, r.site)] == pytest.approx(r.universal_frac)
    assert {m["site"] for m in out["matching"]} == {"act1", "act2"} and len(out["matching"]) == 6
    assert out["rosetta"]["groups"] == len(rosetta_neurons(trained, min_corr=0.75).groupby("group"))
    back = Lockstep.load(tmp_path / "m" / "lockstep.npz")
    np.testing.assert_allclose(back.correlation("digits-mlp:0", "digits-mlp:1"),
                               trained.correlation("seed0", "seed1"), atol=1e-5)
    assert (tmp_path / "m" / "neurons.csv").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["match", "--models", "digits-mlp:0"],
         "match needs at least two models; pass --models A B [C ...]"),
        (["match", "--models", "digits-mlp:0", "minilm"],
         "digits models and text models see different inputs; list only one kind"),
        (["match", "--models", "digits-mlp:0,digits-mlp:0"],
         "a model is listed twice; give each model once"),
        (["match", "--models", "digits-mlp:0", "digits-cnn:1"],
         "digits-cnn takes differently shaped inputs from digits-mlp / digits-snn; list one input shape"),
        (["match", "--models", "digits-mlp:0:untrained", "digits-mlp:1", "--untrained-baseline"],
         "--untrained-baseline needs trained digits models (digits-mlp:SEED ...)"),
        (["sysid", "--models", "digits-mlp:0", "--metrics", "nope"],
         "unknown metric(s) nope; choose from linear_cka, rsa, trsa, encoding, procrustes"),
    ],
)
def test_cli_errors_name_the_fix(args, message, capsys):
    """The console entry point prints exactly ``error: <the fix>`` as one line on stderr,
    no traceback, and exits with code 2 (before loading or training any model)."""
    from neuronscope.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [f"error: {message}"]


def test_digits_nets_are_deterministic_and_permutation_preserves_function(x):
    import hashlib

    import torch

    from neuronscope.errors import NeuronscopeError
    from neuronscope.testing.digits import _trained_state, digits_model

    def digest(state):
        h = hashlib.sha256()
        for v in state.values():
            h.update(v.numpy().tobytes())
        return h.hexdigest()

    cached = digest(train_digits("mlp", 4).state_dict())
    assert digest(_trained_state.__wrapped__("mlp", 4, 64, 30, True)) == cached  # retrained, not cached
    assert digest(train_digits("mlp", 0).state_dict()) != cached
    net = digits_model("digits-mlp:0")
    twin = permuted_copy(net, {"act1": np.arange(64)[::-1], "act2": np.roll(np.arange(64), 5)})
    with torch.no_grad():
        inp = torch.from_numpy(x[:100])
        np.testing.assert_allclose(net(inp).numpy(), twin(inp).numpy(), atol=1e-5)
    assert digits_model("digits-mlp:0:untrained").neuronscope_id == "digits-mlp:0:untrained"
    with pytest.raises(NeuronscopeError, match="digits-mlp:SEED"):
        digits_model("digits-mlp:x")


def test_baselines_and_alignments_need_within_gram():
    from neuronscope.errors import NeuronscopeError

    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5))
    lock = Lockstep.from_arrays({"a": z, "b": z @ _orthogonal(5, rng)}, within=False)
    u = universal_neurons(lock, threshold=0.5, baseline=False)
    assert len(u) == 10 and "baseline_corr" not in u
    for call in (lambda: universal_neurons(lock), lambda: match_one_to_many(lock.cross("a", "b")),
                 lambda: match_many_to_many(lock.cross("a", "b"), 2)):
        with pytest.raises(NeuronscopeError, match="within=True"):
            call()


def test_calibrated_threshold_on_digits_mlps(trained):
    """The fixed 0.5 calls nearly every neuron of these small nets universal — and nearly
    every unit of the rotated baseline too; the threshold calibrated on the baseline (its
    99th percentile per site) does not."""
    neurons = universal_neurons(trained, threshold=0.5)
    frac = universal_fractions(neurons)
    assert (frac["baseline_frac"] > 0.9).all()  # the fixed threshold means nothing here
    assert (frac["calibrated_frac"] < frac["universal_frac"]).all()
    for r in frac.itertuples():
        live = neurons[(neurons.model == r.model) & (neurons.site == r.site) & ~neurons.dead]
        assert r.calibrated_threshold == pytest.approx(np.quantile(live["baseline_corr"], 0.99))
        assert r.calibrated_frac == pytest.approx((live["max_corr"] > r.calibrated_threshold).mean())
        # the baseline's own fraction above its 99th percentile: ~1% (one unit in a site of 64)
        assert abs(r.baseline_calibrated_frac - 0.01) <= 1 / len(live)
    report = match_report(trained, threshold=0.5)
    assert report.to_dict()["calibration_quantile"] == 0.99
    assert {"calibrated_threshold", "calibrated_frac", "baseline_calibrated_frac"} <= set(report.to_dict()["universal"][0])
    with pytest.raises(ValueError, match="quantile must be in"):
        universal_neurons(trained, quantile=1.0)
