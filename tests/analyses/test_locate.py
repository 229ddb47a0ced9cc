"""Locate on known answers: a recorded network with planted label-specific neurons, hand-computed
LAPE, statistics equal to scipy / scikit-learn on stored activations, a planted k-sparse probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from locate_models import L_AND_M, LABELS, ONLY_L, Planted, planted_inputs, record_planted
from scipy import stats

from neuronscope.analyses.locate import (
    ArrayActivations,
    LocateResult,
    benjamini_hochberg,
    diffmeans,
    kth_value,
    label_columns,
    label_statistics,
    label_summaries,
    lape,
    lape_entropy,
    locate,
    sparse_probe,
    stored_results,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.site import SiteSummaries, SummaryConfig


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    return record_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def stored(planted_run):
    pop = planted_run.population()
    return np.asarray(pop.values, dtype=np.float64), np.asarray(pop["lang"].values), np.asarray(pop["item"].values)


# --------------------------------------------------------------------------- the planted neurons


def test_lape_finds_the_planted_neurons(planted_run):
    res = lape(planted_run, "lang", top_rate=0.07)  # 32 neurons: round(0.07 * 32) = 2 selected
    spec = res.specific["act"]
    assert res.labels == LABELS
    assert spec[ONLY_L].tolist() == [True, False, False, False]
    assert spec[L_AND_M].tolist() == [True, True, False, False]
    assert spec.sum() == 3  # nothing else
    e = res.arrays["act"]["entropy"]
    assert e[ONLY_L] < 0.05 and abs(e[L_AND_M] - np.log(2)) < 0.05  # one label: 0; two equal labels: ln 2
    assert set(res.neurons()["unit"]) == {ONLY_L, L_AND_M}


def test_statistics_find_the_planted_neurons(planted_run):
    for test in ("t", "f"):
        res = label_statistics(planted_run, "lang", test=test)
        spec = res.specific["act"]
        assert spec[ONLY_L].tolist() == [True, False, False, False], test
        assert spec[L_AND_M, :2].all() and not spec[L_AND_M, 2:].any(), test
        assert spec[2:].sum() == 0, test  # random units: no effect of the label at d >= 0.8


def test_k1_probe_names_the_planted_neuron(planted_run):
    res = sparse_probe(planted_run, "lang", ks=[1, 2], values=["L", "M"])
    curves = res.info["curves"]["act"]
    assert curves["L"]["neurons"][0] == ONLY_L and curves["L"]["accuracy"][0] > 0.95
    assert curves["M"]["neurons"][0] == L_AND_M
    assert res.specific["act"][ONLY_L, 0] and res.info["curves"]["act"]["L"]["k_star"] == 1


def test_diffmeans_direction_points_at_the_planted_neuron(planted_run, stored):
    x, lab, _ = stored
    res = diffmeans(planted_run, "lang", evaluate=False)
    d = res.arrays["act"]["direction"]
    # the direction equals numpy's mean difference on the stored activations
    for j, v in enumerate(LABELS):
        np.testing.assert_allclose(d[j], x[lab == v].mean(0) - x[lab != v].mean(0), rtol=1e-9, atol=1e-9)
    assert np.argmax(d[0]) == ONLY_L and np.argmax(d[1]) == L_AND_M
    assert res.specific["act"][ONLY_L, 0] and res.specific["act"][L_AND_M, 1]


def test_diffmeans_probe_accuracy_equals_numpy_on_the_same_split(planted_run, stored):
    from neuronscope.analyses.locate._data import split_mask

    x, lab, item = stored
    res = diffmeans(planted_run, "lang", test_fraction=0.3, seed=3)
    test = split_mask(item, 0.3, 3)
    for j, v in enumerate(LABELS):
        pos = lab == v
        m_l, m_r = x[~test & pos].mean(0), x[~test & ~pos].mean(0)
        call = x[test] @ (m_l - m_r) > (m_l + m_r) @ (m_l - m_r) / 2
        bal = (call[pos[test]].mean() + (~call[~pos[test]]).mean()) / 2
        assert res.arrays["act"]["accuracy"][j] == pytest.approx(bal, abs=1e-12)
    # pair a vs b: only samples of a or b
    a, b = 0, 1
    m_a, m_b = x[~test & (lab == "L")].mean(0), x[~test & (lab == "M")].mean(0)
    proj = x[test] @ (m_a - m_b) > (m_a + m_b) @ (m_a - m_b) / 2
    want = (proj[lab[test] == "L"].mean() + (~proj[lab[test] == "M"]).mean()) / 2
    assert res.arrays["act"]["pair_accuracy"][a, b] == pytest.approx(want, abs=1e-12)
    assert res.arrays["act"]["pair_accuracy"][b, a] == pytest.approx(want, abs=1e-12)


# --------------------------------------------------------------------------- hand computations


def _summaries_from(acts, codes, cats, field="lang"):
    cfg = SummaryConfig(k=2, window=0, n_bins=4, hist_range=(-10, 10), label_fields={field: cats}, max_pos=0,
                        token_slots=0)
    ss = SiteSummaries.create(acts.shape[1], cfg)
    ss.update(np.asarray(acts, np.float32), {"sample": np.arange(len(codes)), field: np.asarray(codes)})
    return {"site": ss}


def test_lape_entropy_equals_a_hand_computation_on_a_small_firing_table():
    # 2 labels × 4 samples; unit 0 fires 3/4 on a and 1/4 on b; unit 1 only on b (2/4); unit 2 never
    acts = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0],
                     [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    codes = [0, 0, 0, 0, 1, 1, 1, 1]
    res = lape(_summaries_from(acts, codes, ["a", "b"]), "lang", top_rate=0.5)
    p = res.score["site"]
    np.testing.assert_allclose(p, [[0.75, 0.25], [0.0, 0.5], [0.0, 0.0]])
    # p' = (3/4, 1/4): H = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335...
    hand = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(res.arrays["site"]["entropy"], [hand, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(lape_entropy(np.array([[0.2], [0.2], [0.6]])),
                               [-(0.4 * np.log(0.2) + 0.6 * np.log(0.6))])
    # thresholds: the 6 probabilities sorted are 0, 0, 0, .25, .5, .75; k = round(6 * .95) = 6 -> 0.75
    assert res.info["prob_threshold"] == 0.75 and kth_value([0, 0, 0, .25, .5, .75], 0.5) == 0.0
    # nobody exceeds 0.75: no neuron passes the filter, nothing is specific
    assert res.info["selected"] == 0 and not res.specific["site"].any()
    res2 = lape(_summaries_from(acts, codes, ["a", "b"]), "lang", top_rate=0.5, filter_rate=0.6,
                activation_bar_ratio=0.6)
    # k = round(3.6) = 4 -> 0.25; units 0 (p_a = .75) and 1 (p_b = .5) pass; 2 selected (round(1.5) = 2);
    # unit 1 has entropy 0, unit 0 entropy 0.56: both chosen; specific where p > 0.25
    assert res2.specific["site"].tolist() == [[True, False], [False, True], [False, False]]


def test_benjamini_hochberg_equals_scipy():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20)]).reshape(20, 11)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p.ravel()).reshape(p.shape),
                               rtol=1e-12)
    # hand: p = (0.01, 0.04, 0.03) -> sorted .01,.03,.04 -> 3p/i = .03, .045, .04 -> monotone .03, .04, .04
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.01, 0.04, 0.03])), [0.03, 0.04, 0.04])


def test_per_label_moments_equal_numpy_on_stored_activations(planted_run, stored):
    x, lab, _ = stored
    (ls,) = label_summaries(planted_run, "lang")
    for j, v in enumerate(ls.labels):
        rows = x[lab == v]
        assert ls.n[j] == len(rows)
        np.testing.assert_allclose(ls.mean[j], rows.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ls.var[j], rows.var(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(ls.fire[j], (rows > 0).sum(0))


def test_welch_and_anova_equal_scipy_and_sklearn_on_stored_activations(planted_run, stored):
    from sklearn.feature_selection import f_classif

    x, lab, _ = stored
    res = label_statistics(planted_run, "lang")
    a = res.arrays["act"]
    for j, v in enumerate(LABELS):
        ref = stats.ttest_ind(x[lab == v], x[lab != v], equal_var=False)
        live = np.isfinite(ref.statistic)
        np.testing.assert_allclose(res.score["act"][live, j], ref.statistic[live], rtol=1e-7)
        np.testing.assert_allclose(a["p"][live, j], ref.pvalue[live], rtol=1e-6, atol=1e-300)
    f_ref = stats.f_oneway(*[x[lab == v] for v in LABELS])
    live = np.isfinite(f_ref.statistic)
    np.testing.assert_allclose(a["f"][live], f_ref.statistic[live], rtol=1e-7)
    np.testing.assert_allclose(a["f_p"][live], f_ref.pvalue[live], rtol=1e-6, atol=1e-300)
    f_sk, _ = f_classif(x, lab)
    np.testing.assert_allclose(a["f"][live], f_sk[live], rtol=1e-7)
    np.testing.assert_allclose(a["q"], benjamini_hochberg(a["p"]), rtol=1e-12)  # one site: BH over it


# --------------------------------------------------------------------------- planted k-sparse probing


def _planted_sparse(seed: int, n: int = 16000, units: int = 48, true_k: int = 4):
    """Two classes; units 0..true_k-1 shift by +1 (sd 1) in class 'pos', the rest are noise:
    the Bayes accuracy with the true k units is Φ(√k / 2) (Φ(1) for k = 4)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, units)).astype(np.float32)
    x[:, :true_k] += y[:, None].astype(np.float32)
    summaries = _summaries_from(x, y, ["neg", "pos"])
    return summaries, ArrayActivations({"site": x}, y, ["neg", "pos"], field="lang")


def test_probe_accuracy_vs_k_is_monotone_in_expectation_and_reaches_the_planted_accuracy():
    ks = [1, 2, 4, 8, 16]
    curves = []
    for seed in range(3):
        summ, acts = _planted_sparse(seed)
        res = sparse_probe(summ, "lang", ks=ks, values=["pos"], activations=acts, per_label=10**6, test_fraction=0.4,
                           seed=seed)
        c = res.info["curves"]["site"]["pos"]
        assert sorted(c["neurons"][:4]) == [0, 1, 2, 3]  # the streamed ranking finds the planted units
        curves.append(c["accuracy"])
    mean = np.mean(curves, axis=0)
    bayes = stats.norm.cdf([np.sqrt(k) / 2 for k in (1, 2, 4)])  # Φ(0.5), Φ(0.707), Φ(1)
    np.testing.assert_allclose(mean[:3], bayes, atol=0.015)
    assert mean[0] < mean[1] < mean[2]  # rising up to the true k
    assert abs(mean[3] - mean[2]) < 0.01 and abs(mean[4] - mean[2]) < 0.015  # flat after it
    assert res.info["curves"]["site"]["pos"]["k_star"] == 4


# --------------------------------------------------------------------------- keep=summaries, storage


def test_summaries_only_run_gives_the_same_results_with_a_second_pass(planted_run, tmp_path):
    from neuronscope.sources.tensors import TensorSource

    summ_run = record_planted(tmp_path, keep="summaries")
    assert not summ_run.has_activations
    a, b = lape(summ_run, "lang", top_rate=0.07), lape(planted_run, "lang", top_rate=0.07)
    np.testing.assert_array_equal(a.specific["act"], b.specific["act"])
    with pytest.raises(NeuronscopeError, match="model= and source="):
        sparse_probe(summ_run, "lang", ks=[1])
    x, labels = planted_inputs()
    src = TensorSource(x, batch_size=256, labels={"lang": labels})
    second = sparse_probe(summ_run, "lang", ks=[1, 4], model=Planted(), source=src)
    direct = sparse_probe(planted_run, "lang", ks=[1, 4])
    assert second.info["curves"] == direct.info["curves"]  # same subsample, same split, same fits
    dm2 = diffmeans(summ_run, "lang", model=Planted(), source=src)
    np.testing.assert_allclose(dm2.arrays["act"]["accuracy"], diffmeans(planted_run, "lang").arrays["act"]["accuracy"])


def test_save_and_reload_in_the_run(planted_run):
    res = locate(planted_run, "lang", "lape", top_rate=0.07)
    name = res.save(planted_run)
    assert name == "locate-lang-lape"
    from neuronscope.store import open_run

    run = open_run(planted_run.path)
    back = [r for r in stored_results(run) if r.method == "lape"][0]
    assert isinstance(back, LocateResult) and back.labels == res.labels
    np.testing.assert_array_equal(back.specific["act"], res.specific["act"])
    np.testing.assert_allclose(back.arrays["act"]["entropy"], res.arrays["act"]["entropy"])
    assert back.info["selected"] == 2
    assert res.units_for("M") == {"act": np.array([L_AND_M])} or res.units_for("M")["act"].tolist() == [L_AND_M]


def test_label_columns(planted_run):
    cols = label_columns(planted_run, top_rate=0.07)
    row = cols.set_index("unit").loc[ONLY_L]
    assert row["top_label"] == "L" and row["lape_labels"] == "L" and row["top_label_prob"] > 0.99
    assert cols.set_index("unit").loc[L_AND_M, "lape_labels"] == "L,M"
    assert (cols["lape_labels"] == "").sum() == 30


# --------------------------------------------------------------------------- bad input


def test_label_with_one_value(tmp_path):
    run = record_planted(tmp_path, n=256, labels=["L"] * 256)
    for by in ("lape", "stats", "probe", "diffmeans"):
        with pytest.raises(NeuronscopeError, match="at least two"):
            locate(run, "lang", by)


def test_label_missing_for_some_documents(tmp_path):
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.testing.tinylm import ByteTokenizer

    # two byte-level "languages"; every third document has no label
    texts = [("aaaa bab" if i % 2 else "zzz yzy") + str(i % 5) for i in range(60)]
    labels = [None if i % 3 == 0 else ("a" if i % 2 else "z") for i in range(60)]
    emb = _ByteBag()
    src = TextSource(Corpus(texts, {"lang": labels}), ByteTokenizer(64), batch_size=8)
    from neuronscope.recording import record

    run = record(emb, src, "act", tmp_path / "missing.zarr", dtype="float32", progress=False)
    res = lape(run, "lang", top_rate=0.2)
    pop = run.population()
    lab = np.asarray(pop["lang"].values)
    x = np.asarray(pop.values, dtype=np.float64)
    assert res.info["unlabeled"] == int((lab == "").sum()) > 0
    assert res.info["label_counts"] == {"a": int((lab == "a").sum()), "z": int((lab == "z").sum())}
    np.testing.assert_allclose(res.score["act"][:, 0], (x[lab == "a"] > 0).mean(0))
    st = label_statistics(run, "lang")
    ref = stats.ttest_ind(x[lab == "a"], x[lab == "z"], equal_var=False)  # the rest of 'a' is 'z' only
    live = np.isfinite(ref.statistic)
    np.testing.assert_allclose(st.score["act"][live, 0], ref.statistic[live], rtol=1e-7)


class _ByteBag(torch.nn.Module):
    """Embeds bytes with a fixed random table: ``act = ReLU(E[token])`` (16 units)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(259, 16)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(259, 16, generator=g))
        self.act = torch.nn.ReLU()

    def forward(self, input_ids, attention_mask=None):
        return self.act(self.emb(input_ids))


def test_run_without_per_label_firing_names_the_command(planted_run, tmp_path):
    with pytest.raises(NeuronscopeError, match=r"no per-label firing for label 'topic'.*neuronscope record --labels"):
        lape(planted_run, "topic")
    # a run whose summaries predate per-label moments: `neuronscope summarize RUN` recomputes them
    ss = planted_run.summaries("act")
    del ss.parts["label_moments.lang"]
    with pytest.raises(NeuronscopeError, match="neuronscope summarize"):
        label_statistics(_RunLike(planted_run, ss), "lang")
    lape(_RunLike(planted_run, ss), "lang", top_rate=0.07)  # LAPE needs the firing part only


class _RunLike:
    def __init__(self, run, ss):
        self.run, self.ss = run, ss
        self.sites, self.path, self.label_categories = run.sites, run.path, run.label_categories
        self.has_activations = True

    def summaries(self, site):
        return self.ss


def test_k_larger_than_the_site(planted_run):
    with pytest.raises(NeuronscopeError, match=r"k=64 is larger than site 'act' \(32 units\)"):
        sparse_probe(planted_run, "lang", ks=[1, 64])
    res = sparse_probe(planted_run, "lang", values=["L"])  # default ks are capped at the site's units
    assert res.info["curves"]["act"]["L"]["k"] == [1, 2, 4, 8, 16, 32]


def test_unknown_method_and_value(planted_run):
    with pytest.raises(NeuronscopeError, match="unknown method"):
        locate(planted_run, "lang", "magic")
    with pytest.raises(NeuronscopeError, match="no value 'Q'"):
        sparse_probe(planted_run, "lang", values=["Q"])


def test_steering_vector_from_run_is_the_same_difference_in_means(planted_run, stored):
    from neuronscope.analyses.steer import steering_vector_from_labels, steering_vector_from_run
    from neuronscope.sources.tensors import TensorSource

    x, lab, _ = stored
    from_run = steering_vector_from_run(planted_run, "act", "lang", "L", "M")
    x_in, labels = planted_inputs()
    one_pass = steering_vector_from_labels(Planted(), TensorSource(x_in, batch_size=256, labels={"lang": labels}),
                                           "act", "lang", "L", "M")
    want = x[lab == "L"].mean(0) - x[lab == "M"].mean(0)
    np.testing.assert_allclose(from_run.vector, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one_pass.vector, want, rtol=1e-9, atol=1e-12)
    assert from_run.n_positive == one_pass.n_positive == int((lab == "L").sum())
