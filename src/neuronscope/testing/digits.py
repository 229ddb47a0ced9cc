"""Small networks trained on scikit-learn's digits (8×8 images, 10 classes), for real tests.

``train_digits("mlp", seed)`` trains a two-hidden-layer MLP (64-64, ReLU) in about a second
on one CPU thread; ``train_digits("cnn", seed)`` a small CNN (8 and 16 conv channels) in a
few seconds. Training is deterministic for a given seed (seeded init and minibatch order,
single-threaded), and the trained weights are cached per process, so every caller gets an
identical fresh copy. Inputs are standardized pixels, which keeps dead ReLUs rare.

Neuron sites: MLP ``act1``, ``act2`` (post-ReLU hidden units); CNN ``act1``, ``act2``
(conv channels) and ``act3`` (hidden fully-connected units).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError

ARCHS = ("mlp", "cnn")
#: Fixed split (independent of the model seed): the first N_TRAIN shuffled digits train.
N_TRAIN = 1300


@functools.lru_cache(maxsize=1)
def raw_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shuffled raw pixels (0–16), labels, and the training split's per-pixel mean and
    standard deviation (1 where a pixel is constant): the networks see ``(raw - mu) / sd``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(12345).permutation(len(d.target))
    raw = d.data[order]
    mu, sd = raw[:N_TRAIN].mean(0), raw[:N_TRAIN].std(0)
    return raw, d.target[order].astype(np.int64), mu, np.where(sd > 0, sd, 1.0)


@functools.lru_cache(maxsize=1)
def _data() -> tuple[np.ndarray, np.ndarray]:
    raw, y, mu, sd = raw_digits()
    return ((raw - mu) / sd).astype(np.float32), y


def digits_images() -> np.ndarray:
    """The raw 8 × 8 pixel intensities (0–16, float64) of all 1797 digits, in the order of
    ``digits_data("all")`` — what the images look like (the networks see them standardized)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[np.random.default_rng(12345).permutation(len(d.target))]


def digits_data(split: str = "all", arch: str = "mlp") -> tuple[np.ndarray, np.ndarray]:
    """Digits inputs and labels: ``split`` in ``train`` / ``test`` / ``all`` (1797 items).

    Inputs are pixel intensities standardized with the training split's per-pixel mean and
    standard deviation (constant pixels stay 0), float32, shaped ``(n, 64)`` for ``mlp`` and
    ``(n, 1, 8, 8)`` for ``cnn``.
    """
    x, y = _data()
    sel = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None), "all": slice(None)}
    if split not in sel:
        raise NeuronscopeError(f"split must be one of train/test/all, not {split!r}")
    x, y = x[sel[split]], y[sel[split]]
    if arch == "cnn":
        x = x.reshape(-1, 1, 8, 8)
    return x, y


def build_digits(arch: str = "mlp", hidden: int = 64) -> nn.Sequential:
    """An untrained digits network (weights from torch's current RNG state)."""
    if arch == "mlp":
        return nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64, hidden)), ("act1", nn.ReLU()),
            ("fc2", nn.Linear(hidden, hidden)), ("act2", nn.ReLU()),
            ("out", nn.Linear(hidden, 10)),
        ]))
    if arch == "cnn":
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("act1", nn.ReLU()),
            ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("act2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)), ("flat", nn.Flatten()),
            ("fc3", nn.Linear(16 * 16, hidden)), ("act3", nn.ReLU()),
            ("out", nn.Linear(hidden, 10)),
        ]))
    raise NeuronscopeError(f"unknown digits architecture {arch!r}; use one of {', '.join(ARCHS)}")


@functools.lru_cache(maxsize=64)
def _trained_state(arch: str, seed: int, hidden: int, epochs: int, trained: bool) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_digits(arch, hidden)
            if trained:
                x, y = digits_data("train", arch)
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                opt = torch.optim.Adam(model.parameters(), lr=3e-3)
                gen = torch.Generator().manual_seed(seed)
                loss_fn = nn.CrossEntropyLoss()
                model.train()
                for _ in range(epochs):
                    for idx in torch.randperm(len(xt), generator=gen).split(64):
                        opt.zero_grad()
                        loss_fn(model(xt[idx]), yt[idx]).backward()
                        opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_digits(
    arch: str = "mlp", seed: int = 0, hidden: int = 64, epochs: int | None = None, trained: bool = True
) -> nn.Sequential:
    """A digits network trained from random seed ``seed`` (Adam, lr 3e-3, batch 64).

    ``epochs`` defaults to 30 (MLP) / 10 (CNN); ``trained=False`` returns the untrained
    network of the same seed (the untrained-architecture baseline of universality tests).
    Returns a fresh module in eval mode; identical weights for identical arguments.
    """
    if seed < 0:
        raise NeuronscopeError("seed must be a non-negative integer")
    epochs = (30 if arch == "mlp" else 10) if epochs is None else epochs
    model = build_digits(arch, hidden)
    model.load_state_dict(_trained_state(arch, int(seed), int(hidden), int(epochs), bool(trained)))
    model.eval()
    model.neuronscope_id = f"digits-{arch}:{seed}" + ("" if trained else ":untrained")
    return model


def digits_accuracy(model: nn.Module, arch: str = "mlp") -> float:
    """Held-out (test split) classification accuracy."""
    x, y = digits_data("test", arch)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def permuted_copy(model: nn.Sequential, perms: dict[str, np.ndarray]) -> nn.Sequential:
    """A functionally identical copy of a digits MLP whose hidden units are permuted.

    ``perms`` maps a hidden site (``act1``, ``act2``) to a permutation ``p``: unit ``j`` of
    the copy is unit ``p[j]`` of the original (rows of the layer's weights are permuted and
    the next layer's input columns likewise), so the outputs are unchanged.
    """
    import copy

    layers = {"act1": ("fc1", "fc2"), "act2": ("fc2", "out")}
    out = copy.deepcopy(model)
    with torch.no_grad():
        for site, p in perms.items():
            if site not in layers:
                raise NeuronscopeError(f"permuted_copy permutes MLP sites act1/act2, not {site!r}")
            p = torch.as_tensor(np.ascontiguousarray(p), dtype=torch.long)
            a, b = (getattr(out, n) for n in layers[site])
            a.weight.copy_(a.weight[p])
            a.bias.copy_(a.bias[p])
            b.weight.copy_(b.weight[:, p])
    return out


def parse_digits_name(name: str) -> tuple[str, int, bool]:
    """``(arch, seed, trained)`` of a name ``digits-mlp:SEED``, ``digits-cnn:SEED`` or
    ``…:SEED:untrained``; a bad name raises a one-line error naming that name."""
    parts = name.split(":")
    if len(parts) not in (2, 3) or not parts[0].startswith("digits-") or not parts[1].isdigit():
        raise NeuronscopeError(
            f"bad digits model name {name!r}; use digits-mlp:SEED or digits-cnn:SEED[:untrained]"
        )
    arch = parts[0].removeprefix("digits-")
    if arch not in ARCHS:
        raise NeuronscopeError(f"unknown digits architecture {arch!r}; use one of {', '.join(ARCHS)}")
    if len(parts) == 3 and parts[2] != "untrained":
        raise NeuronscopeError(f"bad digits model name {name!r}; the optional suffix is ':untrained'")
    return arch, int(parts[1]), len(parts) == 2


def digits_model(name: str) -> nn.Sequential:
    """A model from a name ``digits-mlp:SEED``, ``digits-cnn:SEED`` or ``…:SEED:untrained``."""
    arch, seed, trained = parse_digits_name(name)
    return train_digits(arch, seed, trained=trained)
