"""CCA family: closed-form canonical correlations, invariance to invertible linear maps,
rank-deficient input, PWCCA weights against the reference algorithm, streamed statistics."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscope.analyses.cca import (
    canonical_correlations,
    cca_from_stats,
    mean_cca,
    pwcca,
    pwcca_from_stats,
    svcca,
    svcca_from_stats,
)
from neuronscope.errors import NeuronscopeError


def _pair(n: int = 300, p: int = 8, q: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    x = z @ rng.normal(size=(4, p)) + 0.8 * rng.normal(size=(n, p))
    y = z @ rng.normal(size=(4, q)) + 0.8 * rng.normal(size=(n, q))
    return x, y


def _qr_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def _stats(x: np.ndarray, y: np.ndarray) -> dict:
    return {"n": len(x), "sum_x": x.sum(0), "sum_y": y.sum(0), "xtx": x.T @ x, "yty": y.T @ y, "xty": x.T @ y}


@pytest.mark.parametrize("n,p,q", [(300, 8, 6), (600, 280, 300)])
def test_canonical_correlations_closed_form(n: int, p: int, q: int) -> None:
    x, y = _pair(n, p, q)
    np.testing.assert_allclose(canonical_correlations(x, y, eps=0.0), _qr_cca(x, y), atol=1e-8)


def test_cca_invariant_to_invertible_linear_maps() -> None:
    x, y = _pair(seed=1)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(6, 6))
    ref = canonical_correlations(x, y, eps=0.0)
    np.testing.assert_allclose(canonical_correlations(x @ a + 4.0, y @ b, eps=0.0), ref, atol=1e-8)
    assert mean_cca(x @ a, y @ b) == pytest.approx(mean_cca(x, y), abs=1e-6)
    assert svcca(x @ a, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-6)
    assert svcca(x, y, keep=1.0) == pytest.approx(mean_cca(x, y), abs=1e-12)


def test_rank_deficient_and_constant_columns_never_nan() -> None:
    x, y = _pair(seed=3)
    dup = np.hstack([x, x[:, :3], x[:, :1] + x[:, 1:2], np.full((len(x), 2), 5.0)])
    for f in (svcca, pwcca, mean_cca):
        v = f(dup, y)
        assert np.isfinite(v)
    np.testing.assert_allclose(canonical_correlations(dup, y), canonical_correlations(x, y), atol=1e-6)
    wide = np.random.default_rng(4).normal(size=(20, 50))  # more neurons than stimuli
    assert np.isfinite(svcca(wide, wide[:, :30])) and np.isfinite(pwcca(wide, wide[:, :30]))
    with pytest.raises(NeuronscopeError, match="constant"):
        svcca(np.ones((30, 4)), y[:30])


def test_svcca_truncation() -> None:
    x, y = _pair(seed=5)
    x = x * np.geomspace(10, 0.01, 8)  # a few directions carry the variance
    full, trunc = svcca(x, y, keep=1.0), svcca(x, y, keep=0.99)
    assert trunc != pytest.approx(full, abs=1e-3)
    assert svcca(x, y, keep=3) == pytest.approx(np.mean(canonical_correlations(x, y, keep=3)))


def test_pwcca_matches_reference_algorithm() -> None:
    """Morcos et al.'s compute_pwcca: weights from the side with fewer neurons, canonical
    variates orthonormalised by QR, α_i = Σ_j |⟨h_i, x_j⟩| (centered neurons here)."""
    x, y = _pair(seed=6, p=5, q=9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lx = np.linalg.cholesky(xc.T @ xc)
    ly = np.linalg.cholesky(yc.T @ yc)
    m = np.linalg.solve(lx, xc.T @ yc) @ np.linalg.inv(ly).T
    u, rho, _ = np.linalg.svd(m, full_matrices=False)
    a = np.linalg.solve(lx.T, u)  # canonical directions of x
    h, _ = np.linalg.qr(xc @ a)
    w = np.abs(h.T @ xc).sum(1)
    ref = float((w * rho).sum() / w.sum())
    assert pwcca(x, y, eps=0.0) == pytest.approx(ref, abs=1e-8)
    assert pwcca(x, y, eps=0.0, side="x") == pytest.approx(ref, abs=1e-8)
    assert pwcca(x, y) != pytest.approx(pwcca(x, y, side="y"), abs=1e-6)


def test_streamed_statistics_equal_in_memory() -> None:
    x, y = _pair(seed=7)
    s = _stats(x, y)
    np.testing.assert_allclose(cca_from_stats(**s).rho, canonical_correlations(x, y), atol=1e-10)
    assert svcca_from_stats(**s) == pytest.approx(svcca(x, y), abs=1e-10)
    assert pwcca_from_stats(**s) == pytest.approx(pwcca(x, y), abs=1e-10)
    assert svcca_from_stats(**s, keep=0.9) == pytest.approx(svcca(x, y, keep=0.9), abs=1e-10)
