"""compare / compare_all dispatch and factor reuse, and streamed statistics equal to the
in-memory metrics."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from neuronscope.analyses.compare import (
    CrossStats,
    angular_shape_distance,
    angular_shape_distance_from_stats,
    compare,
    compare_all,
    encoding_score,
    linear_cka,
    linear_cka_from_stats,
    procrustes_distance,
    procrustes_distance_from_stats,
    pwcca,
    pwcca_from_stats,
    rsa,
    svcca,
    svcca_from_stats,
    trsa,
)
from neuronscope.errors import NeuronscopeError


def _pops(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(40, 5))
    return {
        "narrow": z @ rng.normal(size=(5, 6)) + 0.3 * rng.normal(size=(40, 6)),
        "wide": z @ rng.normal(size=(5, 90)) + rng.normal(size=(40, 90)),  # Gram-space path
        "noise": rng.normal(size=(40, 8)),
    }


def test_helper_signatures_are_importable() -> None:
    x, y = _pops()["narrow"], _pops()["wide"]
    for f in (linear_cka, rsa, trsa, procrustes_distance):
        assert isinstance(f(x, y), float)
    r = encoding_score(x, y[:, :4], cv=4, inner_cv=3)
    assert r.shape == (4,)


@pytest.mark.parametrize("metric", ["cka", "rsa", "trsa", "procrustes", "shape", "svcca", "pwcca", "cca",
                                    "debiased_cka"])
def test_compare_all_equals_pairwise_compare(metric: str) -> None:
    pops = _pops()
    mat = compare_all(pops, metric)
    names = list(pops)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert mat.values[i, j] == pytest.approx(compare(pops[a], pops[b], metric), abs=1e-9), (a, b)
    assert list(mat.a.values) == names


def test_compare_all_rectangular_and_aligned() -> None:
    pops = _pops(1)
    ids = np.arange(40)
    perm = np.random.default_rng(2).permutation(40)
    da = {k: xr.DataArray(v[perm], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids[perm])})
          for k, v in pops.items()}
    ref = xr.DataArray(pops["narrow"], dims=("sample", "neuron"), coords={"stimulus": ("sample", ids)})
    mat = compare_all({"ref": ref}, "cka", others=da)
    assert mat.shape == (1, 3)
    for j, k in enumerate(pops):
        assert mat.values[0, j] == pytest.approx(linear_cka(pops["narrow"], pops[k]), abs=1e-10)
    enc = compare_all({"x": pops["narrow"]}, "encoding", others={"y": pops["noise"][:, :2]}, cv=4, inner_cv=None)
    assert enc.values[0, 0] == pytest.approx(np.mean(encoding_score(pops["narrow"], pops["noise"][:, :2],
                                                                    cv=4, inner_cv=None)))
    with pytest.raises(NeuronscopeError, match="unknown metric"):
        compare_all(pops, "bogus")


def test_streamed_statistics_equal_in_memory() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3000, 12)) + 5).astype(np.float32)
    y = (x[:, :6] @ rng.normal(size=(6, 9)) + rng.normal(size=(3000, 9))).astype(np.float32)
    parts = []
    for chunk in np.array_split(np.arange(3000), 7):
        parts.append(CrossStats(12, 9).update(x[chunk], y[chunk]))
    left = parts[0]
    for p in parts[1:4]:
        left.merge(p)
    right = parts[4].merge(parts[5].merge(parts[6]))
    arrays, attrs = left.merge(right).state()
    st = CrossStats.from_state(arrays, attrs).result()
    assert st["n"] == 3000
    assert linear_cka_from_stats(**st) == pytest.approx(linear_cka(x, y), abs=1e-6)
    for alpha in (1.0, 0.5):
        assert procrustes_distance_from_stats(**st, alpha=alpha) == pytest.approx(
            procrustes_distance(x, y, alpha), rel=1e-6)
        assert angular_shape_distance_from_stats(**st, alpha=alpha) == pytest.approx(
            angular_shape_distance(x, y, alpha), abs=1e-6)
    assert svcca_from_stats(**st) == pytest.approx(svcca(x, y), abs=1e-6)
    assert pwcca_from_stats(**st) == pytest.approx(pwcca(x, y), abs=1e-6)
    with pytest.raises(NeuronscopeError, match="NaN"):
        CrossStats(12, 9).update(np.full((2, 12), np.nan), y[:2])


@pytest.mark.parametrize(("metric", "options"), [
    ("svcca", {"keep": 0.8}), ("pwcca", {"side": "y"}), ("trsa", {"low": 0.2, "up": 0.7}),
    ("rsa", {"rdm_method": "euclidean", "compare": "pearson"}), ("procrustes", {"alpha": 0.5, "normalize": True}),
    ("shape", {"alpha": 0.0}),
])
def test_factored_path_takes_the_options_of_the_pair_path(metric: str, options: dict) -> None:
    pops = _pops(4)
    mat = compare_all(pops, metric, **options)
    names = list(pops)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            want = compare(pops[a], pops[b], metric, **options)
            assert mat.values[i, j] == pytest.approx(want, abs=1e-9), (a, b)


def test_options_are_validated_on_every_path() -> None:
    pops = _pops(5)
    for call in (lambda: compare(pops["narrow"], pops["wide"], "procrustes", alpha=-1.0),
                 lambda: compare_all(pops, "procrustes", alpha=-1.0),
                 lambda: compare_all(pops, "shape", alpha=5.0)):
        with pytest.raises(NeuronscopeError, match=r"alpha must be in \[0, 1\]"):
            call()
    with pytest.raises(NeuronscopeError, match="metric 'cka' takes debiased; drop alpha"):
        compare_all(pops, "cka", alpha=0.5)
    with pytest.raises(NeuronscopeError, match="drop keep"):
        compare(pops["narrow"], pops["wide"], "rsa", keep=0.9)
