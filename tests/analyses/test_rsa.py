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
from rsatoolbox.rdm import geotopological_transform as tb_gt  # noqa: E402

from neuronscope.analyses.rsa import (  # noqa: E402
    RDMs,
    compare_rdms,
    deconfounded_rsa,
    geotopological_transform,
    noise_ceiling,
    rdm,
    rsa,
    trsa,
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


@pytest.mark.parametrize("ours,theirs", [("pearson", "corr"), ("spearman", "spearman"),
                                         ("kendall", "tau-a"), ("cosine", "cosine"), ("rho-a", "rho-a")])
def test_comparators_match_rsatoolbox(ours: str, theirs: str) -> None:
    a = np.stack([rdm(_pop(seed=s)) for s in range(3)])
    b = np.stack([rdm(_pop(seed=s + 10)) for s in range(2)])
    b[0] = np.round(b[0], 1)  # ties
    ref = compare(TBRDMs(a), TBRDMs(b), method=theirs)
    np.testing.assert_allclose(compare_rdms(a, b, ours), ref, atol=1e-10)
    assert compare_rdms(a[0], b[1], ours) == pytest.approx(ref[0, 1], abs=1e-10)


@pytest.mark.parametrize("ours,theirs", [("spearman", "spearman"), ("pearson", "corr"),
                                         ("cosine", "cosine"), ("kendall", "tau-a")])
def test_noise_ceiling_matches_rsatoolbox(ours: str, theirs: str) -> None:
    rng = np.random.default_rng(2)
    base = _pop(seed=3)
    subjects = np.stack([rdm(base + 1.5 * rng.normal(size=base.shape)) for _ in range(5)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo_ref, up_ref = boot_noise_ceiling(TBRDMs(subjects), method=theirs)
    lo, up = noise_ceiling(subjects, theirs if theirs != "tau-a" else ours)
    assert (lo, up) == pytest.approx((lo_ref, up_ref), abs=1e-10)
    assert lo < up


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
