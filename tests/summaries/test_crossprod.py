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


def test_crossstats_is_a_layer_over_crossproducts() -> None:
    x, y = _pair(1200, np.float32, seed=3)
    cs = CrossStats(6, 4).update(x[:500], y[:500]).merge(CrossStats(6, 4).update(x[500:], y[500:]))
    cp = CrossProducts.from_arrays(x, y, gram=True)
    a, b = cs.result(), cp.sufficient_stats()
    assert a.keys() == b.keys() == {"n", "sum_x", "sum_y", "xtx", "yty", "xty"}
    for k in ("xtx", "yty", "xty"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    assert linear_cka_from_stats(**b) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert CrossStats.from_state(*cs.state()).result()["n"] == 1200
    with pytest.raises(NeuronscopeError, match="different shapes"):
        cs.merge(CrossStats(6, 4, full_yty=False))
    # ridge takes CrossProducts folds as well as CrossStats folds, with the same answer
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    folds = np.array_split(np.arange(1200), 4)
    by_stats = ridge_from_stats([CrossStats(6, 4, full_yty=False).update(x64[f], y64[f]) for f in folds])
    by_cross = ridge_from_stats([CrossProducts.from_arrays(x64[f], y64[f], gram="x") for f in folds])
    np.testing.assert_array_equal(by_stats["alpha"], by_cross["alpha"])
    np.testing.assert_allclose(by_stats["coef"], by_cross["coef"], rtol=1e-12, atol=1e-12)
