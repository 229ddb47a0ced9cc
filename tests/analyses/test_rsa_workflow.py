"""The RSA model-comparison workflow: equal to rsatoolbox's eval_fixed / eval_bootstrap_rdm /
eval_bootstrap_pattern / eval_bootstrap on the same data and the same bootstrap samples,
reproducible, CI coverage at the nominal rate, tests, output and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.inference import (  # noqa: E402
    eval_bootstrap,
    eval_bootstrap_pattern,
    eval_bootstrap_rdm,
    eval_fixed,
)
from rsatoolbox.model import ModelFixed  # noqa: E402
from rsatoolbox.rdm import RDMs as TBRDMs  # noqa: E402
from rsatoolbox.util.inference_util import ranksum_pair_test, t_tests  # noqa: E402

from neuronscope.analyses.rsa import rdm  # noqa: E402
from neuronscope.analyses.rsa_workflow import rsa_models  # noqa: E402
from neuronscope.errors import NeuronscopeError  # noqa: E402
from neuronscope.rdms import RDMs  # noqa: E402

THEIRS = {"pearson": "corr", "spearman": "spearman", "cosine": "cosine", "rho-a": "rho-a",
          "corr_cov": "corr_cov", "cosine_cov": "cosine_cov", "kendall": "tau-a"}


def _family(n: int = 14, k: int = 6, n_models: int = 3, seed: int = 0) -> tuple[RDMs, RDMs]:
    """Subjects: a shared population plus noise; models: the population plus more noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4)) @ rng.normal(size=(4, 20))
    data = np.stack([rdm(base + 1.2 * rng.normal(size=base.shape)) for _ in range(k)])
    models = np.stack([rdm(base + s * rng.normal(size=base.shape)) for s in np.linspace(0.5, 3, n_models)])
    return (RDMs(models, names=[f"m{i}" for i in range(n_models)]),
            RDMs(data, names=[f"s{i}" for i in range(k)]))


def _tb_models(models: RDMs) -> list:
    return [ModelFixed(nm, TBRDMs(models.dissimilarities[i][None])) for i, nm in enumerate(models.names)]


def _replay(seed: int, n_boot: int, draws: list[int]) -> list[np.ndarray]:
    """The indices rsatoolbox draws after np.random.seed(seed): one randint(0, d, d) per
    entry of ``draws`` per sample."""
    np.random.seed(seed)
    out: list[list[np.ndarray]] = [[] for _ in draws]
    for _ in range(n_boot):
        for j, d in enumerate(draws):
            out[j].append(np.random.randint(0, d, size=d))
    return [np.array(o) for o in out]


@pytest.mark.parametrize("ours", ["pearson", "spearman", "cosine", "corr_cov", "cosine_cov", "rho-a"])
def test_scores_ceiling_and_subject_bootstrap_equal_rsatoolbox(ours: str) -> None:
    models, data = _family()
    data.dissimilarities[2] = np.round(data.dissimilarities[2], 1)  # ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = eval_fixed(_tb_models(models), TBRDMs(data.dissimilarities), method=THEIRS[ours])
        np.random.seed(3)
        boot = eval_bootstrap_rdm(_tb_models(models), TBRDMs(data.dissimilarities), method=THEIRS[ours], N=40)
    (subj,) = _replay(3, 40, [len(data)])
    res = rsa_models(models, data, method=ours, boot_subjects=subj)
    np.testing.assert_allclose(res.scores, fixed.evaluations[0], atol=1e-10)
    np.testing.assert_allclose(res.mean, fixed.get_means(), atol=1e-10)
    assert res.noise_ceiling == pytest.approx(tuple(fixed.noise_ceiling), abs=1e-10)
    np.testing.assert_allclose(res.boot_means, boot.evaluations, atol=1e-10)
    np.testing.assert_allclose(res.boot_noise_ceiling, boot.noise_ceiling.T, atol=1e-10)
    np.testing.assert_allclose(res.p_pairwise_ttest, t_tests(fixed.evaluations, fixed.diff_var, fixed.dof),
                               atol=1e-10)
    np.testing.assert_allclose(res.p_pairwise_wilcoxon, ranksum_pair_test(fixed.evaluations), atol=1e-12)
    assert res.models == ["m0", "m1", "m2"] and res.subjects == [f"s{i}" for i in range(6)]


@pytest.mark.parametrize("ours", ["pearson", "spearman", "cosine", "rho-a", "corr_cov", "kendall"])
def test_stimulus_and_both_bootstraps_equal_rsatoolbox(ours: str) -> None:
    """Resampled stimuli keep their multiplicity (rsatoolbox subsample_pattern); the
    weighted fast path (pearson, spearman, cosine, rho-a) and the expanded path (others)."""
    models, data = _family(n=10, k=5)
    n_boot = 12 if ours == "kendall" else 25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(5)
        pat = eval_bootstrap_pattern(_tb_models(models), TBRDMs(data.dissimilarities), method=THEIRS[ours], N=n_boot)
        np.random.seed(6)
        both = eval_bootstrap(_tb_models(models), TBRDMs(data.dissimilarities), method=THEIRS[ours], N=n_boot)
    (stim,) = _replay(5, n_boot, [10])
    res = rsa_models(models, data, method=ours, bootstrap="stimuli", boot_stimuli=stim)
    np.testing.assert_allclose(res.boot_means, pat.evaluations, atol=1e-10)
    np.testing.assert_allclose(res.boot_noise_ceiling, pat.noise_ceiling.T, atol=1e-10)
    subj, stim2 = _replay(6, n_boot, [5, 10])
    res2 = rsa_models(models, data, method=ours, bootstrap="both", boot_subjects=subj, boot_stimuli=stim2)
    np.testing.assert_allclose(res2.boot_means, both.evaluations, atol=1e-10)
    np.testing.assert_allclose(res2.boot_noise_ceiling, both.noise_ceiling.T, atol=1e-10)


def test_missing_pairs_in_the_data() -> None:
    """The same pairs missing in every subject (rsatoolbox's case): equal to eval_fixed and
    eval_bootstrap_rdm with the models' RDMs missing the same pairs."""
    models, data = _family(n=12, k=5)
    data.dissimilarities[:, [3, 17]] = np.nan
    mv = models.dissimilarities.copy()
    mv[:, [3, 17]] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(8)
        boot = eval_bootstrap_rdm(_tb_models(RDMs(mv, names=models.names)), TBRDMs(data.dissimilarities),
                                  method="spearman", N=20)
    (subj,) = _replay(8, 20, [5])
    res = rsa_models(models, data, method="spearman", boot_subjects=subj)
    np.testing.assert_allclose(res.boot_means, boot.evaluations, atol=1e-10)
    np.testing.assert_allclose(res.boot_noise_ceiling, boot.noise_ceiling.T, atol=1e-10)


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    models, data = _family()
    a = rsa_models(models, data, n_boot=200, seed=4, bootstrap="both", method="spearman")
    b = rsa_models(models, data, n_boot=200, seed=4, bootstrap="both", method="spearman")
    c = rsa_models(models, data, n_boot=200, seed=5, bootstrap="both", method="spearman")
    np.testing.assert_array_equal(a.boot_means, b.boot_means)
    np.testing.assert_array_equal(a.ci_low, b.ci_low)
    assert not np.array_equal(a.boot_means, c.boot_means)
    assert (a.ci_low < a.mean).all() and (a.mean < a.ci_high).all()


def test_subject_ci_covers_the_population_value_at_the_nominal_rate() -> None:
    """200 simulated experiments of 20 subjects whose RDM is the model's plus i.i.d. noise:
    per-subject Pearson scores have a population mean E[r] (here from 400,000 simulated
    subjects); a 90% percentile CI must cover it in 0.90 ± 3 binomial SDs (± 0.064)
    of the experiments."""
    rng = np.random.default_rng(0)
    m = 45
    model = rng.gamma(2.0, size=m)
    sd = 1.5 * model.std()

    def subjects(k: int) -> np.ndarray:
        return model[None] + sd * rng.standard_normal((k, m)) * (0.5 + rng.random((k, 1)))

    big = subjects(400_000)
    bc = big - big.mean(1, keepdims=True)
    mc = model - model.mean()
    truth = float(np.mean(bc @ mc / (np.linalg.norm(bc, axis=1) * np.linalg.norm(mc))))
    hits = 0
    for e in range(200):
        res = rsa_models(RDMs(model[None], names=["model"]), RDMs(subjects(20)), n_boot=1000, seed=e, ci=0.9)
        hits += bool(res.ci_low[0] <= truth <= res.ci_high[0])
    assert abs(hits / 200 - 0.90) <= 0.064, hits


def test_models_as_populations_run_sites_and_alignment() -> None:
    rng = np.random.default_rng(9)
    n = 12
    ids = np.array([f"im{i:02d}" for i in range(n)])
    pops = [rng.normal(size=(n, 15)) for _ in range(4)]
    data = RDMs(np.stack([rdm(p + 0.5 * rng.normal(size=p.shape)) for p in pops]), stimulus=ids)
    perm = rng.permutation(n)
    site = xr.DataArray(pops[0][perm], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids[perm])})
    res = rsa_models({"site": site, "array": pops[1], "rdm": rdm(pops[2])}, data, bootstrap="none")
    assert res.models == ["site", "array", "rdm"]
    direct = np.corrcoef(np.vstack([rdm(pops[0]), data.dissimilarities]))[0, 1:]
    np.testing.assert_allclose(res.scores[0], direct, atol=1e-12)


def test_outputs_json_frame_and_figure(tmp_path: Path) -> None:
    models, data = _family()
    res = rsa_models(models, data, n_boot=100)
    d = json.loads(res.to_json())
    assert d["models"] == ["m0", "m1", "m2"] and len(d["scores"][0]) == 6
    assert d["noise_ceiling"]["lower"] == pytest.approx(res.noise_ceiling[0])
    df = res.to_frame()
    assert list(df.index) == ["m0", "m1", "m2"] and df.loc["m1", "mean"] == pytest.approx(res.mean[1])
    pw = res.pairwise_frame()
    assert len(pw) == 3 and (pw["p_bootstrap"] <= 1).all()
    png = res.plot(tmp_path / "rsa.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = res.plot(tmp_path / "rsa.svg").read_text()
    assert "<svg" in svg and "m2" in svg and "#cccccc" in svg  # model labels, the grey ceiling band
    with pytest.raises(NeuronscopeError, match="png or .svg"):
        res.plot(tmp_path / "rsa.pdf")


def test_bad_input() -> None:
    models, data = _family()
    small = RDMs(models.dissimilarities[:, :45])  # 10 stimuli
    with pytest.raises(NeuronscopeError, match="covers 10 stimuli and the data 14"):
        rsa_models(small, data)
    with pytest.raises(NeuronscopeError, match="unknown bootstrap"):
        rsa_models(models, data, bootstrap="pairs")
    with pytest.raises(NeuronscopeError, match="unknown RDM comparator"):
        rsa_models(models, data, method="bogus")
    with pytest.raises(NeuronscopeError, match="boot_subjects must be"):
        rsa_models(models, data, boot_subjects=np.zeros((3, 2), dtype=int))
    res = rsa_models(models, data, method="bures", n_boot=20)
    assert res.noise_ceiling is None and np.isfinite(res.mean).all()
