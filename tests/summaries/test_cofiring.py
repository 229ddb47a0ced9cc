"""CoFiring: streamed co-firing counts equal the dense binary Gram exactly, in any merge order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries import KINDS, CoFiring, summary_from_state, tree_merge


def _acts(n: int, units: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, units)).astype(np.float32)
    a[:, : units // 4] -= 1.5  # some sparse neurons
    a[:, -1] = -1.0  # a dead neuron
    return a


def test_counts_equal_the_dense_binary_gram_exactly() -> None:
    a = _acts(10_000, 37)
    cf = CoFiring(37, block_rows=512)
    for i in range(0, len(a), 777):  # batches that do not align with the GEMM blocks
        cf.update(a[i : i + 777])
    m = (a > 0).astype(np.int64)
    res = cf.result()
    assert res["cofire"].dtype == np.int64
    assert np.array_equal(res["cofire"], m.T @ m)
    assert np.array_equal(res["count"], m.sum(0))
    assert int(res["n"]) == 10_000
    assert res["count"][-1] == 0 and not res["cofire"][-1].any()


def test_threshold_and_magnitude_definitions() -> None:
    a = _acts(3000, 9, seed=1)
    for t, absolute in ((0.5, False), (0.7, True)):
        cf = CoFiring(9, threshold=t, absolute=absolute)
        cf.update(a)
        m = ((np.abs(a) if absolute else a) > np.float32(t)).astype(np.int64)
        assert np.array_equal(cf.result()["cofire"], m.T @ m)


def test_merge_order_does_not_matter_and_state_round_trips() -> None:
    a = _acts(6000, 20, seed=2)
    parts = []
    for i in range(0, 6000, 1000):
        cf = CoFiring(20, block_rows=300)
        cf.update(a[i : i + 1000])
        parts.append(cf)
    m = (a > 0).astype(np.int64)
    want = m.T @ m
    for perm in itertools.islice(itertools.permutations(range(6)), 0, 720, 97):
        copies = [summary_from_state("cofiring", *parts[j].state()) for j in perm]
        got = tree_merge(copies).result()["cofire"]
        assert np.array_equal(got, want)
    seq = summary_from_state("cofiring", *parts[5].state())
    for j in (3, 0, 4, 1, 2):
        seq.merge(summary_from_state("cofiring", *parts[j].state()))
    assert np.array_equal(seq.result()["cofire"], want)
    assert CoFiring in KINDS


def test_bad_input_is_refused() -> None:
    cf = CoFiring(4)
    with pytest.raises(NeuronscopeError, match="shape"):
        cf.update(np.zeros((3, 5), np.float32))
    with pytest.raises(NeuronscopeError, match="different"):
        cf.merge(CoFiring(4, threshold=0.5))
    with pytest.raises(NeuronscopeError, match="at least one"):
        CoFiring(0)


def test_counts_stay_exact_past_the_float32_bound(monkeypatch) -> None:
    """With the float32 bound lowered to 1,000 rows, the Gram spills into int64 during updates
    and merges and the counts stay exact."""
    import neuronscope.summaries.cofiring as cofiring_mod

    monkeypatch.setattr(cofiring_mod, "EXACT_ROWS", 1000)
    a = _acts(5000, 13, seed=3)
    parts = []
    for i in range(0, 5000, 700):
        cf = CoFiring(13, block_rows=300)
        cf.update(a[i : i + 700])
        parts.append(cf)
    total = parts[0]
    for p in parts[1:]:
        total.merge(p)
    m = (a > 0).astype(np.int64)
    assert total._base is not None and total.n == 5000
    assert np.array_equal(total.cofire(), m.T @ m)
    assert np.array_equal(summary_from_state("cofiring", *total.state()).cofire(), m.T @ m)
