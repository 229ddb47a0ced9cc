"""Scale-safe numerics (issue 10): every comparison metric gives at 1e±150 (and 1e±160, where
squares leave float64) what it gives at scale 1 — to 1e-8 relative for the scale-invariant
ones, times the factor for distances that scale with the data — on both the pairwise and the
many-vs-many path; a decomposition that fails is one line; a constant side is refused by
every metric; complex input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscope.analyses import _linalg
from neuronscope.analyses.compare import (
    compare,
    compare_all,
    encoding_score,
    rdm,
    stochastic_shape_distance,
)
from neuronscope.errors import NeuronscopeError

SCALES = [1e150, 1e-150, 1e160, 1e-160]

#: metric, options: invariant to the scale of either side
INVARIANT = [
    ("cka", {}), ("cka", {"debiased": True}), ("debiased_cka", {}), ("rbf_cka", {}),
    ("rsa", {}), ("rsa", {"rdm_method": "euclidean"}), ("rsa", {"rdm_method": "cosine", "compare": "pearson"}),
    ("rsa", {"compare": "corr_cov"}), ("rsa", {"compare": "bures"}), ("trsa", {}),
    ("cca", {}), ("svcca", {}), ("pwcca", {}),
    ("procrustes", {"normalize": True}), ("shape", {}), ("shape", {"alpha": 0.0}),
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 9)) + rng.normal(size=(40, 9))
    return x, y, rng.normal(size=(40, 5))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("metric, options", INVARIANT, ids=[f"{m}{o}" for m, o in INVARIANT])
def test_scale_invariant_metrics_equal_their_value_at_scale_1(metric: str, options: dict, data) -> None:
    x, y, _ = data
    ref = compare(x, y, metric, **options)
    assert np.isfinite(ref) and abs(ref) > 1e-3
    for sx, sy in [(s, s) for s in SCALES] + [(1e150, 1e-150), (1e-160, 1e160)]:
        got = compare(x * sx, y * sy, metric, **options)
        assert got == pytest.approx(ref, rel=1e-8), (sx, sy, got, ref)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("metric", ["deconfounded_cka", "deconfounded_rsa"])
def test_deconfounded_metrics_are_scale_invariant_in_all_three_inputs(metric: str, data) -> None:
    x, y, z = data
    ref = compare(x, y, metric, inputs=z)
    for s in SCALES:
        assert compare(x * s, y / s * 1e-10, metric, inputs=z * s) == pytest.approx(ref, rel=1e-8)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_procrustes_distance_scales_with_the_data(alpha: float, data) -> None:
    x, y, _ = data
    ref = compare(x, y, "procrustes", alpha=alpha)
    for s in SCALES:
        assert compare(x * s, y * s, "procrustes", alpha=alpha) == pytest.approx(ref * s, rel=1e-8)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("metric, options", [*INVARIANT, ("procrustes", {})],
                         ids=[f"{m}{o}" for m, o in [*INVARIANT, ("procrustes", {})]])
def test_many_vs_many_path_at_extreme_scale(metric: str, options: dict, data) -> None:
    """compare_all's factored path (factors computed once per population) is scale-safe too;
    the off-diagonal entries (the diagonal is a population with itself) equal scale 1's."""
    x, y, _ = data
    pops = [x, y, x[:, :6] + 0.1 * y[:, :6]]
    ref = compare_all(pops, metric, **options).values
    off = ~np.eye(3, dtype=bool)
    factor = metric == "procrustes" and not options.get("normalize")
    for s in SCALES:
        got = compare_all([p * s for p in pops], metric, **options).values
        np.testing.assert_allclose(got[off], ref[off] * (s if factor else 1.0), rtol=1e-8)


@pytest.mark.filterwarnings("error")
def test_rdm_values_scale_and_overflow_is_one_line(data) -> None:
    x, _, _ = data
    np.testing.assert_allclose(rdm(x * 1e-150, "euclidean"), rdm(x, "euclidean") * 1e-300, rtol=1e-10)
    np.testing.assert_allclose(rdm(x * 1e150, "correlation"), rdm(x, "correlation"), rtol=1e-10, atol=1e-14)
    with pytest.raises(NeuronscopeError, match="overflow float64; scale the data down"):
        rdm(x * 1e160, "euclidean")  # 1e320 is no float64: refused, while rsa() still works
    assert compare(x * 1e160, x * 1e160 + 1e150, "rsa", rdm_method="euclidean") == pytest.approx(1.0)


@pytest.mark.filterwarnings("error")
def test_stochastic_shape_distance_scales_with_the_data() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(10, 4, 5))
    b = a + 0.3 * rng.normal(size=(10, 4, 5))
    ref = stochastic_shape_distance(a, b)
    for s in SCALES:
        assert stochastic_shape_distance(a * s, b * s) == pytest.approx(ref * s, rel=1e-8)


@pytest.mark.filterwarnings("error")
def test_encoding_solves_the_same_ridge_problem_at_any_scale(data) -> None:
    """Ridge on X·2^a with α·4^a predicts what ridge on X with α does (r is invariant to Y's
    scale), so the scores are bit-comparable; with the default α grid at 1e±160 the result
    is finite (the fit is that of the data as given), not a LinAlgError."""
    x, y, _ = data
    alphas = np.logspace(-2, 6, 9)
    ref = encoding_score(x, y, alphas=alphas, cv=3, inner_cv=3)
    for a, b in [(500, -500), (-500, 500), (450, 0)]:
        got = encoding_score(np.ldexp(x, a), np.ldexp(y, b), alphas=np.ldexp(alphas, 2 * a), cv=3, inner_cv=3)
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    for s in SCALES:
        got = encoding_score(x * s, y, cv=3, inner_cv=3)
        assert np.isfinite(got).all() and (np.abs(got) <= 1).all()


@pytest.mark.parametrize("metric", ["cka", "debiased_cka", "rbf_cka", "rsa", "trsa", "cca", "svcca", "pwcca",
                                    "procrustes", "shape", "encoding", "deconfounded_cka", "deconfounded_rsa"])
def test_a_constant_side_is_refused_by_every_metric(metric: str, data) -> None:
    """A side whose every neuron is constant (rows identical, as a tiled pattern gives: its
    centring leaves rounding residue, which used to score e.g. -0.256 for encoding and 1e-33
    for CKA) is a one-line error on either side, pairwise and many-vs-many."""
    x, y, z = data
    const = np.tile(np.random.default_rng(5).normal(size=(1, 7)), (40, 1))
    kw = {"inputs": z} if metric.startswith("deconfounded") else {}
    for a, b in ((const, y), (x, const)):
        with pytest.raises(NeuronscopeError, match="zero variance|identical rows") as exc:
            compare(a, b, metric, **kw)
        assert "\n" not in str(exc.value)
    if not kw:
        with pytest.raises(NeuronscopeError, match="zero variance|identical rows"):
            compare_all([x, const], metric)


def test_decomposition_failures_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """LinAlgError from any decomposition (and NaN/Inf reaching one) is a NeuronscopeError."""
    with pytest.raises(NeuronscopeError, match="got NaN or Inf"):
        _linalg.eigh(np.array([[1.0, np.inf], [np.inf, 1.0]]))

    def fail(*_a, **_k):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", fail)
    with pytest.raises(NeuronscopeError, match="did not converge") as exc:
        _linalg.polar(np.eye(3))
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(np.linalg, "cholesky", fail)
    with pytest.raises(NeuronscopeError, match="noise covariance must be symmetric positive definite"):
        _linalg.cholesky(np.eye(2))
    monkeypatch.setattr(np.linalg, "solve", fail)
    with pytest.raises(NeuronscopeError, match="the linear solve did not converge"):
        _linalg.solve(np.eye(2), np.ones(2))


def test_rescale_is_exact_and_leaves_moderate_data_alone() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3))
    same, e = _linalg.rescale(x)
    assert e == 0 and same is x
    big, e = _linalg.rescale(x * 2.0**600)
    assert e > 0 and np.array_equal(np.ldexp(big, e), x * 2.0**600) and np.abs(big).max() < 1
    small, e = _linalg.rescale((x * 2.0**-600).astype(np.float64))
    assert e < 0 and np.array_equal(np.ldexp(small, e), x * 2.0**-600)
    f32, e = _linalg.rescale((x * 2.0**40).astype(np.float32))
    assert f32.dtype == np.float32 and e > 0


def test_sufficient_statistics_that_overflowed_are_one_line() -> None:
    from neuronscope.analyses.compare import linear_cka_from_stats

    x = np.random.default_rng(0).normal(size=(10, 3)) * 1e160
    with np.errstate(over="ignore"):
        stats = dict(n=10, sum_x=x.sum(0), sum_y=x.sum(0), xtx=x.T @ x, yty=x.T @ x, xty=x.T @ x)
    with pytest.raises(NeuronscopeError, match="overflow float64"):
        linear_cka_from_stats(**stats)


def test_complex_input_is_refused_everywhere(tmp_path) -> None:
    from neuronscope.population import to_matrix
    from neuronscope.sources.brain import load_responses, responses_population

    z = np.ones((5, 3)) + 1j
    for fn in (to_matrix, responses_population):
        with pytest.raises(NeuronscopeError, match="complex-valued"):
            fn(z)
    np.save(tmp_path / "z.npy", z)
    with pytest.raises(NeuronscopeError, match="complex-valued"):
        load_responses(tmp_path / "z.npy")
    with pytest.raises(NeuronscopeError, match="complex-valued"):
        stochastic_shape_distance(np.ones((4, 2, 3)) + 1j, np.ones((4, 2, 3)))
