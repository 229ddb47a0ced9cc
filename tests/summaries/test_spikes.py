"""SpikeStats: firing rate, ISI CV, Fano factor and synchrony against closed forms and
Elephant on the same spike trains; exact merges in any order and across cut sequences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries import SpikeStats, summary_from_state, tree_merge

TRIALS, STEPS = 40, 2000


def _feed(stats: SpikeStats, a: np.ndarray, seq: np.ndarray, step: np.ndarray, cuts: list[int]) -> SpikeStats:
    edges = [0, *cuts, len(a)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        stats.update(a[lo:hi], {"sample": np.arange(lo, hi), "item": seq[lo:hi], "step": step[lo:hi]})
    return stats


def _trains(rng: np.random.Generator, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bernoulli(p) spike trains, TRIALS sequences of STEPS steps, (rows, units)."""
    a = (rng.random((TRIALS * STEPS, len(p))) < p).astype(np.float32)
    seq = np.repeat(np.arange(TRIALS), STEPS)
    step = np.tile(np.arange(STEPS), TRIALS)
    return a, seq, step


def test_poisson_and_regular_trains_match_closed_forms() -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.01, 0.02, 0.05])
    a, seq, step = _trains(rng, p)
    period = np.array([5, 10, 40])  # regular trains: a spike every k steps
    reg = (step[:, None] % period[None, :] == 0).astype(np.float32)
    s = _feed(SpikeStats(6, "item", "step"), np.hstack([a, reg]), seq, step, [777, 5000, 41999])
    r = s.result()
    n = TRIALS * STEPS
    # rate: Binomial mean, 4 standard errors
    np.testing.assert_array_less(np.abs(r["rate"][:3] - p), 4 * np.sqrt(p * (1 - p) / n))
    np.testing.assert_allclose(r["rate"][3:], 1 / period)
    # Bernoulli ISIs are geometric(p): CV = sqrt(1 - p) (-> 1, Poisson); Fano of Binomial(STEPS, p)
    # counts = 1 - p (-> 1). Tolerances: 4 standard errors of the estimates (delta method).
    # standard error of a CV c from n intervals: c·sqrt((1 + 2c²)/(2n)) (McKay's approximation);
    # of a variance-to-mean ratio from k trials: (1 - p)·sqrt(2/(k - 1))
    c, isi_n = np.sqrt(1 - p), r["isi_n"][:3]
    np.testing.assert_array_less(np.abs(r["isi_cv"][:3] - c), 4 * c * np.sqrt((1 + 2 * c**2) / (2 * isi_n)))
    np.testing.assert_array_less(np.abs(r["fano"][:3] - (1 - p)), 4 * (1 - p) * np.sqrt(2 / (TRIALS - 1)))
    # regular: every ISI equals the period, every trial the same count
    np.testing.assert_array_equal(r["isi_cv"][3:], 0.0)
    np.testing.assert_array_equal(r["fano"][3:], 0.0)
    np.testing.assert_array_equal(r["isi_mean"][3:], period)
    assert r["trials"] == TRIALS and r["bins"] == n


@pytest.mark.filterwarnings("ignore:The 'copy' argument")
def test_equal_to_elephant_on_the_same_trains() -> None:
    neo = pytest.importorskip("neo")
    pq = pytest.importorskip("quantities")
    from elephant.conversion import BinnedSpikeTrain
    from elephant.spike_train_correlation import correlation_coefficient
    from elephant.statistics import cv, fanofactor, isi, mean_firing_rate

    rng = np.random.default_rng(1)
    p = np.array([0.003, 0.02, 0.08, 0.0])  # the last never spikes
    a, seq, step = _trains(rng, p)
    a[:, 2] = np.maximum(a[:, 2], a[:, 1])  # correlated with unit 1
    dt = 0.001  # seconds per step
    s = _feed(SpikeStats(4, "item", "step"), a, seq, step, [1, 2, 3999, 4001, 33333])
    r = s.result()
    for u in range(3):
        trains = [neo.SpikeTrain(np.flatnonzero(a[seq == k, u]) * dt, t_start=0.0, t_stop=STEPS * dt, units="s")
                  for k in range(TRIALS)]
        isis = np.concatenate([isi(st).magnitude for st in trains])
        assert r["isi_cv"][u] == pytest.approx(cv(isis), rel=1e-12)
        assert r["fano"][u] == pytest.approx(fanofactor(trains), rel=1e-12)
        whole = neo.SpikeTrain(np.flatnonzero(a[:, u]) * dt, t_start=0.0, t_stop=len(a) * dt, units="s")
        assert r["rate"][u] / dt == pytest.approx(float(mean_firing_rate(whole).rescale("Hz").magnitude), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trains = [neo.SpikeTrain((np.flatnonzero(a[:, u]) + 0.5) * dt, t_start=0.0, t_stop=len(a) * dt,
                                 units="s") for u in range(3)]  # bin centres: no rounding at edges
        ref = correlation_coefficient(BinnedSpikeTrain(trains, bin_size=dt * pq.s))
    np.testing.assert_allclose(r["synchrony"][:3, :3], ref, atol=1e-12)
    # the silent neuron: rate 0, no ISI, Fano and synchrony undefined -> NaN, not an error
    assert r["rate"][3] == 0 and r["isi_n"][3] == 0
    assert np.isnan(r["isi_cv"][3]) and np.isnan(r["fano"][3]) and np.isnan(r["synchrony"][3]).all()


def test_merge_in_any_order_equals_the_whole() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.005, 0.2, size=7)
    a, seq, step = _trains(rng, p)
    a = a[: 10 * STEPS]
    seq, step = seq[: 10 * STEPS], step[: 10 * STEPS]
    a[:, 3] *= rng.integers(1, 4, size=len(a))  # spike counts above 1 per bin
    whole = _feed(SpikeStats(7), a, seq, step, [])
    expect = whole.result()
    cuts = np.sort(rng.choice(np.arange(1, len(a)), size=23, replace=False))
    edges = [0, *cuts.tolist(), len(a)]
    parts = []  # each part keeps the global sample ids of its rows
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        st = SpikeStats(7)
        st.update(a[lo:hi], {"sample": np.arange(lo, hi), "item": seq[lo:hi], "step": step[lo:hi]})
        parts.append(st)

    def same(r: dict) -> None:
        for k, v in expect.items():
            np.testing.assert_allclose(r[k], v, rtol=1e-12, atol=1e-12, err_msg=k)

    for trial in range(4):
        order = rng.permutation(len(parts))
        copies = [SpikeStats.from_state(*parts[i].state()) for i in order]
        acc = copies[0]
        for c in copies[1:]:
            acc.merge(c)
        same(acc.result())
        if trial == 0:
            same(tree_merge([SpikeStats.from_state(*q.state()) for q in parts]).result())
    rebuilt = summary_from_state("spikes", *whole.state())
    same(rebuilt.result())
    # a state with open blocks survives the round trip and still merges
    half = SpikeStats.from_state(*parts[0].state())
    rest = SpikeStats.from_state(*tree_merge([SpikeStats.from_state(*q.state()) for q in parts[1:]]).state())
    same(summary_from_state("spikes", *half.merge(rest).state()).result())


def test_sequences_without_ids_and_steps_use_the_sample_order() -> None:
    a = np.zeros((100, 1), dtype=np.float32)
    a[[3, 10, 30, 31, 90], 0] = 1
    s = SpikeStats(1, sequence=None, step=None)
    for lo in range(0, 100, 7):
        s.update(a[lo : lo + 7], {"sample": np.arange(lo, min(lo + 7, 100))})
    r = s.result()
    isis = np.diff([3, 10, 30, 31, 90])
    assert r["isi_n"][0] == 4 and r["isi_mean"][0] == isis.mean()
    assert r["isi_cv"][0] == pytest.approx(isis.std() / isis.mean(), rel=1e-12)
    assert r["trials"] == 1 and r["count_var"][0] == 0


def test_bad_spike_input() -> None:
    s = SpikeStats(2)
    with pytest.raises(NeuronscopeError, match="non-negative"):
        s.update(np.array([[-1.0, 0.0]], dtype=np.float32), {"sample": np.array([0]), "item": np.array([0])})
    with pytest.raises(NeuronscopeError, match="steps .* must increase"):
        s.update(np.zeros((2, 2), dtype=np.float32),
                 {"sample": np.array([0, 1]), "item": np.array([0, 0]), "step": np.array([1, 1])})
    s.update(np.ones((2, 2), dtype=np.float32),
             {"sample": np.array([0, 1]), "item": np.array([0, 0]), "step": np.array([0, 1])})
    with pytest.raises(NeuronscopeError, match="same sample twice"):
        s.merge(SpikeStats.from_state(*s.state()))
