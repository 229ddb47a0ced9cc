"""CrossProducts as the one accumulator of two-population sufficient statistics: x-only Gram,
float64 inputs, NaN/Inf rejection, and CrossStats / ``*_from_stats`` built on it."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscope.analyses.compare import (
    CrossStats,
    linear_cka,
    linear_cka_from_stats,
    ridge_from_stats,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import summary_from_state, tree_merge
from neuronscope.summaries.crossprod import CrossProducts


def _pair(n: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * 2 + 7
    y = x[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(n, 4)) - 3
    return x.astype(dtype), y.astype(dtype)


def test_gram_x_keeps_only_xtx_and_the_diagonal_of_yty() -> None:
    x, y = _pair(2000, np.float32)
    parts = [CrossProducts.from_arrays(x[i : i + 300], y[i : i + 300], gram="x", block_rows=64)
             for i in range(0, 2000, 300)]
    cp = summary_from_state("crossprod", *tree_merge(parts).state())
    assert (cp.gram, cp.gram_x, cp.gram_y, cp.gyy) == ("x", True, False, None)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    st = cp.sufficient_stats()
    assert st["n"] == 2000 and st["yty"].shape == (4,)
    np.testing.assert_allclose(st["xtx"], xd.T @ xd, rtol=1e-6)
    np.testing.assert_allclose(st["xty"], xd.T @ yd, rtol=1e-6, atol=1e-6 * np.abs(xd.T @ yd).max())
    np.testing.assert_allclose(st["yty"], (yd**2).sum(0), rtol=1e-6)
    np.testing.assert_allclose(cp.cov_xx(), np.cov(xd.T), rtol=1e-5, atol=1e-6)
    with pytest.raises(NeuronscopeError, match="gram=True"):
        cp.cov_yy()
    # swapping roles turns the x-only Gram into a y-only Gram
    t = cp.transpose()
    assert t.gram == "y"
    np.testing.assert_allclose(t.cov_yy(), cp.cov_xx())
    # a summary lacking a Gram the receiver keeps cannot be merged into it
    with pytest.raises(NeuronscopeError, match="same gram"):
        CrossProducts(6, 4, gram=True).merge(cp)
    with pytest.raises(NeuronscopeError, match="XᵀX"):
        CrossProducts.from_arrays(x, y).sufficient_stats()
    with pytest.raises(NeuronscopeError, match="gram must be"):
        CrossProducts(6, 4, gram="xy")


def test_float64_batches_are_not_rounded_to_float32() -> None:
    x, y = _pair(900, np.float64, seed=1)
    cp = CrossProducts(6, 4, gram=True, block_rows=128)
    for i in range(0, 900, 100):
        cp.update_pair(x[i : i + 100], y[i : i + 100])
    raw = cp.raw_sums()
    # float32 rounding of the data alone would leave relative errors of ~1e-7
    np.testing.assert_allclose(raw["sum_xy"], x.T @ y, rtol=1e-12)
    np.testing.assert_allclose(raw["sum_xx"], x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(raw["sum_yy"], y.T @ y, rtol=1e-12)
    # float32 first, float64 later: the float32 rows keep float32 accuracy, the rest is exact
    x32 = x[:450].astype(np.float32)
    mixed = CrossProducts(6, 4, block_rows=128)
    mixed.update_pair(x32, y[:450].astype(np.float32))
    mixed.update_pair(x[450:], y[450:])
    xm = np.vstack([x32.astype(np.float64), x[450:]])
    ym = np.vstack([y[:450].astype(np.float32).astype(np.float64), y[450:]])
    np.testing.assert_allclose(mixed.raw_sums()["sum_xy"], xm.T @ ym, rtol=1e-7)
    np.testing.assert_allclose(mixed.correlation(), np.corrcoef(xm.T, ym.T)[:6, 6:], atol=1e-7)


def test_nonfinite_batch_is_rejected_and_leaves_the_statistics_untouched() -> None:
    x, y = _pair(300, np.float32, seed=2)
    cp = CrossProducts(6, 4, gram=True, block_rows=64)
    cp.update_pair(x[:100], y[:100])
    before = cp.raw_sums()
    for bad_x, bad_y in ((np.nan, 0.0), (0.0, np.inf), (0.0, -np.inf)):
        xb, yb = x[100:].copy(), y[100:].copy()
        xb[150, 2] += bad_x
        yb[7, 1] += bad_y
        with pytest.raises(NeuronscopeError, match="NaN or Inf"):
            cp.update_pair(xb, yb)
    after = cp.raw_sums()
    assert int(after["n"]) == 100
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_crossstats_sums_equal_numpy_and_ridge_equals_sklearn() -> None:
    """CrossStats merged from two parts holds the raw moments numpy computes on the whole,
    and ridge from per-fold statistics equals scikit-learn's Ridge at the chosen α."""
    from sklearn.linear_model import Ridge

    x, y = _pair(1200, np.float32, seed=3)
    cs = CrossStats(6, 4).update(x[:500], y[:500]).merge(CrossStats(6, 4).update(x[500:], y[500:]))
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    truth = {"n": 1200, "sum_x": xd.sum(0), "sum_y": yd.sum(0), "xtx": xd.T @ xd, "yty": yd.T @ yd,
             "xty": xd.T @ yd}
    got = cs.result()
    assert got.keys() == truth.keys()
    assert int(got["n"]) == 1200
    for k in ("sum_x", "sum_y", "xtx", "yty", "xty"):
        np.testing.assert_allclose(got[k], truth[k], rtol=2e-6)
    assert linear_cka_from_stats(**got) == pytest.approx(linear_cka(xd, yd), abs=1e-6)
    assert CrossStats.from_state(*cs.state()).result()["n"] == 1200
    with pytest.raises(NeuronscopeError, match="different shapes"):
        cs.merge(CrossStats(6, 4, full_yty=False))
    # ridge from fold statistics (CrossStats or CrossProducts folds): scikit-learn's Ridge
    folds = np.array_split(np.arange(1200), 4)
    by_stats = ridge_from_stats([CrossStats(6, 4, full_yty=False).update(xd[f], yd[f]) for f in folds])
    by_cross = ridge_from_stats([CrossProducts.from_arrays(xd[f], yd[f], gram="x") for f in folds])
    np.testing.assert_array_equal(by_stats["alpha"], by_cross["alpha"])
    for t, alpha in enumerate(by_stats["alpha"]):
        ref = Ridge(alpha=float(alpha)).fit(xd, yd[:, t])
        np.testing.assert_allclose(by_stats["coef"][:, t], ref.coef_, rtol=1e-8, atol=1e-10)
        assert by_stats["intercept"][t] == pytest.approx(ref.intercept_, rel=1e-8, abs=1e-10)
    # the chosen α minimises the held-out error computed by hand from the raw folds
    t = 0
    errs = []
    for a in (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6):
        sse = 0.0
        for f in folds:
            tr = np.setdiff1d(np.arange(1200), f)
            pred = Ridge(alpha=a).fit(xd[tr], yd[tr, t]).predict(xd[f])
            sse += float(((yd[f, t] - pred) ** 2).sum())
        errs.append(sse / 1200)
    np.testing.assert_allclose(by_stats["cv_mse"][:, t], errs, rtol=1e-8)
