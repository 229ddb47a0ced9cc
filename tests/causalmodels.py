"""Hand-set torch models with closed-form answers for the intervene / attribute / steer tests."""

from __future__ import annotations

import torch
from torch import nn


class MultiLayer(nn.Module):
    """Captum's ``BasicModel_MultiLayer`` shape: linear 3→4, ReLU, linear 4→2, hand-set.

    With ``x = (1, 2, 3)`` and a zero baseline the pre-activations along the path
    ``h(α) = b1 + α·W1 x`` are ``h0 = −3 + 6α`` (crosses the kink at α = ½, rising),
    ``h1 = 1 + 2α`` (always on), ``h2 = ½ − α`` (crosses at α = ½, falling) and ``h3 = 4α``;
    unit 3 has zero outgoing weight."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.linear1 = nn.Linear(3, 4)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear1.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))
            self.linear1.bias.copy_(torch.tensor([-3.0, 1.0, 0.5, 0.0]))
            self.linear2.weight.copy_(torch.tensor([[2.0, -1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 0.0]]))
            self.linear2.bias.copy_(torch.tensor([0.5, -1.0]))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


class Readout(nn.Module):
    """``y = W x`` (site ``hidden``, [b, u]) then a linear readout ``r = w·y + c`` (float64)."""

    def __init__(self, d_in: int = 5, units: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(d_in, units, dtype=torch.float64)
        self.readout = nn.Linear(units, 1, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.hidden(x))


class PlantedPath(nn.Module):
    """Three ReLU layers of 3 units whose units also write straight into the output
    ``F = Σ_l Σ_j a_l[j]``; on ``x = (1, 1)``:

    * ``a1 = relu(W1 x) = (3, 1, 0.5)``;
    * ``a2 = (relu(2·a1[0]), relu(4·x0), relu(0.5·x1)) = (6, 4, 0.5)`` — unit 0 is driven by
      ``a1[0]``;
    * ``a3 = (relu(5·x1), relu(x0), relu(3·a2[1])) = (5, 1, 12)`` — unit 2 is driven by ``a2[1]``.

    Greedy joint influence: layer 1 → unit 0 (drop 3 + 6 = 9); layer 2 given it → unit 1
    (+4 + 12 = 25; unit 0 is already silenced); layer 3 given both → unit 0 (+5 = 30; unit 2,
    the largest alone, is already silenced). The planted path is (0, 1, 0)."""

    def __init__(self):
        super().__init__()
        self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.w1 = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = self.act1(x @ self.w1.T)
        a2 = self.act2(torch.stack([2 * a1[:, 0], 4 * x[:, 0], 0.5 * x[:, 1]], dim=1))
        a3 = self.act3(torch.stack([5 * x[:, 1], x[:, 0], 3 * a2[:, 1]], dim=1))
        return (a1.sum(1) + a2.sum(1) + a3.sum(1))[:, None]


class Conv(nn.Module):
    """A 1×1 conv with 2 channels (``2x`` and ``−x``), then a global sum readout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1).sum(1, keepdim=True)
