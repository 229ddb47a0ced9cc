"""Functional modules: planted co-firing blocks, NTF on planted tensors, the dynamic connectome
of a run and of a brain population, Semi-NMF, and modules of MiniLM's FFNs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from neuronscope.analyses.modules import (
    coactivation_graph,
    cofiring,
    dynamic_connectome,
    find_modules,
    leiden,
    ntf,
    save_modules,
    semi_nmf,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.summaries import CoFiring


def planted_blocks(k: int = 4, size: int = 25, dead: int = 5, n: int = 4000, seed: int = 0):
    """Activations of ``k`` groups of ``size`` neurons that fire together (each group is on in a
    sample with probability 0.3; a member fires when its group is on with probability 0.9, and
    by noise with probability 0.02), plus ``dead`` neurons that never fire."""
    rng = np.random.default_rng(seed)
    on = rng.random((n, k)) < 0.3
    group = np.repeat(np.arange(k), size)
    fire = (on[:, group] & (rng.random((n, k * size)) < 0.9)) | (rng.random((n, k * size)) < 0.02)
    a = np.where(fire, 0.5 + rng.random((n, k * size)), -0.1 * rng.random((n, k * size)))
    a = np.concatenate([a, -0.05 * np.ones((n, dead))], axis=1).astype(np.float32)
    truth = np.concatenate([group, -np.ones(dead, dtype=int)])
    return a, truth


def _population(a: np.ndarray, docs_per: int = 10) -> xr.DataArray:
    n = len(a)
    return xr.DataArray(a, dims=("sample", "neuron"),
                        coords={"doc": ("sample", np.arange(n) // docs_per), "pos": ("sample", np.arange(n) % docs_per)})


@pytest.mark.parametrize("normalize", ["phi", "pmi", "jaccard", "probability"])
def test_planted_blocks_split_into_exactly_their_modules(normalize: str) -> None:
    a, truth = planted_blocks()
    mods = find_modules(_population(a), normalize=normalize, seeds=3)["population"]
    alive = truth >= 0
    assert mods.n_modules == 4
    assert adjusted_rand_score(truth[alive], mods.labels[alive]) == 1.0
    # dead neurons never fire: isolated in the graph, left unassigned
    assert np.all(mods.labels[~alive] == -1) and mods.n_unassigned == 5
    assert sorted(mods.sizes.tolist()) == [25, 25, 25, 25]
    assert mods.seed_ari == 1.0 and mods.half_ari == 1.0
    assert mods.modularity > 0.25  # four equal modules: at most 0.75
    order = mods.order()
    assert sorted(order.tolist()) == list(range(len(truth)))
    assert np.all(np.diff(np.where(mods.labels[order] >= 0, mods.labels[order], 99)) >= 0)


def test_graph_normalisations_match_their_formulas() -> None:
    a, _ = planted_blocks(k=2, size=4, dead=1, n=500)
    cf = CoFiring(a.shape[1])
    cf.update(a)
    m = (a > 0).astype(np.float64)
    n = len(m)
    b, c = m.T @ m, m.sum(0)
    i, j = 0, 5
    p = coactivation_graph(cf, "probability")
    assert p[i, j] == pytest.approx(b[i, j] / n)
    phi = coactivation_graph(cf, "phi")
    r = np.corrcoef(m[:, i], m[:, j])[0, 1]
    assert phi[i, j] == pytest.approx(max(r, 0.0))
    pmi = coactivation_graph(cf, "pmi")
    assert pmi[0, 1] == pytest.approx(max(np.log(n * b[0, 1] / (c[0] * c[1])), 0.0))
    jac = coactivation_graph(cf, "jaccard")
    assert jac[0, 1] == pytest.approx(b[0, 1] / (c[0] + c[1] - b[0, 1]))
    for w in (p, phi, pmi, jac):
        assert np.all(np.diag(w) == 0) and np.all(w >= 0) and np.allclose(w, w.T)
        assert np.all(w[-1] == 0)  # the dead neuron has no edge
    with pytest.raises(NeuronscopeError, match="normalize"):
        coactivation_graph(cf, "cosine")


def test_leiden_on_isolated_and_empty_graphs() -> None:
    w = np.zeros((5, 5))
    labels, q = leiden(w)
    assert np.all(labels == -1) and q == 0.0
    w[0, 1] = w[1, 0] = 1.0
    labels, _ = leiden(w)
    assert labels.tolist() == [0, 0, -1, -1, -1]
    with pytest.raises(NeuronscopeError, match="non-negative"):
        leiden(-w)


def test_modules_of_a_run_are_saved_for_the_atlas(tmp_path) -> None:
    from neuronscope.atlas.build import extra_heatmaps
    from neuronscope.recording import record
    from neuronscope.sources.tensors import TensorSource
    from neuronscope.store import open_run
    from neuronscope.testing.digits import digits_data, train_digits

    model = train_digits("mlp", 0)
    x, _ = digits_data("all", "mlp")
    run = record(model, TensorSource(x[:400], batch_size=100), "act*", tmp_path / "run.zarr", progress=False)
    site = next(iter(run.sites))
    mods = find_modules(run, site, seeds=2)[site]
    cf = cofiring(run, site)
    acts = np.asarray(run.population(site).values, dtype=np.float32)
    m = (acts > 0).astype(np.int64)
    assert np.array_equal(cf.total.result()["cofire"], m.T @ m)
    # the hot/cold split reads the run's firing-frequency summary
    from neuronscope.analyses.sparsity import hot_cold

    hot = hot_cold(run, 0.25, site=site)
    freq = m.mean(0)
    assert hot.sum() == int(np.ceil(0.25 * len(freq))) and freq[hot].min() >= freq[~hot].max()
    name = save_modules(run, mods)
    extra = open_run(run.path).extras(name)
    assert np.array_equal(extra["arrays"]["labels"], mods.labels)
    assert extra["attrs"]["n_modules"] == mods.n_modules
    page = extra_heatmaps(name, extra)
    titles = [h["title"] for h in page["heatmaps"]]
    assert any("ordered by module" in t for t in titles)
    # each neuron's page shows its module
    from neuronscope.atlas.build import collect_atlas_data

    data = collect_atlas_data(open_run(run.path), examples=1)
    tab = next(x for x in data["sites"] if x["name"] == site)["table"]
    assert np.array_equal(tab["module"], mods.labels[tab["unit"]])


def _congruence(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Per matched component, the product over modes of |cosine| (best permutation)."""
    r = a[0].shape[1]
    sim = np.ones((r, r))
    for fa, fb in zip(a, b, strict=True):
        na = fa / np.linalg.norm(fa, axis=0)
        nb = fb / np.linalg.norm(fb, axis=0)
        sim *= np.abs(na.T @ nb)
    rows, cols = linear_sum_assignment(-sim)
    return sim[rows, cols]


def test_ntf_recovers_planted_nonnegative_factors() -> None:
    rng = np.random.default_rng(0)
    shape, rank = (20, 15, 10), 3
    true = [rng.random((s, rank)) ** 2 for s in shape]
    t = np.einsum("ir,jr,kr->ijk", *true)
    weights, factors = ntf(t, rank, seed=1, n_iter_max=3000, tol=1e-12)
    assert np.all(weights[:-1] >= weights[1:])
    assert np.all(_congruence(true, factors) > 0.99)
    recon = np.einsum("r,ir,jr,kr->ijk", weights, *factors)
    assert np.linalg.norm(recon - t) / np.linalg.norm(t) < 1e-2
    with pytest.raises(NeuronscopeError, match="non-negative"):
        ntf(-t, 2)


def _two_phase(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 neurons; in the first half of time neurons 0-7 co-vary (a shared drive), in the
    second half neurons 8-15 do; everything else is independent noise."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 16))
    half = n // 2
    a[:half, :8] += 2.0 * rng.normal(size=(half, 1))
    a[half:, 8:] += 2.0 * rng.normal(size=(n - half, 1))
    return a.astype(np.float32), np.arange(n) * 0.01


def test_dynamic_connectome_of_a_brain_population_finds_both_phases() -> None:
    a, t = _two_phase()
    brain = xr.DataArray(a, dims=("sample", "neuron"), coords={"time": ("sample", t)})
    con = dynamic_connectome(brain, rank=2, n_windows=10, units=range(16), seed=0)
    assert con.windows.shape == (10, 2) and con.pairs.shape == (120, 2)
    early = int(np.argmax(con.windows[:5].sum(0)))
    late = 1 - early
    # the early component loads on windows 0-4, the late one on 5-9
    assert con.windows[:5, early].sum() > 0.95 * con.windows[:, early].sum()
    assert con.windows[5:, late].sum() > 0.95 * con.windows[:, late].sum()
    # its strongest pairs and its main community are the neurons that co-varied then
    for comp, group in ((early, set(range(8))), (late, set(range(8, 16)))):
        m = con.motif(comp)
        strength = m.sum(1)
        assert set(np.argsort(-strength)[:8].tolist()) == group
        lab = con.communities[comp]
        together = lab[sorted(group)]
        assert together[0] >= 0 and np.all(together == together[0])
        assert not np.any(lab[sorted(set(range(16)) - group)] == together[0])
    d = con.to_dict()
    assert d["rank"] == 2 and len(d["components"]) == 2


def test_dynamic_connectome_same_function_on_a_run_like_population() -> None:
    a, _ = _two_phase(n=4000, seed=1)
    pop = _population(a, docs_per=20)  # 200 documents
    con = dynamic_connectome(pop, rank=2, window="doc", n_windows=8, units=range(16))
    assert len(con.window_labels) == 8 and con.window_labels[0].startswith("docs 0-")
    first = int(np.argmax(con.windows[:4].sum(0)))
    assert con.windows[:4, first].sum() > 0.9 * con.windows[:, first].sum()
    # two populations (subjects) give a third mode
    con2 = dynamic_connectome([pop, pop], rank=2, window="doc", n_windows=8, units=range(16), affinity="phi")
    assert con2.subjects.shape == (2, 2)
    with pytest.raises(NeuronscopeError, match="time"):
        dynamic_connectome(pop, window="time", units=range(16))


def test_semi_nmf_error_decreases_monotonically_on_a_planted_problem() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 3000, 40, 5
    w_true = rng.normal(size=(d, k))
    h_true = rng.random((n, k)) * (rng.random((n, k)) < 0.3)
    a = (h_true @ w_true.T + 0.01 * rng.normal(size=(n, d))).astype(np.float32)
    fit = semi_nmf(_population(a), k=k, epochs=40, rows=700, seed=0)
    err = np.asarray(fit.errors)
    assert np.all(np.diff(err) <= 1e-12 * err[0])
    assert err[-1] < 0.01 and err[-1] < err[0]
    assert np.all(fit.coefficients >= 0)
    assert fit.features.shape == (k, d) and fit.top_rows.shape == (k, 16)
    # features recover the planted directions (up to order and scale)
    cos = np.abs((fit.features / np.linalg.norm(fit.features, axis=1, keepdims=True))
                 @ (w_true / np.linalg.norm(w_true, axis=0)))
    r, c = linear_sum_assignment(-cos)
    assert cos[r, c].min() > 0.95
    # top examples are the rows where the coefficient is largest, with their doc / pos
    f = 0
    ex = fit.top_examples(f)
    assert ex[0]["value"] == pytest.approx(fit.coefficients[:, f].max(), rel=1e-5)
    assert ex[0]["doc"] == ex[0]["row"] // 10 and ex[0]["pos"] == ex[0]["row"] % 10
    # winner-take-all sparsity keeps ⌈keep·d⌉ neurons per feature and still never increases the error
    sp = semi_nmf(a, k=k, epochs=15, rows=1000, keep=0.25)
    assert np.all((sp.features != 0).sum(1) <= 10)
    assert np.all(np.diff(sp.errors) <= 1e-12 * sp.errors[0])


def test_semi_nmf_bad_input() -> None:
    with pytest.raises(NeuronscopeError, match="keep"):
        semi_nmf(np.ones((10, 3)), k=2, keep=1.5)
    with pytest.raises(NeuronscopeError, match="samples"):
        semi_nmf(np.ones((3, 3)), k=5)


def test_minilm_ffn_modules_on_a_subset(minilm, small_corpus) -> None:
    """Real model: co-firing counts of two MiniLM FFNs streamed over 48 documents equal the
    binary Gram of the activations exactly; every neuron is in a module or unassigned, and the
    modules are far more modular than chance (a shuffled-label partition scores ~0)."""
    from neuronscope.analyses.modules import _objective, cofiring_model, modules_from_cofiring
    from neuronscope.recording import forward_batches
    from neuronscope.sources.text import TextSource

    model, tok = minilm
    sites = "encoder.layer.0.intermediate,encoder.layer.5.intermediate"
    src = TextSource(small_corpus, tok, batch_size=16, max_tokens=48)
    cfs = cofiring_model(model, src, sites)
    acts = [a["encoder.layer.5.intermediate"] for _, a in forward_batches(model, src, sites)]
    m = (np.concatenate(acts) > 0).astype(np.int64)
    assert np.array_equal(cfs["encoder.layer.5.intermediate"].total.result()["cofire"], m.T @ m)
    for cf in cfs.values():
        mods = modules_from_cofiring(cf, seeds=2)
        assert mods.sizes.sum() + mods.n_unassigned == 1536
        assert mods.n_modules >= 2 and mods.modularity > 0.1
        rng = np.random.default_rng(0)
        shuffled = mods.labels.copy()
        ok = shuffled >= 0
        shuffled[ok] = rng.permutation(shuffled[ok])
        assert _objective(mods.weights, shuffled, 1.0, "modularity") < 0.5 * mods.modularity
