"""A small spiking network trained deterministically on scikit-learn's digits, for real tests.

``train_snn(seed)`` trains a fully-connected leaky integrate-and-fire network with snnTorch
in a few seconds on one CPU thread and returns it wrapped as a
:class:`~neuronscope.sources.snn.SpikingNetwork`:

* input: the same standardized digits as :mod:`neuronscope.testing.digits` (``(n, 64)``, so
  an SNN and the digits MLP share one source), turned back into pixel intensities
  p = pixel/16 ∈ [0, 1] by the wrapper's ``rate_scale``/``rate_shift`` and rate coded
  (Bernoulli spikes with probability p per step, :func:`~neuronscope.sources.snn.rate_code`,
  seeded and batch-independent) over ``STEPS`` steps;
* ``fc1`` (64→64) → ``act1`` (``snn.Leaky``, β = 0.9, threshold 1, reset by subtraction)
  → ``fc2`` (64→64) → ``act2`` (``snn.Leaky``) → ``out`` (64→10, a non-spiking read-out
  whose mean over the steps is the logits);
* training: Adam (lr 2e-3, batch 64) on the cross-entropy of the mean read-out, through
  snnTorch's arctan surrogate gradient; seeded init, minibatch order and input spikes;
  single-threaded, so the weights are identical for a seed. Cached per process.

Sites (as :class:`SpikingNetwork` exposes them): ``act1``, ``act2`` (spikes) and
``act1.mem``, ``act2.mem`` (membrane potentials); the names mirror the digits MLP's.
Model names: ``digits-snn:SEED`` and ``digits-snn:SEED:untrained`` (:func:`snn_model`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.snn import SpikingNetwork
from neuronscope.testing.digits import digits_data, raw_digits

__all__ = ["BETA", "STEPS", "build_snn", "snn_accuracy", "snn_model", "train_snn"]

#: Time steps per image.
STEPS = 16
#: Membrane decay per step of the leaky neurons.
BETA = 0.9


@functools.lru_cache(maxsize=1)
def _intensity_map() -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with pixel/16 = x·scale + shift for the standardized digits x."""
    _, _, mu, sd = raw_digits()
    return (sd / 16.0).astype(np.float32), (mu / 16.0).astype(np.float32)


def build_snn(hidden: int = 64, beta: float = BETA) -> nn.Sequential:
    """The one-step network (untrained; weights from torch's current RNG state)."""
    import snntorch as snn

    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, hidden)), ("act1", snn.Leaky(beta=beta, init_hidden=True)),
        ("fc2", nn.Linear(hidden, hidden)), ("act2", snn.Leaky(beta=beta, init_hidden=True)),
        ("out", nn.Linear(hidden, 10)),
    ]))


def _wrap(net: nn.Module, steps: int, mode: str, seed: int) -> SpikingNetwork:
    scale, shift = _intensity_map()
    return SpikingNetwork(net, steps=steps, mode=mode, encoding="rate", rate_scale=scale,
                          rate_shift=shift, seed=seed)


@functools.lru_cache(maxsize=16)
def _trained_state(seed: int, hidden: int, epochs: int, steps: int, trained: bool) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _wrap(build_snn(hidden), steps, "counts", seed)
            if trained:
                x, y = digits_data("train", "mlp")
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                opt = torch.optim.Adam(model.parameters(), lr=2e-3)
                gen = torch.Generator().manual_seed(seed)
                loss_fn = nn.CrossEntropyLoss()
                model.train()
                for epoch in range(epochs):
                    # fresh input spikes each epoch: the encoder seed moves with the epoch
                    model.seed = seed * 1000 + epoch + 1
                    for idx in torch.randperm(len(xt), generator=gen).split(64):
                        opt.zero_grad()
                        loss_fn(model(xt[idx]), yt[idx]).backward()
                        opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def train_snn(seed: int = 0, hidden: int = 64, epochs: int = 8, steps: int = STEPS, mode: str = "counts",
              trained: bool = True) -> SpikingNetwork:
    """The digits SNN trained from ``seed`` (see the module docstring), wrapped for recording
    with ``mode`` (``counts``, ``rates`` or ``steps``) and input-spike seed ``seed``.
    ``trained=False`` returns the untrained network of the same seed. A fresh module in eval
    mode; identical weights for identical arguments."""
    if seed < 0:
        raise NeuronscopeError("seed must be a non-negative integer")
    net = build_snn(hidden)
    net.load_state_dict(_trained_state(int(seed), int(hidden), int(epochs), int(steps), bool(trained)))
    model = _wrap(net, steps, mode, seed)
    model.eval()
    model.neuronscope_id = f"digits-snn:{seed}" + ("" if trained else ":untrained")
    return model


def snn_accuracy(model: nn.Module) -> float:
    """Held-out (test split) accuracy: the argmax of the mean read-out."""
    x, y = digits_data("test", "mlp")
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def snn_model(name: str, mode: str = "counts") -> SpikingNetwork:
    """A model from a name ``digits-snn:SEED`` or ``digits-snn:SEED:untrained``."""
    parts = name.split(":")
    if len(parts) not in (2, 3) or parts[0] != "digits-snn" or not parts[1].isdigit():
        raise NeuronscopeError(f"bad SNN model name {name!r}; use digits-snn:SEED[:untrained]")
    if len(parts) == 3 and parts[2] != "untrained":
        raise NeuronscopeError(f"bad SNN model name {name!r}; the optional suffix is ':untrained'")
    return train_snn(int(parts[1]), mode=mode, trained=len(parts) == 2)
