"""Recorded values are a site's output as the module returned it: in-place operations later in
the forward pass (ReLU(inplace=True), ``out += identity``) cannot change them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from neuronscope.recording import forward_batches, record
from neuronscope.sources.tensors import TensorSource
from neuronscope.sources.torch_sites import SiteCapture, sites


def _images(n: int = 24, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, size, size)).astype(np.float32)


def _positions(t: torch.Tensor) -> np.ndarray:
    """(batch, C, H, W) -> one row per (item, spatial position), as recording orders them."""
    return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1]).numpy()


def test_inplace_relu_after_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True)).eval()
    x = _images()
    with torch.no_grad():
        want = _positions(model[0](torch.from_numpy(x)))  # the conv alone: no ReLU ran on it
    assert want.min() < -0.2
    run = record(model, TensorSource(x, batch_size=7), "0", out=tmp_path / "r.zarr", keep="both",
                 dtype="float32", progress=False)
    got = run.population("0").values
    np.testing.assert_array_equal(got, want)
    ss = run.summaries("0").result()
    np.testing.assert_allclose(ss["moments.min"], want.min(0), rtol=1e-6)
    assert (ss["firing.pos_count"] < len(want)).all()  # no channel looks always-on or dead by mistake


class AddAfter(nn.Module):
    """``h = lin(x); h += 1; h *= 2`` — the site ``lin`` is changed in place twice after it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h += 1.0
        h *= 2.0
        return h


def test_inplace_add_after_a_linear_site() -> None:
    torch.manual_seed(1)
    model = AddAfter().eval()
    x = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
    acts = np.concatenate([a["lin"] for _, a in forward_batches(model, TensorSource(x, batch_size=4), "lin")])
    with torch.no_grad():
        np.testing.assert_array_equal(acts, model.lin(torch.from_numpy(x)).numpy())
    # the raw capture (flatten=False) holds clones too
    with SiteCapture(model, sites(model, "lin")) as cap, torch.no_grad():
        model(torch.from_numpy(x))
        np.testing.assert_array_equal(cap.outputs["lin"].numpy(), model.lin(torch.from_numpy(x)).numpy())


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, by hand: conv → BN → ReLU(inplace) → conv → BN,
    ``out += identity``, ReLU(inplace)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.stem_relu = nn.ReLU(inplace=True)
        self.block = BasicBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem_relu(self.stem(x)))


def test_torchvision_style_block_records_pre_activation_values(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = TinyResNet()
    for bn in (model.block.bn1, model.block.bn2):  # non-trivial running statistics
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    model.eval()
    x = _images(12)
    # each module applied by hand, copying before anything in place can run
    with torch.no_grad():
        t = torch.from_numpy(x)
        stem = model.stem(t).clone()
        h = torch.relu(stem)
        bn1 = model.block.bn1(model.block.conv1(h)).clone()
        bn2 = model.block.bn2(model.block.conv2(torch.relu(bn1))).clone()
        final = torch.relu(bn2 + h)
        assert (bn2 < 0).any() and (bn1 < 0).any() and (stem < 0).any()
        np.testing.assert_allclose(model(t).numpy(), final.numpy(), rtol=1e-5, atol=1e-6)
    run = record(model, TensorSource(x, batch_size=5), "stem,block.bn1,block.bn2", out=tmp_path / "r.zarr",
                 keep="both", dtype="float32", progress=False)
    for site, want in (("stem", stem), ("block.bn1", bn1), ("block.bn2", bn2)):
        np.testing.assert_allclose(run.population(site).values, _positions(want), rtol=1e-5, atol=1e-6)
    mean = next(a for _, a in forward_batches(model, TensorSource(x, batch_size=12), "block.bn2", conv="mean"))
    np.testing.assert_allclose(mean["block.bn2"], bn2.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
