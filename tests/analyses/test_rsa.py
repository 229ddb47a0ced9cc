"""RSA: parity with rsatoolbox (RDMs, every comparator, noise ceilings, geo-topological
transform), tRSA, deconfounded RSA, alignment and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.data import Dataset  # noqa: E402
from rsatoolbox.inference import boot_noise_ceiling  # noqa: E402
from rsatoolbox.rdm import RDMs as TBRDMs  # noqa: E402
from rsatoolbox.rdm import calc_rdm, compare  # noqa: E402
from rsatoolbox.rdm import geodesic_transform as tb_geodesic  # noqa: E402
from rsatoolbox.rdm import geotopological_transform as tb_gt  # noqa: E402
from rsatoolbox.util.matrix import get_v  # noqa: E402

from neuronscope.analyses.rsa import (  # noqa: E402
    RDMs,
    compare_rdms,
    deconfounded_rsa,
    geodesic_transform,
    geotopological_transform,
    noise_ceiling,
    rdm,
    rsa,
    trsa,
    whiten,
)
from neuronscope.errors import NeuronscopeError  # noqa: E402


def _pop(n: int = 24, p: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)) @ rng.normal(size=(5, p)) + rng.normal(size=(n, p))


@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_rdm_matches_rsatoolbox(method: str) -> None:
    x = _pop()
    ref = calc_rdm(Dataset(x), method=method).get_vectors()[0]
    np.testing.assert_allclose(rdm(x, method), ref, atol=1e-10)


def test_float32_precision_within_1e6() -> None:
    x = _pop(n=40, p=500)
    exact = rdm(x, "correlation")
    np.testing.assert_allclose(rdm(x, "correlation", precision="float32"), exact, atol=1e-6)
    np.testing.assert_allclose(rdm(x.astype(np.float32), "correlation"), exact, atol=2e-6)


def test_cosine_rdm_closed_form() -> None:
    x = _pop()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = 1 - xn @ xn.T
    np.testing.assert_allclose(rdm(x, "cosine"), full[np.triu_indices(len(x), 1)], atol=1e-12)


def test_crossnobis_matches_rsatoolbox() -> None:
    rng = np.random.default_rng(1)
    n, r, p = 10, 4, 30
    signal = rng.normal(size=(n, p))
    rows = np.concatenate([signal + rng.normal(size=(n, p)) for _ in range(r)])
    stim, rep = np.tile(np.arange(n), r), np.repeat(np.arange(r), n)
    ds = Dataset(rows, obs_descriptors={"stim": stim, "rep": rep})
    ref = rsatoolbox.rdm.calc_rdm_crossnobis(ds, "stim", cv_descriptor="rep").get_vectors()[0]
    np.testing.assert_allclose(rdm(rows, "crossnobis", stimulus=stim, repeat=rep), ref, atol=1e-10)
    prec = np.linalg.inv(np.cov(rng.normal(size=(200, p)).T) + np.eye(p))
    ref2 = rsatoolbox.rdm.calc_rdm_crossnobis(ds, "stim", noise=prec, cv_descriptor="rep").get_vectors()[0]
    np.testing.assert_allclose(rdm(rows, "crossnobis", stimulus=stim, repeat=rep, noise=prec), ref2, atol=1e-10)


PAIRS = [("pearson", "corr"), ("spearman", "spearman"), ("kendall", "tau-a"), ("cosine", "cosine"),
         ("rho-a", "rho-a"), ("corr_cov", "corr_cov"), ("cosine_cov", "cosine_cov"), ("bures", "bures")]


def _stacks() -> tuple[np.ndarray, np.ndarray]:
    a = np.stack([rdm(_pop(seed=s)) for s in range(3)])
    b = np.stack([rdm(_pop(seed=s + 10)) for s in range(2)])
    b[0] = np.round(b[0], 1)  # ties
    return a, b


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_comparators_match_rsatoolbox(ours: str, theirs: str) -> None:
    a, b = _stacks()
    ref = compare(TBRDMs(a), TBRDMs(b), method=theirs)
    np.testing.assert_allclose(compare_rdms(a, b, ours), ref, atol=1e-10)
    assert compare_rdms(a[0], b[1], ours) == pytest.approx(ref[0, 1], abs=1e-10)


@pytest.mark.parametrize("ours,theirs", PAIRS[:-1])
def test_comparators_skip_missing_pairs_pairwise(ours: str, theirs: str) -> None:
    """NaN pairs at different places in each RDM: each pair of RDMs is compared on the pairs
    finite in both — rsatoolbox on the two vectors with the union of their NaNs."""
    a, b = _stacks()
    a[0, [3, 40, 41]] = np.nan
    a[2, 7] = np.nan
    b[1, [3, 100]] = np.nan
    got = compare_rdms(a, b, ours)
    for i in range(len(a)):
        for j in range(len(b)):
            gone = np.isnan(a[i]) | np.isnan(b[j])
            x, y = a[i].copy(), b[j].copy()
            x[gone] = y[gone] = np.nan
            ref = compare(TBRDMs(x[None]), TBRDMs(y[None]), method=theirs)[0, 0]
            assert got[i, j] == pytest.approx(ref, abs=1e-10)
    assert np.isfinite(got).all()
    with pytest.raises(NeuronscopeError, match="bures .*NaN"):
        compare_rdms(a, b, "bures")


def test_whitening_is_the_inverse_covariance_inner_product() -> None:
    """dᵀV⁻¹e with V = (CCᵀ)∘(CCᵀ) (rsatoolbox get_v) equals ⟨w(d), w(e)⟩, also with pairs missing."""
    rng = np.random.default_rng(4)
    n = 8
    v = get_v(n, None).toarray()
    d, e = rng.random((2, n * (n - 1) // 2))
    wd, we = whiten(np.stack([d, e]))
    assert wd @ we == pytest.approx(d @ np.linalg.solve(v, e), rel=1e-12)
    mask = np.ones(len(d), dtype=bool)
    mask[[1, 5, 17]] = False
    wd, we = whiten(np.stack([d[mask], e[mask]]), mask)
    vm = v[np.ix_(mask, mask)]
    assert wd @ we == pytest.approx(d[mask] @ np.linalg.solve(vm, e[mask]), rel=1e-12)


@pytest.mark.parametrize("ours,theirs", PAIRS[:-1])
def test_noise_ceiling_matches_rsatoolbox(ours: str, theirs: str) -> None:
    rng = np.random.default_rng(2)
    base = _pop(seed=3)
    subjects = np.stack([rdm(base + 1.5 * rng.normal(size=base.shape)) for _ in range(5)])
    subjects[1] = np.round(subjects[1], 1)  # ties
    missing = subjects.copy()
    missing[:, [4, 50, 51]] = np.nan  # the same pairs missing in every subject (rsatoolbox's case)
    for data in (subjects, missing):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo_ref, up_ref = boot_noise_ceiling(TBRDMs(data), method=theirs)
        lo, up = noise_ceiling(data, ours)
        assert (lo, up) == pytest.approx((lo_ref, up_ref), abs=1e-10)
        assert lo < up


def test_noise_ceiling_with_different_missing_pairs_per_subject() -> None:
    """Pairwise skipping: P = mean of the z-scored RDMs over the subjects finite at a pair;
    each comparison on the pairs finite in both (computed here pair by pair)."""
    rng = np.random.default_rng(5)
    base = _pop(n=10, seed=6)
    v = np.stack([rdm(base + rng.normal(size=base.shape)) for _ in range(4)])
    v[0, [1, 2]] = np.nan
    v[3, [2, 30]] = np.nan
    z = [(r - np.nanmean(r)) / np.nanstd(r - np.nanmean(r)) for r in v]

    def pooled(rows: list[int]) -> np.ndarray:
        return np.array([np.mean([z[i][p] for i in rows if np.isfinite(z[i][p])]) for p in range(v.shape[1])])

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        ok = np.isfinite(x) & np.isfinite(y)
        return float(np.corrcoef(x[ok], y[ok])[0, 1])

    up = np.mean([corr(pooled([0, 1, 2, 3]), v[i]) for i in range(4)])
    lo = np.mean([corr(pooled([j for j in range(4) if j != i]), v[i]) for i in range(4)])
    assert noise_ceiling(v, "pearson") == pytest.approx((lo, up), abs=1e-12)


def test_noise_ceiling_from_repeats() -> None:
    rng = np.random.default_rng(3)
    base = _pop(n=15, seed=4)
    rows = np.concatenate([base + rng.normal(size=base.shape) for _ in range(4)])
    da = xr.DataArray(rows, dims=("sample", "neuron"),
                      coords={"stimulus": ("sample", np.tile(np.arange(15), 4)),
                              "repeat": ("sample", np.repeat(np.arange(4), 15))})
    per_rep = np.stack([rdm(rows[i * 15 : (i + 1) * 15]) for i in range(4)])
    assert noise_ceiling(da) == pytest.approx(noise_ceiling(per_rep), abs=1e-12)


def test_geotopological_transform_matches_rsatoolbox_and_plain_special_case() -> None:
    d = rdm(_pop(seed=5))
    ref = tb_gt(TBRDMs(d[None].copy()), 0.2, 0.7).get_vectors()[0]  # rsatoolbox edits in place
    np.testing.assert_allclose(geotopological_transform(d, 0.2, 0.7), ref, atol=1e-12)
    g = geotopological_transform(d, 0.2, 0.7)
    assert g.min() == 0 and g.max() == 1 and (g == 0).sum() >= 0.19 * len(d)
    x, y = _pop(seed=6), _pop(seed=7)
    for comp in ("pearson", "spearman"):
        assert trsa(x, y, 0.0, 1.0, compare=comp) == pytest.approx(rsa(x, y, compare=comp), abs=1e-12)
    assert trsa(x, y, 0.1, 0.5) != pytest.approx(rsa(x, y, compare="pearson"), abs=1e-4)


def test_rsa_alignment_and_precomputed_rdms() -> None:
    x, y = _pop(seed=8), _pop(seed=8) + 0.5 * _pop(seed=9)
    ids = np.array([f"im{i:02d}" for i in range(len(x))])
    perm = np.random.default_rng(1).permutation(len(x))
    dx = xr.DataArray(x, dims=("sample", "neuron"), coords={"stimulus": ("sample", ids)})
    dy = xr.DataArray(y[perm], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids[perm])})
    expected = rsa(x, y)
    assert rsa(dx, dy) == pytest.approx(expected, abs=1e-12)
    # precomputed per-subject RDMs in another stimulus order, with ids
    subj = RDMs(np.stack([rdm(y[perm]), rdm(y[perm] + 0.1)]), stimulus=ids[perm])
    both = np.mean([rsa(x, y), rsa(x, y + 0.1)])
    assert rsa(dx, subj) == pytest.approx(both, abs=1e-12)
    assert rsa(rdm(x), rdm(y)) == pytest.approx(expected, abs=1e-12)


def test_deconfounded_rsa_is_residual_correlation() -> None:
    rng = np.random.default_rng(10)
    z = rng.normal(size=(20, 8))
    x = np.hstack([z, rng.normal(size=(20, 8))])
    y = np.hstack([z, rng.normal(size=(20, 8))])
    dz, dx, dy = rdm(z), rdm(x), rdm(y)
    design = np.column_stack([np.ones_like(dz), dz])
    rx = dx - design @ np.linalg.lstsq(design, dx, rcond=None)[0]
    ry = dy - design @ np.linalg.lstsq(design, dy, rcond=None)[0]
    assert deconfounded_rsa(x, y, z) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-10)
    assert deconfounded_rsa(x, y, z) < rsa(x, y, compare="pearson")


def test_bad_input() -> None:
    x = _pop()
    const = x.copy()
    const[4] = 2.0
    with pytest.raises(NeuronscopeError, match="constant"):
        rdm(const, "correlation")
    assert np.isfinite(rdm(const, "euclidean")).all()
    with pytest.raises(NeuronscopeError, match="at least 3"):
        rdm(x[:2])
    with pytest.raises(NeuronscopeError, match="unknown RDM comparator"):
        compare_rdms(rdm(x), rdm(x), "bogus")
    with pytest.raises(NeuronscopeError, match="same stimuli"):
        rsa(x, x[:10])
    with pytest.raises(NeuronscopeError, match="at least 2 RDMs"):
        noise_ceiling(rdm(x)[None])
    with pytest.raises(NeuronscopeError, match="n\\(n-1\\)/2"):
        RDMs(np.ones((1, 7)))


# --------------------------------------------------------------------------- crossnobis, unbalanced


def _runs(missing: list[tuple[int, int]], seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of 6 stimuli in 4 runs, 1-3 rows per (stimulus, run); (stimulus, run) in
    ``missing`` not measured."""
    rng = np.random.default_rng(seed)
    n, p = 6, 9
    signal = rng.normal(size=(n, p))
    rows, stim, run = [], [], []
    for f in range(4):
        for s in range(n):
            if (s, f) in missing:
                continue
            for _ in range(1 + (s * 7 + f) % 3):
                rows.append(signal[s] + rng.normal(size=p))
                stim.append(s)
                run.append(f)
    return np.array(rows), np.array(stim), np.array(run)


def test_crossnobis_unequal_rows_per_fold_matches_rsatoolbox() -> None:
    rows, stim, run = _runs([])
    ds = Dataset(rows, obs_descriptors={"stim": stim, "run": run})
    ref = calc_rdm(ds, method="crossnobis", descriptor="stim", cv_descriptor="run").get_vectors()[0]
    np.testing.assert_allclose(rdm(rows, "crossnobis", stimulus=stim, folds=run), ref, atol=1e-10)
    prec = np.linalg.inv(np.cov(np.random.default_rng(0).normal(size=(100, 9)).T) + np.eye(9))
    ref2 = calc_rdm(ds, method="crossnobis", descriptor="stim", cv_descriptor="run", noise=prec).get_vectors()[0]
    np.testing.assert_allclose(rdm(rows, "crossnobis", stimulus=stim, folds=run, noise=prec), ref2, atol=1e-10)


def test_crossnobis_missing_stimuli_uses_the_common_folds() -> None:
    """Stimulus 2 is missing from runs 2 and 3, stimulus 4 from runs 0 and 1: pair (i, j) is
    rsatoolbox's crossnobis on the rows of i and j in the runs where both were measured;
    (2, 4) share no run, so it is missing (NaN)."""
    missing = [(2, 2), (2, 3), (4, 0), (4, 1)]
    rows, stim, run = _runs(missing)
    got = rdm(rows, "crossnobis", stimulus=stim, folds=run)
    iu = np.triu_indices(6, k=1)
    for k, (i, j) in enumerate(zip(*iu, strict=True)):
        runs_i, runs_j = set(run[stim == i]), set(run[stim == j])
        common = sorted(runs_i & runs_j)
        if len(common) < 2:
            assert np.isnan(got[k]) and (i, j) == (2, 4)
            continue
        sel = np.isin(stim, [i, j]) & np.isin(run, common)
        ds = Dataset(rows[sel], obs_descriptors={"stim": stim[sel], "run": run[sel]})
        ref = calc_rdm(ds, method="crossnobis", descriptor="stim", cv_descriptor="run").get_vectors()[0, 0]
        assert got[k] == pytest.approx(ref, abs=1e-10)
    assert np.isnan(got).sum() == 1
    r = RDMs(got[None])  # a missing pair is allowed and skipped by the comparators
    assert np.isfinite(compare_rdms(r, rdm(rows[:6] * 0 + _pop(n=6, p=9)), "spearman"))


# --------------------------------------------------------------------------- topological RSA


def test_geotopological_transform_is_the_papers_formula() -> None:
    """GT(d) = 0 below the low quantile, (d - l)/(u - l) between, 1 above — by hand, per RDM
    quantiles; rsatoolbox 0.3.2 differs when u < 1 (it re-thresholds rescaled values)."""
    rng = np.random.default_rng(12)
    d = np.stack([rng.random(45) * 0.8, rng.random(45) * 3.0])  # upper quantile < 1 in row 0
    d[1, 5] = np.nan
    got = geotopological_transform(d, 0.2, 0.7)
    for row, out in zip(d, got, strict=True):
        fin = row[np.isfinite(row)]
        lo, hi = np.quantile(fin, 0.2), np.quantile(fin, 0.7)
        for x, y in zip(row, out, strict=True):
            if np.isnan(x):
                assert np.isnan(y)
            elif x < lo:
                assert y == 0.0
            elif x > hi:
                assert y == 1.0
            else:
                assert y == pytest.approx((x - lo) / (hi - lo), abs=1e-15)
    tb = tb_gt(TBRDMs(d[:1].copy()), 0.2, 0.7).get_vectors()[0]
    hi0 = np.quantile(d[0], 0.7)  # < 1: rsatoolbox sets the rescaled values above it to 1
    np.testing.assert_allclose(tb, np.where(got[0] > hi0, 1.0, got[0]), atol=1e-15)
    assert np.abs(tb - got[0]).max() > 0.25


def test_geodesic_transform_on_a_hand_built_ring() -> None:
    """Ring 0-1-2-3-4-0 with dissimilarities 1, 2, 1, 3, 2 and chords of 9-10: with the
    ceiling at the median only ring edges remain; scaled (d - 1)/9 the shortest paths are
    known (zero-weight edges 0-1 and 2-3 count as edges)."""
    sq = np.full((5, 5), 9.0)
    for (i, j), w in {(0, 1): 1, (1, 2): 2, (2, 3): 1, (3, 4): 3, (0, 4): 2}.items():
        sq[i, j] = sq[j, i] = w
    sq[2, 4] = sq[4, 2] = 10.0
    np.fill_diagonal(sq, 0)
    d = sq[np.triu_indices(5, k=1)]
    expect = {(0, 1): 0, (0, 2): 1, (0, 3): 1, (0, 4): 1, (1, 2): 1, (1, 3): 1, (1, 4): 1,
              (2, 3): 0, (2, 4): 2, (3, 4): 2}
    got = geodesic_transform(d, up=0.5)
    np.testing.assert_allclose(got, [expect[p] / 9 for p in zip(*np.triu_indices(5, k=1), strict=True)],
                               atol=1e-15)
    # a missing pair is filled by its geodesic
    d2 = d.copy()
    d2[1] = np.nan  # (0, 2)
    assert geodesic_transform(d2, up=0.5)[1] == pytest.approx(1 / 9, abs=1e-15)
    # disconnected components: the largest finite geodesic
    two = geodesic_transform(d, up=0.2)  # only the two edges of weight 0 remain
    assert set(np.round(two, 12)) == {0.0}


def test_geodesic_transform_relates_to_rsatoolbox() -> None:
    """rsatoolbox 0.3.2 (up = 1) builds its graph with networkx, which drops the zero-weight
    edge of the min-max-scaled minimum pair (i, j); ours keeps it, so ours is the shorter of
    rsatoolbox's path and a path through (i, j): min(g_ab, g_ai + g_jb, g_aj + g_ib)."""
    d = rdm(_pop(n=12, seed=13))
    g = squareform_(tb_geodesic(TBRDMs(d[None].copy())).get_vectors()[0])
    i, j = np.unravel_index(np.argmin(squareform_(d) + np.eye(12) * 9), (12, 12))
    expect = np.minimum(g, np.minimum(g[:, [i]] + g[[j], :], g[:, [j]] + g[[i], :]))
    got = squareform_(geodesic_transform(d, up=1.0))
    np.testing.assert_allclose(got, expect, atol=1e-12)
    assert (got < g - 1e-9).any()  # the zero-weight edge does shorten some paths


def test_trsa_over_both_transforms() -> None:
    x, y = _pop(seed=14), _pop(seed=14) + 0.3 * _pop(seed=15)
    for transform in ("geotopological", "geodesic"):
        ga = topo(rdm(x), transform)
        gb = topo(rdm(y), transform)
        expect = float(np.corrcoef(ga, gb)[0, 1])
        assert trsa(x, y, 0.1, 0.9, transform=transform) == pytest.approx(expect, abs=1e-12)
    with pytest.raises(NeuronscopeError, match="unknown tRSA transform"):
        trsa(x, y, transform="bogus")


def topo(d: np.ndarray, transform: str) -> np.ndarray:
    return geotopological_transform(d, 0.1, 0.9) if transform == "geotopological" else geodesic_transform(d, 0.9)


def squareform_(v: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import squareform

    return squareform(v, checks=False)
