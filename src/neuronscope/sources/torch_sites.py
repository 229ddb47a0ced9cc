"""Sites: named modules of a torch model whose outputs are populations of neurons.

A *site* is a module path (``encoder.layer.3.intermediate``) resolved from a glob;
its *units* are the last axis of the module output (``[batch, seq, units]`` or
``[batch, units]``) or the channel axis of a conv output (``[batch, C, H, W]``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.population import select_sites


@dataclass
class Site:
    """One recorded module: its dotted ``name``, the ``module`` and its ``units`` (or None
    until the first forward pass tells)."""

    name: str
    module: nn.Module = field(repr=False)
    units: int | None = None


def _infer_units(module: nn.Module) -> int | None:
    """Width of a module's output from its parameters, without a forward pass."""
    for attr in ("out_features", "out_channels", "num_features", "embedding_dim"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    last = None
    for child in module.children():
        units = _infer_units(child)
        if units is not None:
            last = units
    return last


def sites(model: nn.Module, pattern: str | list[str]) -> list[Site]:
    """Resolve module-name globs to the model's sites, in module order.

    ``pattern`` is an ``fnmatch`` glob over ``model.named_modules()`` names (``*`` matches
    within and across dots), or a comma-separated list / list of globs, resolved by
    :func:`~neuronscope.population.select_sites`. A glob that matches no module raises an
    error that names the closest module names.
    """
    globs = pattern if isinstance(pattern, list) else pattern.split(",")
    if not any(p.strip() for p in globs):
        raise NeuronscopeError("no site pattern given; pass a module glob such as 'encoder.layer.*.intermediate'")
    modules = {name: mod for name, mod in model.named_modules() if name}
    chosen = select_sites(modules, globs, where="among the model's modules")
    return [Site(n, modules[n], _infer_units(modules[n])) for n in chosen]


def _first_tensor(output: Any) -> torch.Tensor:
    """The activation tensor of a module output (first tensor of a tuple/list/ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise NeuronscopeError(f"module output of type {type(output).__name__} holds no tensor to record")


def to_samples(t: torch.Tensor, mask: torch.Tensor | None, conv: str = "positions") -> torch.Tensor:
    """Flatten one module output to ``(samples, units)`` float32.

    * ``[batch, units]`` → one sample per item;
    * ``[batch, seq, units]`` → one sample per position where ``mask`` (``[batch, seq]``) is
      true (padding dropped), in (item, position) order;
    * ``[batch, C, H, W]`` (or any rank ≥ 4 with channels on axis 1) → units are channels;
      ``conv='positions'`` gives one sample per (item, spatial position) in row-major order,
      ``conv='mean'`` one spatially mean-pooled sample per item.
    """
    t = t.detach()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim == 2:
        out = t
    elif t.ndim == 3:
        if mask is None:
            out = t.reshape(-1, t.shape[-1])
        elif t.is_contiguous():
            # the rows of the real tokens by index: 3x faster than boolean-mask indexing
            rows = mask.to(torch.bool).reshape(-1).nonzero().squeeze(1)
            out = t.reshape(-1, t.shape[-1]).index_select(0, rows)
        else:
            out = t[mask.to(torch.bool)]
    else:
        if conv == "mean":
            out = t.flatten(2).mean(dim=2)
        elif conv == "positions":
            out = t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
        else:
            raise NeuronscopeError(f"conv must be 'positions' or 'mean', not {conv!r}")
    return out.to(torch.float32)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class SiteCapture:
    """Forward hooks on a set of sites; after each forward, ``outputs[name]`` holds a *copy* of
    each site's output taken when the module returned (cleared by ``clear``).

    The copy is what makes a recording right on models that modify tensors in place after a
    site: ``nn.ReLU(inplace=True)`` after a conv or a batch norm (torchvision's ResNets),
    ``out += identity`` in a residual block. A stored reference would hold the post-ReLU or
    post-add values by the time the forward pass ends.

    With ``flatten=True`` (what recording uses) the copy is the output already flattened to
    float32 ``(samples, units)`` by :func:`to_samples` with the capture's current ``mask``
    (set it before each forward) and ``conv``: the gather that drops padding, or the
    transpose of conv channels, is itself the copy, so only outputs that flatten to a view
    (``[batch, units]``, unmasked sequences) are cloned — the copy then costs nothing beyond
    what flattening after the forward pass cost. Otherwise ``outputs`` holds clones of the
    raw output tensors.

    ``mask`` and ``outputs`` belong to the calling thread (hooks run on the thread that calls
    the model), so threads may run forward passes of one model side by side under one
    capture, each seeing only its own batch's outputs.
    """

    def __init__(self, model: nn.Module, site_list: list[Site], *, flatten: bool = False, conv: str = "positions"):
        self.model = model
        self.sites = site_list
        self.flatten = flatten
        self.conv = conv
        self._local = threading.local()
        self._handles: list[Any] = []

    @property
    def mask(self) -> torch.Tensor | None:
        return getattr(self._local, "mask", None)

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        self._local.mask = value

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        out = getattr(self._local, "outputs", None)
        if out is None:
            out = self._local.outputs = {}
        return out

    def __enter__(self) -> SiteCapture:
        for s in self.sites:
            self._handles.append(s.module.register_forward_hook(self._hook(s.name)))
        return self

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output).detach()
            if not self.flatten:
                self.outputs[name] = t.clone()
                return
            out = to_samples(t, self.mask, self.conv)
            self.outputs[name] = out.clone() if _shares_memory(out, t) else out

        return hook

    def clear(self) -> None:
        self._local.outputs = {}

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextmanager
def capture(model: nn.Module, site_list: list[Site]) -> Iterator[SiteCapture]:
    """Context manager form of :class:`SiteCapture`."""
    cap = SiteCapture(model, site_list)
    with cap:
        yield cap
