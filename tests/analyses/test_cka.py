"""CKA: closed forms (Kornblith et al. 2019 Gram-matrix definitions), invariances, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import ortho_group

from neuronscope.analyses.cka import debiased_cka, deconfounded_cka, linear_cka, rbf_cka
from neuronscope.errors import NeuronscopeError


def _center_gram(k: np.ndarray, unbiased: bool = False) -> np.ndarray:
    """Kornblith et al.'s ``center_gram`` (reference, n x n)."""
    k = k.copy()
    n = k.shape[0]
    if unbiased:
        np.fill_diagonal(k, 0)
        means = np.sum(k, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        k -= means[:, None]
        k -= means[None, :]
        np.fill_diagonal(k, 0)
    else:
        h = np.eye(n) - 1.0 / n
        k = h @ k @ h
    return k


def _gram_cka(kx: np.ndarray, ky: np.ndarray, unbiased: bool = False) -> float:
    a, b = _center_gram(kx, unbiased), _center_gram(ky, unbiased)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _data(n: int, p: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 3.0
    y = x[:, : min(p, q)] @ rng.normal(size=(min(p, q), q)) + 0.7 * rng.normal(size=(n, q))
    return x, y


@pytest.mark.parametrize("n,p,q", [(120, 10, 14), (30, 80, 60)])  # feature path, Gram path
def test_linear_cka_equals_gram_definition(n: int, p: int, q: int) -> None:
    x, y = _data(n, p, q)
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x @ x.T, y @ y.T), abs=1e-10)
    assert debiased_cka(x, y) == pytest.approx(_gram_cka(x @ x.T, y @ y.T, unbiased=True), abs=1e-10)


def test_cka_invariances_hold_and_fail() -> None:
    x, y = _data(200, 12, 12, seed=1)
    base = linear_cka(x, y)
    q = ortho_group.rvs(12, random_state=3)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(5.0 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert debiased_cka(x @ q * 3.0, y) == pytest.approx(debiased_cka(x, y), abs=1e-10)
    assert rbf_cka(x @ q, y) == pytest.approx(rbf_cka(x, y), abs=1e-10)
    # an arbitrary invertible (badly conditioned) linear map changes CKA
    a = np.diag(np.geomspace(1, 100, 12)) @ np.random.default_rng(4).normal(size=(12, 12))
    assert abs(np.linalg.det(a)) > 1e-6
    assert abs(linear_cka(x @ a, y) - base) > 0.02
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_float32_blocks_accumulate_in_float64() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9000, 8)) + 100.0  # large offset: centering matters
    y = x @ rng.normal(size=(8, 5)) + rng.normal(size=(9000, 5))
    v64 = linear_cka(x, y)
    v32 = linear_cka(x.astype(np.float32), y.astype(np.float32))
    assert v32 == pytest.approx(v64, abs=1e-5)


def test_rbf_cka_matches_dense_kernel_and_chunks() -> None:
    x, y = _data(150, 6, 9, seed=5)

    def gram_rbf(a: np.ndarray, threshold: float = 1.0) -> np.ndarray:
        dot = a @ a.T
        sq = np.diag(dot)
        d = -2 * dot + sq[:, None] + sq[None, :]
        return np.exp(-d / (2 * threshold**2 * np.median(d)))

    ref = _gram_cka(gram_rbf(x, 0.8), gram_rbf(y, 0.8))
    assert rbf_cka(x, y, threshold=0.8) == pytest.approx(ref, abs=1e-10)
    assert rbf_cka(x, y, threshold=0.8, chunk=7) == pytest.approx(ref, abs=1e-10)
    with pytest.warns(UserWarning, match="O\\(n\\^2\\)"):
        rbf_cka(x, y, warn_above=100)


def test_deconfounded_cka_equals_explicit_regression_and_removes_confound() -> None:
    rng = np.random.default_rng(6)
    n = 80
    z = rng.normal(size=(n, 10))  # input space
    x = np.hstack([z @ rng.normal(size=(10, 6)), rng.normal(size=(n, 4))])
    y = np.hstack([z @ rng.normal(size=(10, 6)), rng.normal(size=(n, 4))])
    h = np.eye(n) - 1.0 / n
    kx, ky, k0 = (h @ (a @ a.T) @ h for a in (x, y, z))

    def resid(k: np.ndarray) -> np.ndarray:
        return k - (k * k0).sum() / (k0 * k0).sum() * k0

    rx, ry = resid(kx), resid(ky)
    ref = (rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum())
    assert deconfounded_cka(x, y, z) == pytest.approx(ref, abs=1e-10)
    # x and y share only the input structure: deconfounding lowers their similarity
    assert deconfounded_cka(x, y, z) < linear_cka(x, y) - 0.1
    q = ortho_group.rvs(10, random_state=1)
    assert deconfounded_cka(x @ q, y, z) == pytest.approx(deconfounded_cka(x, y, z), abs=1e-10)
    with pytest.raises(NeuronscopeError, match="explained by the inputs"):
        deconfounded_cka(z, y, z)


def test_bad_input() -> None:
    x, y = _data(50, 5, 5)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(NeuronscopeError, match="NaN"):
        linear_cka(bad, y)
    with pytest.raises(NeuronscopeError, match="at least 3"):
        linear_cka(x[:2], y[:2])
    with pytest.raises(NeuronscopeError, match="samples"):
        linear_cka(x, y[:40])
    with pytest.raises(NeuronscopeError, match="constant"):
        linear_cka(np.ones((50, 4)), y)
    # constant columns carry no variance: CKA is unchanged by them
    padded = np.hstack([x, np.full((50, 3), 7.0)])
    assert linear_cka(padded, y) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_dataarrays_are_aligned_by_stimulus() -> None:
    x, y = _data(40, 6, 7)
    ids = np.array([f"s{i}" for i in range(40)])
    perm = np.random.default_rng(0).permutation(40)
    dx = xr.DataArray(x, dims=("sample", "neuron"), coords={"stimulus": ("sample", ids)})
    dy = xr.DataArray(y[perm], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids[perm])})
    assert linear_cka(dx, dy) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x, y[perm]) != pytest.approx(linear_cka(x, y), abs=1e-3)
    other = dy.assign_coords(stimulus=("sample", np.array([f"t{i}" for i in range(40)])))
    with pytest.raises(NeuronscopeError, match="different stimulus ids"):
        linear_cka(dx, other)
