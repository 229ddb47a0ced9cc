"""Spiking networks recorded like any model: recorded spikes and membrane potentials equal a
hand-unrolled snnTorch pass exactly (per-step network with init_hidden states, and a network
that unrolls itself with explicit states), counts/rates/steps modes, batch-independent rate
coding, conv spiking layers, and a site that never spikes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

snn = pytest.importorskip("snntorch")

from neuronscope.analyses.characterize import characterize, site_summary  # noqa: E402
from neuronscope.analyses.spikes import (  # noqa: E402
    record_spikes,
    spike_stats,
    spike_table,
    summarize_spikes,
)
from neuronscope.errors import NeuronscopeError  # noqa: E402
from neuronscope.recording import record  # noqa: E402
from neuronscope.sources.snn import SpikingNetwork, StepSource, rate_code  # noqa: E402
from neuronscope.sources.tensors import TensorSource  # noqa: E402

STEPS = 12


def _per_step_net(seed: int = 0, threshold: float = 1.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), snn.Leaky(beta=0.8, init_hidden=True, threshold=threshold),
                         nn.Linear(16, 6), snn.Leaky(beta=0.7, init_hidden=True, threshold=threshold))


class _SelfUnrolled(nn.Module):
    """The snnTorch tutorial style: explicit membrane states, the loop inside forward."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.steps = steps
        self.fc1, self.lif1 = nn.Linear(10, 16), snn.Leaky(beta=0.85)
        self.fc2, self.lif2 = nn.Linear(16, 6), snn.Leaky(beta=0.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for _ in range(self.steps):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


def _inputs(n: int = 37) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).uniform(0, 1.2, size=(n, 10)).astype(np.float32))


def _hand_unrolled(net: nn.Sequential, spikes_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: snnTorch layers called step by step by hand, fresh states per item."""
    lif1, lif2 = net[1], net[3]
    lif1.mem, lif2.mem = torch.zeros(0), torch.zeros(0)  # fresh state: zeros at the first call
    s1, m1, s2, m2 = [], [], [], []
    with torch.no_grad():
        for t in range(spikes_in.shape[1]):
            a = lif1(net[0](spikes_in[:, t]))
            s1.append(a)
            m1.append(lif1.mem.clone())
            b = lif2(net[2](a))
            s2.append(b)
            m2.append(lif2.mem.clone())
    return {"1": torch.stack(s1, 1), "1.mem": torch.stack(m1, 1), "3": torch.stack(s2, 1), "3.mem": torch.stack(m2, 1)}


def test_recorded_steps_equal_a_hand_unrolled_pass(tmp_path: Path) -> None:
    x = _inputs()
    net = _per_step_net()
    model = SpikingNetwork(net, steps=STEPS, mode="steps", encoding="rate", seed=7)
    spikes_in = rate_code(x, STEPS, seed=7)
    parts = [_hand_unrolled(net, spikes_in[i : i + 8]) for i in range(0, len(x), 8)]  # the recorded batches
    ref = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert ref["1"].sum() > 0 and ref["3"].sum() > 0  # the reference does spike
    run = record(model, model.source(x.numpy(), batch_size=8), model.sites(mem=True), tmp_path / "steps.zarr",
                 dtype="float32", progress=False)
    assert set(run.sites) == {"1", "3", "1.mem", "3.mem"}
    pop = run.population()
    samples = run.samples
    np.testing.assert_array_equal(samples["item"], np.repeat(np.arange(len(x)), STEPS))
    np.testing.assert_array_equal(samples["step"], np.tile(np.arange(STEPS), len(x)))
    for site, want in ref.items():
        got = pop.isel(neuron=pop.site.values == site).values
        np.testing.assert_array_equal(got, want.reshape(len(x) * STEPS, -1).numpy(), err_msg=site)
    # counts / rates modes: one sample per item, pooled over the same steps
    for mode, pool in (("counts", lambda t: t.sum(1)), ("rates", lambda t: t.mean(1))):
        m = model.with_mode(mode)
        r = record(m, m.source(x.numpy(), batch_size=5), "1,3", tmp_path / f"{mode}.zarr", dtype="float32",
                   progress=False)
        p = r.population()
        for site in ("1", "3"):
            np.testing.assert_allclose(p.isel(neuron=p.site.values == site).values, pool(ref[site]).numpy(),
                                       rtol=1e-6, err_msg=f"{mode} {site}")


def test_self_unrolling_network_with_explicit_states(tmp_path: Path) -> None:
    x = _inputs(20)
    net = _SelfUnrolled(STEPS)
    model = SpikingNetwork(net, mode="steps")  # steps=None: the network unrolls itself
    src = StepSource(TensorSource(x.numpy(), batch_size=6), STEPS)  # samples = (item, step)
    run = record(model, src, "lif1,lif2,lif1.mem", tmp_path / "self.zarr", dtype="float32", progress=False)
    want: dict[str, list[torch.Tensor]] = {"lif1": [], "lif2": [], "lif1.mem": []}
    with torch.no_grad():  # by hand, on the same batches (BLAS rounding depends on the batch size)
        for xb in x.split(6):
            mem1, mem2 = net.lif1.init_leaky(), net.lif2.init_leaky()
            s1, m1, s2 = [], [], []
            for _ in range(STEPS):
                a, mem1 = net.lif1(net.fc1(xb), mem1)
                b, mem2 = net.lif2(net.fc2(a), mem2)
                s1.append(a)
                m1.append(mem1)
                s2.append(b)
            for site, seq in (("lif1", s1), ("lif2", s2), ("lif1.mem", m1)):
                want[site].append(torch.stack(seq, 1).flatten(0, 1))
    pop = run.population()
    assert torch.cat(want["lif1"]).sum() > 0
    for site, parts in want.items():
        np.testing.assert_array_equal(pop.isel(neuron=pop.site.values == site).values, torch.cat(parts).numpy(),
                                      err_msg=site)


def test_rate_code_is_batch_independent_and_has_the_rate() -> None:
    p = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, size=(50, 30)).astype(np.float32))
    whole = rate_code(p, 200, seed=3)
    parts = torch.cat([rate_code(p[i : i + 7], 200, seed=3) for i in range(0, 50, 7)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, rate_code(p, 200, seed=4))
    freq = whole.mean(1).numpy()  # per item and feature over 200 steps: Binomial(200, p)/200
    se = np.sqrt(p.numpy() * (1 - p.numpy()) / 200)
    assert np.mean(np.abs(freq - p.numpy()) < 4 * se + 1e-9) > 0.995
    assert abs(float(whole.mean()) - float(p.mean())) < 4 * np.sqrt(0.25 / whole.numel())


def test_conv_spiking_layer_channels_are_units(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.9, init_hidden=True, threshold=0.5))
    x = np.random.default_rng(2).uniform(0, 1, size=(9, 1, 5, 5)).astype(np.float32)
    model = SpikingNetwork(net, steps=5, mode="steps", encoding="rate")
    run = record(model, model.source(x, batch_size=4), "1", tmp_path / "conv.zarr", dtype="float32",
                 conv="mean", progress=False)
    assert run.sites == {"1": 4} and run.n_samples == 9 * 5
    with torch.no_grad():
        model(torch.from_numpy(x))
    want = model.last_spikes["1"].flatten(0, 1).flatten(2).mean(2).numpy()
    np.testing.assert_allclose(run.population().values, want, rtol=1e-6)


def test_site_that_never_spikes_is_dead_not_nan(tmp_path: Path) -> None:
    x = _inputs(30)
    model = SpikingNetwork(_per_step_net(threshold=1e9), steps=STEPS, mode="steps", encoding="rate")
    run = record_spikes(model, model.source(x.numpy(), batch_size=8), "1,3", tmp_path / "dead.zarr",
                        progress=False)
    table = characterize(run)
    assert table["dead"].all() and np.isfinite(table["freq"]).all()
    sites = site_summary(run)
    assert (sites["dead_frac"] == 1.0).all()
    spikes = spike_table(run)
    assert spikes["dead"].all() and (spikes["rate"] == 0).all() and spikes["isi_cv"].isna().all()
    again = spike_table(spike_stats(run))
    np.testing.assert_array_equal(again["rate"], spikes["rate"])


def test_bad_snn_configuration() -> None:
    with pytest.raises(NeuronscopeError, match="no snnTorch spiking-neuron layer"):
        SpikingNetwork(nn.Linear(2, 2), steps=3)
    with pytest.raises(NeuronscopeError, match="mode must be one of"):
        SpikingNetwork(_per_step_net(), steps=3, mode="spikes")
    with pytest.raises(NeuronscopeError, match="rate encoding needs steps"):
        SpikingNetwork(_per_step_net(), encoding="rate")
    with pytest.raises(NeuronscopeError, match="no spiking layer 'lif9'"):
        SpikingNetwork(_per_step_net(), steps=3, layers=["lif9"])


def test_spike_statistics_in_memory_equal_those_of_the_stored_run(tmp_path: Path) -> None:
    x = _inputs(25)
    model = SpikingNetwork(_per_step_net(), steps=STEPS, mode="steps", encoding="rate", seed=2)
    live = summarize_spikes(model, model.source(x.numpy(), batch_size=4), "1,3,1.mem", spike_sites="1,3")
    assert set(live) == {"1", "3"}
    run = record(model, model.source(x.numpy(), batch_size=9), "1,3", tmp_path / "r.zarr", dtype="float32",
                 progress=False)
    stored = spike_stats(run, chunk_rows=50)  # other batch and chunk boundaries: the same numbers
    for site in ("1", "3"):
        a, b = live[site].result(), stored[site].result()
        assert a["trials"] == b["trials"] == len(x) and a["bins"] == len(x) * STEPS
        for k in ("rate", "isi_n", "isi_cv", "fano", "synchrony"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-12, err_msg=f"{site} {k}")
