"""A hand-built network with planted label-specific neurons, recorded for real."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LABELS = ["L", "M", "N", "O"]
#: unit 0 fires only on label L; unit 1 fires on L and on M; the rest ignore the label.
ONLY_L, L_AND_M = 0, 1


class Planted(nn.Module):
    """``act = ReLU(W x + b)`` on inputs ``x = [one-hot label (4), noise (8)]``."""

    def __init__(self, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(12, hidden)
        self.act = nn.ReLU()
        with torch.no_grad():
            w = torch.zeros(hidden, 12)
            b = torch.zeros(hidden)
            w[ONLY_L, 0], b[ONLY_L], w[ONLY_L, 4] = 2.0, -1.0, 0.3
            w[L_AND_M, 0], w[L_AND_M, 1], b[L_AND_M], w[L_AND_M, 5] = 2.0, 2.0, -1.0, 0.3
            w[2:, 4:] = torch.randn(hidden - 2, 8, generator=g)
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def planted_inputs(n: int = 2400, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Inputs and their labels (balanced over ``LABELS``)."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % len(LABELS)
    rng.shuffle(codes)
    x = np.zeros((n, 12), dtype=np.float32)
    x[np.arange(n), codes] = 1.0
    x[:, 4:] = rng.standard_normal((n, 8))
    return x, [LABELS[c] for c in codes]


def record_planted(tmp_path, keep: str = "both", n: int = 2400, labels=None):
    """Record the planted network over a labelled TensorSource; returns the run."""
    from neuronscope.recording import record
    from neuronscope.sources.tensors import TensorSource

    x, lab = planted_inputs(n)
    src = TensorSource(x, batch_size=256, labels={"lang": labels if labels is not None else lab})
    return record(Planted(), src, "act", tmp_path / f"planted-{keep}.zarr", keep=keep, dtype="float32",
                  progress=False)
