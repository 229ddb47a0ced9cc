"""Causal results in the atlas: per-neuron importance (mean |conductance|) in the site table, an
influential-path page and a steering-curve page show the values saved into the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from atlas_browser import page_url
from torch import nn

import neuronscope
from neuronscope.analyses.attribute import (
    ablation_effects,
    conductance_over,
    influential_path,
    save_ablation,
    save_conductance,
    save_path,
)
from neuronscope.analyses.steer import save_steering_curve, steering_sweep
from neuronscope.analyses.targets import output_unit
from neuronscope.atlas import build


class TwoLayer(nn.Module):
    """4 → 6 → 5 → 2 with ReLUs ``act1``, ``act2`` (seeded random weights)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.l1, self.act1 = nn.Linear(4, 6), nn.ReLU()
        self.l2, self.act2 = nn.Linear(6, 5), nn.ReLU()
        self.out = nn.Linear(5, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act2(self.l2(self.act1(self.l1(x)))))


@pytest.fixture(scope="module")
def causal_atlas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("causal")
    model = TwoLayer().eval()
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    src = neuronscope.TensorSource(x, batch_size=16)
    run = neuronscope.record(model, src, "act*", out=tmp / "run", keep="summaries", progress=False,
                             summary_config={"k": 4})
    tgt = output_unit(0)
    cond = conductance_over(model, src, "act*", tgt, steps=16)
    save_conductance(run, cond, attrs={"model": "two-layer"})
    path = influential_path(model, "act*", tgt, src)
    save_path(run, path, attrs={"model": "two-layer"})
    eff = ablation_effects(model, "act2", [0, 1, 2], tgt, src, cumulative=True)
    save_ablation(run, eff)
    v = np.linspace(-1.0, 1.0, 5)
    curve = steering_sweep(model, "act2", v, [-2.0, -1.0, 0.0, 1.0, 2.0], tgt, src)
    save_steering_curve(run, curve, title="steering act2 <b>along</b> v")
    index = build.build_atlas(run, tmp / "atlas", examples=4, progress=False)
    return run, index, cond, path, eff, curve


def test_site_table_gains_the_importance_column(causal_atlas, chromium):
    run, index, cond, *_ = causal_atlas
    for site in ("act1", "act2"):
        root = chromium.dom(page_url(index, site))
        table = root.find(id="neurons")
        heads = [th.text.strip(" ▲▼") for th in table.find(tag="thead").find_all(tag="th")]
        assert "importance" in heads
        col = heads.index("importance")
        want = cond[site].result()["mean_abs"]
        shown = {}
        for tr in table.find(tag="tbody").find_all(tag="tr"):
            cells = tr.find_all(tag="td")
            shown[int(cells[0].text)] = cells[col].text
        assert len(shown) == len(want)
        for u, text in shown.items():  # the table shows 3 significant digits
            assert float(text) == pytest.approx(want[u], rel=5e-3, abs=1e-9), (site, u, text)
        # the neuron page's statistics show it too
        stats = chromium.dom(page_url(index, site, 0)).find(id="stats")
        row = next(tr for tr in stats.find_all(tag="tr") if tr.find(tag="th").text == "importance")
        assert float(row.find(tag="td").text) == pytest.approx(want[0], rel=2e-3, abs=1e-9)


def test_path_and_steering_pages_show_the_saved_values(causal_atlas, chromium):
    run, index, _cond, path, eff, curve = causal_atlas
    front = chromium.dom(page_url(index))
    links = {a.text: a.attrs["href"] for a in front.find(id="extras").find_all(tag="a")}
    path_title = next(t for t in links if t.startswith("influential neuron path"))
    steer_title = "steering act2 <b>along</b> v"
    assert steer_title in links  # corpus-like text in a title stays text
    assert any(t.startswith("zero-ablation of act2") for t in links)

    # the path page: one row per layer with the unit and the joint influence saved
    root = chromium.dom(index.resolve().as_uri() + links[path_title])
    rows = root.find(cls="result-table").find(tag="tbody").find_all(tag="tr")
    assert [r.find_all(tag="td")[1].text for r in rows] == ["act1", "act2"]
    assert [int(r.find_all(tag="td")[2].text) for r in rows] == path.units
    # each unit links to its neuron page
    assert [r.find(cls="unit-link").attrs["href"] for r in rows] == [f"#/{s}/{u}" for s, u in
                                                                     zip(path.sites, path.units, strict=True)]
    for r, v in zip(rows, path.influence, strict=True):
        assert float(r.find_all(tag="td")[3].text) == pytest.approx(v, rel=1e-3)
    pts = root.find(cls="line-plot").find_all(cls="point")
    assert [float(p.attrs["data-y"]) for p in pts] == pytest.approx(path.influence, rel=1e-5)

    # the steering page: a line plot whose points are the saved coefficients and mean targets
    root = chromium.dom(index.resolve().as_uri() + links[steer_title])
    assert root.find(tag="h1").text == steer_title and not root.find_all(tag="b")
    svg = root.find(cls="line-plot")
    pts = svg.find_all(cls="point")
    assert [float(p.attrs["data-x"]) for p in pts] == curve.coefficients.tolist()
    assert [float(p.attrs["data-y"]) for p in pts] == pytest.approx(curve.mean, rel=1e-5)
    assert svg.find_all(cls="baseline") and svg.find_all(cls="band")
    # the curve moves: steering changes the target
    assert np.ptp(curve.mean) > 0

    saved = run.extras("steer-act2")
    np.testing.assert_array_equal(saved["arrays"]["mean"], curve.mean)
    assert saved["attrs"]["clean"] == curve.clean
    np.testing.assert_array_equal(run.extras("ablate-act2")["arrays"]["effect"], eff.effect)
