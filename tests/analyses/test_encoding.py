"""Ridge encoding models: parity with scikit-learn (chosen α per target, predictions,
coefficients), primal and dual forms, noise ceilings on simulated repeats, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold

from neuronscope.analyses.compare import CrossStats, ridge_from_stats
from neuronscope.analyses.encoding import (
    RidgeEncoder,
    encoding_ceiling,
    encoding_score,
    ncsnr,
    split_half_reliability,
)
from neuronscope.errors import NeuronscopeError

ALPHAS = np.logspace(-2, 4, 7)


def _data(n: int, p: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 1.0
    w = rng.normal(size=(p, t)) * rng.uniform(0.02, 1.0, size=t)  # varied SNR -> varied α
    y = x @ w + rng.normal(size=(n, t)) * rng.uniform(0.5, 5.0, size=t) + 3.0
    return x, y


@pytest.mark.parametrize("n,p", [(100, 12), (40, 70)])  # primal, dual
def test_alpha_and_predictions_match_sklearn(n: int, p: int) -> None:
    x, y = _data(n, p, 6)
    enc = RidgeEncoder(alphas=ALPHAS, cv=5, keep_coef=True).fit(x, y)
    assert enc.solver_ == ("primal" if p < n else "dual")
    xt = np.random.default_rng(9).normal(size=(15, p))
    pred = enc.predict(xt)
    for j in range(y.shape[1]):
        gs = GridSearchCV(Ridge(), {"alpha": ALPHAS}, cv=KFold(5), scoring="neg_mean_squared_error")
        gs.fit(x, y[:, j])
        assert enc.alpha_[j] == gs.best_params_["alpha"]
        ref = Ridge(alpha=enc.alpha_[j]).fit(x, y[:, j])
        np.testing.assert_allclose(pred[:, j], ref.predict(xt), atol=1e-8)
        np.testing.assert_allclose(enc.coef_[:, j], ref.coef_, atol=1e-8)
        assert -gs.best_score_ == pytest.approx(-enc.cv_scores_[:, j].max(), rel=1e-8)
    assert len(set(enc.alpha_.tolist())) > 1  # per-target α differ
    lazy = RidgeEncoder(alphas=ALPHAS, cv=5, batch_size=4).fit(x, y)
    np.testing.assert_allclose(lazy.predict(xt), pred, atol=1e-8)
    assert not hasattr(lazy, "coef_")
    from sklearn.base import clone

    again = clone(enc).fit(x, y)  # a scikit-learn estimator: clone / get_params work
    np.testing.assert_array_equal(again.alpha_, enc.alpha_)
    assert again.get_params()["cv"] == 5
    r2 = enc.score(x, y)
    sk_r2 = np.mean([Ridge(alpha=a).fit(x, y[:, j]).score(x, y[:, j]) for j, a in enumerate(enc.alpha_)])
    assert r2 == pytest.approx(sk_r2, abs=1e-10)


def test_encoding_score_separates_signal_from_noise() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 10))
    y = np.hstack([x @ rng.normal(size=(10, 3)) + 0.5 * rng.normal(size=(120, 3)), rng.normal(size=(120, 3))])
    r = encoding_score(x, y, alphas=ALPHAS)
    assert (r[:3] > 0.8).all() and (np.abs(r[3:]) < 0.3).all()
    fast = encoding_score(x, y, alphas=ALPHAS, inner_cv=None)
    np.testing.assert_allclose(fast[:3], r[:3], atol=0.05)
    const = np.hstack([y, np.full((120, 1), 2.0)])
    assert encoding_score(x, const, alphas=ALPHAS)[-1] == 0.0


def test_noise_ceilings_on_simulated_repeats() -> None:
    rng = np.random.default_rng(2)
    m, r, t = 400, 6, 4
    sig_sd, noise_sd = np.array([1.0, 1.0, 0.5, 0.0]), np.array([1.0, 2.0, 1.0, 1.0])
    s = rng.normal(size=(m, t)) * sig_sd
    reps = s[:, None] + rng.normal(size=(m, r, t)) * noise_sd
    with np.errstate(divide="ignore", invalid="ignore"):
        true_ncsnr = sig_sd / noise_sd
    np.testing.assert_allclose(ncsnr(reps)[:3], true_ncsnr[:3], rtol=0.12)
    assert ncsnr(reps)[3] < 0.15
    true_ceiling = np.sqrt(true_ncsnr**2 / (true_ncsnr**2 + 1 / r))
    np.testing.assert_allclose(encoding_ceiling(reps, "ncsnr")[:3], true_ceiling[:3], atol=0.05)
    np.testing.assert_allclose(encoding_ceiling(reps, "split_half")[:3], true_ceiling[:3], atol=0.05)
    rel = split_half_reliability(reps)
    assert rel[0] == pytest.approx(true_ceiling[0] ** 2, abs=0.05)
    # a model that knows the true signal reaches the ceiling: normalised r ~ 1
    feats = np.hstack([s, rng.normal(size=(m, 2))])
    rn = encoding_score(feats, reps[..., :3], alphas=ALPHAS, ceiling="ncsnr", inner_cv=None)
    np.testing.assert_allclose(rn, 1.0, atol=0.08)


def test_ridge_from_streamed_fold_statistics_equals_in_memory() -> None:
    x, y = _data(100, 8, 5, seed=3)
    folds = np.array_split(np.arange(100), 5)
    stats = []
    for f in folds:
        cs = CrossStats(8, 5, full_yty=False)
        for chunk in np.array_split(f, 3):  # several batches per fold
            cs.update(x[chunk], y[chunk])
        stats.append(cs)
    out = ridge_from_stats(stats, ALPHAS)
    enc = RidgeEncoder(alphas=ALPHAS, cv=5, keep_coef=True).fit(x, y)
    np.testing.assert_array_equal(out["alpha"], enc.alpha_)
    np.testing.assert_allclose(-out["cv_mse"], enc.cv_scores_, rtol=1e-8)
    np.testing.assert_allclose(out["coef"], enc.coef_, atol=1e-8)
    np.testing.assert_allclose(out["intercept"], enc.intercept_, atol=1e-8)


def test_bad_input() -> None:
    x, y = _data(30, 4, 2)
    # RidgeEncoder validates like scikit-learn (ValueError); encoding_score with our one-line errors
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        RidgeEncoder().fit(x, y[:20])
    with pytest.raises(NeuronscopeError, match="30 samples and Y has 20"):
        encoding_score(x, y[:20])
    bad = y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RidgeEncoder().fit(x, bad)
    with pytest.raises(NeuronscopeError, match="NaN"):
        encoding_score(x, bad)
    with pytest.raises(NeuronscopeError, match="not fitted"):
        RidgeEncoder().predict(x)
    with pytest.raises(NeuronscopeError, match="positive"):
        RidgeEncoder(alphas=[0.0, 1.0]).fit(x, y)
    with pytest.raises(NeuronscopeError, match="scoring"):
        RidgeEncoder(scoring="r2").fit(x, y)
    with pytest.raises(NeuronscopeError, match="repeats"):
        encoding_score(x, y, ceiling="ncsnr")
    with pytest.raises(ValueError, match="X has 3 features, but RidgeEncoder is expecting 4"):
        RidgeEncoder(alphas=ALPHAS).fit(x, y).predict(x[:, :3])


def test_scikit_learn_estimator_checks() -> None:
    """scikit-learn's own estimator checks (parameters stored in __init__, validated in fit,
    clone/get_params/set_params, n_features_in_, input validation, 1-D and 2-D targets).
    Only the array-API check does not apply (it needs SCIPY_ARRAY_API set before import)."""
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(RidgeEncoder(cv=3), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    not_run = {r["check_name"] for r in results if r["status"] != "passed"}
    assert not_run <= {"check_array_api_input"}
    assert sum(r["status"] == "passed" for r in results) >= 50


def test_clone_keeps_parameters_and_fit_validates() -> None:
    from sklearn.base import clone

    enc = RidgeEncoder(alphas=(1.0, 10.0), cv=4, scoring="r")
    twin = clone(enc)
    assert twin.get_params() == enc.get_params()
    twin.set_params(cv=1)  # stored as given; refused only when fitting
    x, y = _data(30, 4, 2)
    with pytest.raises(ValueError, match="cv must be an integer >= 2"):
        twin.fit(x, y)
