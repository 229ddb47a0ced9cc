"""Shape metrics: Procrustes/angular closed forms, metric axioms, partial whitening, and the
stochastic shape metric's known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from neuronscope.analyses.shape import (
    angular_shape_distance,
    partial_whiten,
    procrustes_distance,
    stochastic_shape_distance,
)
from neuronscope.errors import NeuronscopeError


def _rand(n: int = 60, p: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, p)) * np.linspace(0.5, 3, p)


def test_procrustes_matches_scipy_orthogonal_procrustes() -> None:
    x, y = _rand(seed=1), _rand(seed=2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    r, _ = orthogonal_procrustes(yc, xc)
    assert procrustes_distance(x, y) == pytest.approx(np.linalg.norm(xc - yc @ r), abs=1e-9)
    xn, yn = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    r, _ = orthogonal_procrustes(yn, xn)
    cos = np.sum(xn * (yn @ r))
    assert angular_shape_distance(x, y) == pytest.approx(np.arccos(cos), abs=1e-9)


def test_procrustes_zero_for_rotated_copy_and_metric_axioms() -> None:
    x = _rand(seed=3)
    q = ortho_group.rvs(7, random_state=4)
    assert procrustes_distance(x, x @ q + 2.5) == pytest.approx(0.0, abs=1e-6)
    assert angular_shape_distance(x, 3.0 * x @ q) == pytest.approx(0.0, abs=1e-6)
    assert procrustes_distance(x, x @ np.diag(np.linspace(1, 2, 7))) > 0.1
    rng = np.random.default_rng(5)
    for _ in range(15):
        widths = rng.integers(3, 9, size=3)
        a, b, c = (rng.normal(size=(25, w)) * rng.uniform(0.5, 2) for w in widths)
        for alpha in (1.0, 0.5, 0.0):
            dab = procrustes_distance(a, b, alpha)
            assert dab == pytest.approx(procrustes_distance(b, a, alpha), abs=1e-9)
            assert dab <= procrustes_distance(a, c, alpha) + procrustes_distance(c, b, alpha) + 1e-9
            tab = angular_shape_distance(a, b, alpha)
            assert tab <= angular_shape_distance(a, c, alpha) + angular_shape_distance(c, b, alpha) + 1e-9


def test_partial_whitening() -> None:
    x = _rand(seed=6)
    w0 = partial_whiten(x, 0.0)
    cov = w0.T @ w0
    np.testing.assert_allclose(cov / cov[0, 0], np.eye(7), atol=1e-9)  # fully whitened
    assert np.sum(w0**2) == pytest.approx(np.sum((x - x.mean(0)) ** 2))  # variance preserved
    # alpha=0 makes the distance invariant to invertible linear maps (CCA-like)
    a = np.random.default_rng(7).normal(size=(7, 7))
    y = _rand(seed=8)
    assert angular_shape_distance(x @ a, y, 0.0) == pytest.approx(angular_shape_distance(x, y, 0.0), abs=1e-8)
    assert angular_shape_distance(x @ a, y, 1.0) != pytest.approx(angular_shape_distance(x, y, 1.0), abs=1e-3)
    with pytest.raises(NeuronscopeError, match="alpha"):
        procrustes_distance(x, y, alpha=1.5)


@pytest.mark.parametrize("n,p,q", [(12, 40, 30), (320, 280, 260), (270, 300, 20)])
def test_all_shapes_match_the_closed_form(n: int, p: int, q: int) -> None:
    """Wide (SVD path), tall (eigh path) and large (single-thread LAPACK) populations."""
    x, y = _rand(n=n, p=p, seed=9), _rand(n=n, p=q, seed=10)
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuc = np.linalg.svd(xc.T @ yc, compute_uv=False).sum()
    ref = np.sqrt(np.sum(xc**2) + np.sum(yc**2) - 2 * nuc)
    assert procrustes_distance(x, y) == pytest.approx(ref, rel=1e-9)


def _noisy(m: int, r: int, p: int, seed: int, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(m, p))
    return mu[:, None] + noise * rng.normal(size=(m, r, p)) * np.linspace(0.2, 1.5, p)


def test_stochastic_shape_known_answers() -> None:
    x = _noisy(12, 6, 4, seed=11)
    q = ortho_group.rvs(4, random_state=12)
    assert stochastic_shape_distance(x, x @ q + 1.0) == pytest.approx(0.0, abs=1e-6)
    # alpha=2: means only -> sqrt(2/M) x Procrustes distance of the means
    y = _noisy(12, 6, 4, seed=13)
    pm = procrustes_distance(x.mean(1), y.mean(1))
    assert stochastic_shape_distance(x, y, alpha=2.0) == pytest.approx(np.sqrt(2 / 12) * pm, abs=1e-6)
    # isotropic Gaussians with equal means: B^2 = p (sx - sy)^2 per stimulus
    mu = np.random.default_rng(14).normal(size=(5, 3))
    gx = (mu, np.stack([4.0 * np.eye(3)] * 5))
    gy = (mu, np.stack([1.0 * np.eye(3)] * 5))
    for alpha in (0.0, 1.0):
        expect = np.sqrt((2 - alpha) * 3 * (2.0 - 1.0) ** 2)
        assert stochastic_shape_distance(gx, gy, alpha=alpha) == pytest.approx(expect, abs=1e-8)
    d_xy, d_yx = stochastic_shape_distance(x, y), stochastic_shape_distance(y, x)
    assert d_xy == pytest.approx(d_yx, rel=1e-3)
    z = _noisy(12, 6, 4, seed=15)
    assert d_xy <= stochastic_shape_distance(x, z) + stochastic_shape_distance(z, y) + 1e-6


def test_stochastic_shape_bad_input() -> None:
    with pytest.raises(NeuronscopeError, match="repeats"):
        stochastic_shape_distance(np.ones((5, 1, 3)), np.ones((5, 1, 3)))
    with pytest.raises(NeuronscopeError, match="same stimuli"):
        stochastic_shape_distance(_noisy(5, 3, 2, 0), _noisy(6, 3, 2, 1))
