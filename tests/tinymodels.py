"""Small real torch models with hand-set or seeded weights, used across tests."""

from __future__ import annotations

import time

import torch
from torch import nn


class HandSet(nn.Module):
    """y = relu(W x + b) with hand-set W, b; then a 2-output readout."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 3)
        self.act = nn.ReLU()
        self.out = nn.Linear(3, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.hidden.bias.copy_(torch.tensor([0.0, -1.0, 0.5]))
            self.out.weight.fill_(1.0)
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


class TupleOut(nn.Module):
    """A module whose output is a tuple (like HF attention blocks)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 4)

    def forward(self, x):
        y = self.lin(x)
        return y, y.sum()


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleOut()

    def forward(self, x):
        return self.block(x)[0]


class TinyConv(nn.Module):
    """A conv layer whose output channels have closed-form values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))

    def forward(self, x):
        return self.conv(x)


class TinyText(nn.Module):
    """A small text model over a BERT tokenizer's ids: embedding → MLP with GELU, seeded.
    ``delay`` seconds of sleep per forward make a recording slow enough to kill mid-run."""

    def __init__(self, vocab: int = 30522, width: int = 24, seed: int = 0, delay: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(512, width)
        self.ff = nn.Linear(width, 48)
        self.act = nn.GELU()
        self.proj = nn.Linear(48, width)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.delay = delay

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if self.delay:
            time.sleep(self.delay)
        pos = torch.arange(input_ids.shape[1])[None, :]
        h = self.emb(input_ids) + self.pos(pos)
        return self.proj(self.act(self.ff(h)))
