"""Spiking networks as sources: a stateful snnTorch network unrolled over time steps.

:class:`SpikingNetwork` wraps an snnTorch network (``snn.Leaky`` or any
``snntorch.SpikingNeuron`` layers) so that it is recorded like any other model. How:

* Forward hooks on the exposed spiking-neuron modules, registered for the duration of each
  pass (so copies of a wrapper never see each other's calls), collect call by call each
  layer's spikes and membrane potential. snnTorch neurons return ``(spk, mem)`` (or ``(spk, syn,
  mem)``…: the first element is the spike tensor, the last the membrane potential); in
  ``init_hidden=True`` mode they return ``spk`` alone and keep ``mem`` as the module's
  attribute, which the hook reads after the call. Both are handled.
* The network is unrolled in one of two ways. With ``steps`` set, the wrapper calls the
  one-step network ``steps`` times on the encoded input (hidden states reset to zero before
  every sequence, whether the neurons hold them in ``init_hidden`` mode or the network
  passes them explicitly). With ``steps=None`` the network unrolls itself inside its own
  ``forward`` (the snnTorch tutorial style, a ``for step in range(num_steps)`` loop with
  explicit ``mem`` states); each call of a neuron is then one step.
* After the pass, each neuron layer at module path ``P`` of the network is exposed as two
  identity *tap* modules of the wrapper: site ``P`` (its spikes) and site ``P.mem`` (its
  membrane potential), so ``record``, ``summarize_model``, ``record_lockstep`` and every
  analysis see ordinary sites. The network itself is the child ``network`` (its own modules,
  e.g. ``network.fc1``, can be intervened on; interventions on a tap change the recorded
  values only, not the dynamics).

What a sample is (``mode``):

* ``"counts"`` — one sample per item: each unit's spike count over the steps (the membrane
  site: its mean potential over the steps);
* ``"rates"`` — one sample per item: spike count / steps (spikes per step);
* ``"steps"`` — one sample per (item, step), item-major: the spikes (0/1) and membrane
  potential at each step. Feed the network through :class:`StepSource` (or
  :meth:`SpikingNetwork.source`) so the samples carry ``item`` and ``step`` coordinates.

Conv spiking layers (``[batch, C, H, W]`` per step) give ``[samples, C, H, W]`` taps, which
recording turns into channels as for any conv site (``conv="positions"`` or ``"mean"``).

Input encoding (``encoding``): ``"constant"`` (the input current is the same at every
step), ``"rate"`` (Bernoulli rate coding: pixel intensity p = clip(x·``rate_scale`` +
``rate_shift``, 0, 1) is the spike probability per step; see :func:`rate_code`) or
``"given"`` (the input already has a time axis: ``[batch, steps, …]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch

__all__ = ["ENCODINGS", "MODES", "SpikingNetwork", "StepSource", "rate_code", "spiking_layers"]

MODES = ("counts", "rates", "steps")
ENCODINGS = ("constant", "rate", "given")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele, Lea & Flood 2014), elementwise on uint64."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def rate_code(p: np.ndarray | torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
    """Bernoulli rate coding: ``[batch, steps, *features]`` float32 spikes with
    P(spike at step t) = p for every feature, independently across steps and features.

    The uniform draws are a counter-based hash (splitmix64) of the seed, the step, the
    feature index and the item's own values: the spikes of an item depend only on its
    input, the step and ``seed`` — not on the batch it arrives in or on the order of items —
    so recordings are reproducible whatever the batching (as ``keep_mask`` is). Two
    identical inputs receive identical spike trains. ``p`` is clipped to [0, 1].
    """
    pt = torch.as_tensor(p)
    pn = pt.detach().cpu().numpy().astype(np.float32)
    if steps < 1:
        raise NeuronscopeError("steps must be a positive integer")
    b = pn.shape[0]
    flat = np.clip(np.nan_to_num(pn.reshape(b, -1)), 0.0, 1.0)
    f = flat.shape[1]
    j = np.arange(f, dtype=np.uint64)
    bits = np.ascontiguousarray(flat).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        row = np.bitwise_xor.reduce(_splitmix(bits ^ (j * _GOLDEN)[None, :]), axis=1)  # (b,)
        key = _splitmix(row ^ _splitmix(np.uint64(seed) + np.uint64(0x632BE59BD9B4E019)))
        cell = _splitmix(np.arange(steps, dtype=np.uint64)[:, None] * np.uint64(f) + j[None, :])  # (steps, f)
        u = _splitmix(key[:, None, None] ^ cell[None])
    uniform = (u >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    spikes = (uniform < flat[:, None, :]).astype(np.float32)
    return torch.from_numpy(spikes.reshape(b, steps, *pn.shape[1:])).to(pt.device)


def spiking_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The snnTorch spiking-neuron modules of ``net`` (``snntorch.SpikingNeuron``
    subclasses: ``Leaky``, ``Synaptic``, ``RLeaky``, …) by module path, in module order."""
    import snntorch

    return {n: m for n, m in net.named_modules() if n and isinstance(m, snntorch.SpikingNeuron)}


class _Tap(nn.Module):
    """Identity module whose output is a recorded site (a spiking layer's spikes, or with
    the child ``mem`` tap, its membrane potential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _spk_mem(module: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, torch.Tensor):
        mem = getattr(module, "mem", None)
        return output, (mem if isinstance(mem, torch.Tensor) and mem.shape == output.shape else None)
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        last = output[-1]
        return output[0], (last if len(output) > 1 and isinstance(last, torch.Tensor) else None)
    raise NeuronscopeError(f"spiking layer {type(module).__name__} returned {type(output).__name__}; "
                           "expected spk or an (spk, …, mem) tuple")


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


class SpikingNetwork(nn.Module):
    """An snnTorch network unrolled over time steps, recordable like any model (see the
    module docstring for how spikes and membrane potentials become sites).

    * ``network``: the snnTorch network. With ``steps`` set it computes one time step
      (``network(x_t)``); with ``steps=None`` it unrolls itself in its ``forward``.
    * ``steps``: time steps per item (required for ``encoding="rate"``/``"constant"``).
    * ``mode``: ``"counts"``, ``"rates"`` or ``"steps"`` (what a sample is).
    * ``encoding``: ``"constant"``, ``"rate"`` (:func:`rate_code` of
      clip(x·``rate_scale`` + ``rate_shift``, 0, 1), ``seed``) or ``"given"`` (``[batch,
      steps, …]`` inputs).
    * ``layers``: module paths of the spiking layers to expose (default: all of them).

    ``forward(x)`` returns the network's output: with ``steps`` set, the mean over steps of
    the first tensor each step returns (e.g. a linear read-out's logits, or the output
    layer's spike rate); with ``steps=None``, whatever the network returns. After a forward
    pass, ``last_spikes[P]`` and ``last_mem[P]`` hold ``[batch, steps, …]`` tensors.
    """

    def __init__(
        self,
        network: nn.Module,
        steps: int | None = None,
        mode: str = "counts",
        encoding: str = "constant",
        rate_scale: float | np.ndarray | torch.Tensor = 1.0,
        rate_shift: float | np.ndarray | torch.Tensor = 0.0,
        seed: int = 0,
        layers: list[str] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise NeuronscopeError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if encoding not in ENCODINGS:
            raise NeuronscopeError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        if steps is not None and int(steps) < 1:
            raise NeuronscopeError("steps must be a positive integer (or None when the network unrolls itself)")
        if steps is None and encoding == "rate":
            raise NeuronscopeError("rate encoding needs steps=; give the number of time steps")
        self.network = network
        self.steps = None if steps is None else int(steps)
        self.mode = mode
        self.encoding = encoding
        self.seed = int(seed)
        self.register_buffer("rate_scale", torch.as_tensor(np.asarray(rate_scale, dtype=np.float32)))
        self.register_buffer("rate_shift", torch.as_tensor(np.asarray(rate_shift, dtype=np.float32)))
        found = spiking_layers(network)
        if not found:
            raise NeuronscopeError("the network has no snnTorch spiking-neuron layer (snn.Leaky, …) to record")
        if layers is None:
            layers = list(found)
        missing = [p for p in layers if p not in found]
        if missing:
            raise NeuronscopeError(f"no spiking layer {missing[0]!r} in the network; its spiking layers: "
                                   f"{', '.join(found)}")
        self.layer_paths = list(layers)
        for p in self.layer_paths:
            self._add_tap(p)
        self._calls: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.last_spikes: dict[str, torch.Tensor] = {}
        self.last_mem: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ structure

    def _add_tap(self, path: str) -> None:
        parent: nn.Module = self
        parts = path.split(".")
        for i, part in enumerate(parts):
            if i == 0 and part == "network":
                raise NeuronscopeError("a spiking layer is named 'network' at the top level; rename it "
                                       "(the wrapper holds the network under that name)")
            child = parent._modules.get(part)
            if child is None:
                child = _Tap() if i == len(parts) - 1 else nn.Module()
                parent.add_module(part, child)
            elif i == len(parts) - 1 and not isinstance(child, _Tap):
                raise NeuronscopeError(f"spiking layer paths {path!r} and a longer one clash; expose one of them")
            parent = child
        parent.add_module("mem", _Tap())

    def _tap(self, path: str) -> nn.Module:
        return self.get_submodule(path)

    def sites(self, mem: bool = False) -> str:
        """The glob of the spike sites (``mem=True``: spike and membrane sites)."""
        names = [*self.layer_paths, *([f"{p}.mem" for p in self.layer_paths] if mem else [])]
        return ",".join(names)

    def with_mode(self, mode: str) -> SpikingNetwork:
        """A wrapper of the same network (shared weights) with another ``mode``."""
        other = SpikingNetwork(self.network, self.steps, mode, self.encoding, self.rate_scale.clone(),
                               self.rate_shift.clone(), self.seed, list(self.layer_paths))
        if hasattr(self, "neuronscope_id"):
            other.neuronscope_id = self.neuronscope_id
        other.train(self.training)
        return other

    def source(self, data: Any, batch_size: int = 64, labels: dict[str, Any] | None = None,
               name: str = "<tensor>") -> Any:
        """A source for this network: a :class:`~neuronscope.sources.tensors.TensorSource` of
        ``data`` (items first), wrapped in :class:`StepSource` in ``steps`` mode."""
        from neuronscope.sources.tensors import TensorSource

        src = TensorSource(data, batch_size=batch_size, labels=labels, name=name)
        if self.mode != "steps":
            return src
        if self.steps is None:
            raise NeuronscopeError("steps mode with a self-unrolling network needs steps= on the wrapper")
        return StepSource(src, self.steps)

    # ------------------------------------------------------------------ running

    def _hook(self, path: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            spk, mem = _spk_mem(module, output)
            self._calls.setdefault(path, []).append(
                (spk.detach(), None if mem is None else mem.detach()))

        return hook

    def reset_states(self) -> None:
        """Zero the hidden state of every spiking neuron of the network (``reset_mem``)."""
        for m in spiking_layers(self.network).values():
            if hasattr(m, "reset_mem"):
                m.reset_mem()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The input of every step, ``[batch, steps, …]`` (see ``encoding``)."""
        x = torch.as_tensor(x)
        if self.encoding == "given":
            if x.ndim < 2 or (self.steps is not None and x.shape[1] != self.steps):
                raise NeuronscopeError(f"encoding='given' needs [batch, {self.steps}, …] inputs, got {tuple(x.shape)}")
            return x
        if self.encoding == "constant":
            return x.unsqueeze(1).expand(x.shape[0], self.steps, *x.shape[1:])
        p = x.float() * self.rate_scale + self.rate_shift
        return rate_code(p, self.steps, self.seed).to(x.device)

    def forward(self, x: torch.Tensor) -> Any:
        self._calls = {}
        self.reset_states()
        # hooks live for this pass only: copies of the wrapper and several wrappers of one
        # network never see each other's calls
        layers = {p: self.network.get_submodule(p) for p in self.layer_paths}
        handles = [m.register_forward_hook(self._hook(p)) for p, m in layers.items()]
        try:
            if self.steps is None:
                out = self.network(x)
            else:
                xs = self.encode(x)
                outs = [_first_tensor(self.network(xs[:, t])) for t in range(xs.shape[1])]
                out = torch.stack(outs, 0).mean(0) if all(o is not None for o in outs) else None
        finally:
            for h in handles:
                h.remove()
        self._emit()
        return out

    def _emit(self) -> None:
        self.last_spikes, self.last_mem = {}, {}
        for p in self.layer_paths:
            calls = self._calls.get(p)
            if not calls:
                continue  # the layer did not run: its tap is not called (recording names it)
            if self.steps is not None and len(calls) != self.steps:
                raise NeuronscopeError(f"spiking layer {p!r} ran {len(calls)} times for {self.steps} steps; "
                                       "call each spiking layer once per step")
            spk = torch.stack([c[0] for c in calls], 1)  # [batch, steps, ...]
            mems = [c[1] for c in calls]
            mem = torch.stack(mems, 1) if all(m is not None for m in mems) else None
            self.last_spikes[p] = spk
            if mem is not None:
                self.last_mem[p] = mem
            tap = self._tap(p)
            tap(self._pool(spk, spikes=True))
            if mem is not None:
                tap.mem(self._pool(mem, spikes=False))
        self._calls = {}

    def _pool(self, t: torch.Tensor, spikes: bool) -> torch.Tensor:
        if self.mode == "steps":
            return t.flatten(0, 1)
        if not spikes:
            return t.mean(1)
        return t.sum(1) if self.mode == "counts" else t.mean(1)

    def describe(self) -> dict[str, Any]:
        """The unrolling configuration (part of a run's model description)."""
        return {"steps": self.steps, "mode": self.mode, "encoding": self.encoding, "seed": self.seed,
                "layers": list(self.layer_paths)}


class StepSource:
    """A source whose samples are (item, step) pairs: wraps any source (e.g. a
    :class:`~neuronscope.sources.tensors.TensorSource`) and expands every batch's sample
    coordinates ``steps`` times, item-major, adding ``step`` (0 … steps-1) — the layout of a
    :class:`SpikingNetwork` in ``steps`` mode. Inputs and item counts are unchanged."""

    kind = "steps"

    def __init__(self, source: Any, steps: int) -> None:
        if int(steps) < 1:
            raise NeuronscopeError("steps must be a positive integer")
        self.inner = source
        self.steps = int(steps)
        self.label_categories = dict(getattr(source, "label_categories", {}))

    def __len__(self) -> int:
        return len(self.inner)

    def describe(self) -> dict[str, Any]:
        d = dict(self.inner.describe())
        d["steps"] = self.steps
        d["kind"] = f"{d.get('kind', 'source')}+steps"
        return d

    def vocab(self) -> Any:
        return self.inner.vocab()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for b in self.inner.batches(start=start):
            n = len(next(iter(b.samples.values())))
            samples = {k: np.repeat(np.asarray(v), self.steps) for k, v in b.samples.items()}
            samples["step"] = np.tile(np.arange(self.steps, dtype=np.int64), n)
            yield Batch(inputs=b.inputs, mask=b.mask, samples=samples, items=b.items, meta=dict(b.meta))

