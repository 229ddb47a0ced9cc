"""Interventions on neurons: ablate, clamp, scale, add, patch — context managers on sites.

An intervention edits the output of one or more *sites* (module-name globs, as the
recorder resolves them with :func:`neuronscope.sources.torch_sites.sites`) for a set of
*units* at a set of *positions*, while the ``with`` block runs::

    with ablate(model, "encoder.layer.3.intermediate", [17, 402], how="mean", run=run):
        out = model(**inputs)

Units are the last axis of ``[batch, units]`` and ``[batch, seq, units]`` outputs and the
channel axis of conv outputs ``[batch, C, H, W]`` (the recorder's convention). Positions:

* ``"all"`` (default) — every position;
* ``"last"`` — the last real token of each sequence, from the ``attention_mask`` keyword the
  model is called with (the last position when the model is called without one);
* an ``int`` or a list of ints — token positions (negative counts from the end of the
  padded sequence);
* for conv sites, a list of ``(h, w)`` pairs — spatial positions;
* a bool tensor — ``[seq]`` / ``[batch, seq]`` for text, ``[H, W]`` / ``[batch, H, W]`` for conv.

Every intervention is a forward hook that *returns* a new output tensor (``torch.where``
of the edited values and the original; nothing is changed in place), so it works under
``torch.inference_mode``, ``torch.no_grad`` and autograd alike. Several interventions on
one module apply in the order they were entered (one dispatcher hook per module, run
before any other forward hook of that module, so a recorder's capture hooks see the
edited output). Leaving the ``with`` block — normally or by an exception — removes every
hook: the model computes bit-identical outputs afterwards.

After each forward pass of the model the intervention checks that every one of its sites
ran; a site the forward pass never called raises a one-line :class:`NeuronscopeError`.

``describe()`` returns a JSON description of the intervention (kind, sites, units,
positions, parameters; vectors as a norm and a content hash) for a run's configuration.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.torch_sites import Site, _first_tensor
from neuronscope.sources.torch_sites import sites as resolve_sites

__all__ = [
    "Captured",
    "Intervention",
    "UnitsSpec",
    "ablate",
    "ablate_sets",
    "add",
    "capture",
    "clamp",
    "compose",
    "patch",
    "scale",
]

#: Units of a site: a sequence of indices, or None for every unit.
UnitsSpec = Sequence[int] | np.ndarray | torch.Tensor | None
#: Sites and their units: a glob (with ``units`` given separately) or ``{glob: units}``.
SitesSpec = str | Sequence[str] | Mapping[str, UnitsSpec]
#: Where along the sequence / spatial axes an edit applies.
Positions = str | int | Sequence[int] | Sequence[tuple[int, int]] | torch.Tensor


# --------------------------------------------------------------------------- helpers


def _unit_axis(t: torch.Tensor) -> int:
    """Axis of the units: last for ``[b, u]`` and ``[b, s, u]``, 1 (channels) for rank ≥ 4."""
    if t.ndim < 2:
        raise NeuronscopeError(f"site output of shape {tuple(t.shape)} has no unit axis; choose a module whose output is [batch, units], [batch, seq, units] or [batch, C, H, W]")
    return 1 if t.ndim >= 4 else t.ndim - 1


def _unit_shape(t: torch.Tensor) -> list[int]:
    """Shape that broadcasts a per-unit vector over ``t``."""
    shape = [1] * t.ndim
    shape[_unit_axis(t)] = -1
    return shape


def _as_index(units: UnitsSpec) -> torch.Tensor | None:
    if units is None:
        return None
    idx = torch.as_tensor(np.asarray(units, dtype=np.int64).reshape(-1))
    if idx.numel() == 0:
        raise NeuronscopeError("an empty unit list was given; list at least one unit index (or None for all units)")
    return idx


def _check_units(site: str, idx: torch.Tensor | None, width: int | None) -> None:
    if idx is None or width is None:
        return
    bad = idx[(idx < 0) | (idx >= width)]
    if bad.numel():
        raise NeuronscopeError(
            f"unit {int(bad[0])} is out of range for site {site!r} with {width} units; use indices 0..{width - 1}"
        )


def _digest(t: Any) -> str:
    a = np.ascontiguousarray(torch.as_tensor(t).detach().cpu().to(torch.float64).numpy())
    return hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=8).hexdigest()


def _vector_info(v: Any) -> dict[str, Any]:
    t = torch.as_tensor(v).detach().to(torch.float64)
    if t.numel() == 1:
        return {"value": float(t.reshape(-1)[0])}
    return {"shape": list(t.shape), "norm": float(t.norm()), "sha": _digest(t)}


def _describe_units(idx: torch.Tensor | None) -> list[int] | str:
    return "all" if idx is None else [int(i) for i in idx.tolist()]


def _describe_positions(p: Positions) -> Any:
    if isinstance(p, torch.Tensor):
        return {"mask": list(p.shape), "sha": _digest(p.to(torch.float64))}
    if isinstance(p, str | int):
        return p
    return [list(x) if isinstance(x, tuple | list) else int(x) for x in p]


def _replace_first_tensor(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its activation tensor (see ``_first_tensor``) replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple | list):
        items = list(output)
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                items[i] = new
                break
        return type(output)(items) if isinstance(output, list) else tuple(items)
    if isinstance(output, dict):
        for k, v in output.items():
            if isinstance(v, torch.Tensor):
                output[k] = new
                break
        return output
    raise NeuronscopeError(f"module output of type {type(output).__name__} holds no tensor to edit")


def last_positions(mask: torch.Tensor | None, seq_len: int, batch: int, device: torch.device) -> torch.Tensor:
    """Index of the last real token of each row: the last ``True`` of ``mask`` (``[b, s]``),
    or ``seq_len - 1`` for every row when there is no mask."""
    if mask is None:
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    m = mask.to(torch.bool)
    if m.shape[1] != seq_len:
        raise NeuronscopeError(f"attention mask has {m.shape[1]} positions but the site output has {seq_len}; positions='last' needs the site's sequence axis to be the input's")
    ar = torch.arange(seq_len, device=m.device).expand_as(m)
    return torch.where(m, ar, torch.full_like(ar, -1)).max(dim=1).values.clamp(min=0).to(device)


def _position_mask(spec: Positions, out: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor | None:
    """A bool tensor broadcastable to ``out`` (size 1 on the unit axis) that is True where
    the edit applies, or None for every position."""
    if isinstance(spec, str):
        if spec == "all":
            return None
        if spec != "last":
            raise NeuronscopeError(f"positions must be 'all', 'last', indices or a bool mask, not {spec!r}")
        if out.ndim != 3:
            raise NeuronscopeError(f"positions='last' needs a [batch, seq, units] site output, not shape {tuple(out.shape)}")
        b, s = out.shape[:2]
        if attn is not None and (attn.ndim != 2 or attn.shape[0] != b):
            raise NeuronscopeError(f"attention mask of shape {tuple(attn.shape)} does not match the site output {tuple(out.shape)}; positions='last' needs one mask row per sequence")
        last = last_positions(attn, s, b, out.device)
        sel = torch.zeros((b, s), dtype=torch.bool, device=out.device)
        sel[torch.arange(b, device=out.device), last] = True
        return sel[:, :, None]
    if out.ndim == 2:
        raise NeuronscopeError(f"site output of shape {tuple(out.shape)} has no positions; use positions='all'")
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        m = spec.to(out.device)
        if out.ndim == 3:
            if m.ndim == 1:
                m = m[None, :]
            if m.ndim != 2 or m.shape[-1] != out.shape[1] or m.shape[0] not in (1, out.shape[0]):
                raise NeuronscopeError(f"position mask of shape {tuple(spec.shape)} does not fit the site output {tuple(out.shape)}; give [seq] or [batch, seq]")
            return m[:, :, None]
        spatial = tuple(out.shape[2:])
        if tuple(m.shape[-len(spatial):]) != spatial or m.ndim not in (len(spatial), len(spatial) + 1):
            raise NeuronscopeError(f"position mask of shape {tuple(spec.shape)} does not fit the conv output {tuple(out.shape)}; give [H, W] or [batch, H, W]")
        if m.ndim == len(spatial):
            m = m[None]
        return m[:, None]
    items = [spec] if isinstance(spec, int) else list(spec)
    if out.ndim == 3:
        s = out.shape[1]
        sel = torch.zeros(s, dtype=torch.bool, device=out.device)
        for p in items:
            if not isinstance(p, int | np.integer) or not -s <= int(p) < s:
                raise NeuronscopeError(f"position {p!r} is out of range for a sequence of {s} positions")
            sel[int(p)] = True
        return sel[None, :, None]
    spatial = tuple(out.shape[2:])
    sel = torch.zeros(spatial, dtype=torch.bool, device=out.device)
    for p in items:
        if not isinstance(p, tuple | list) or len(p) != len(spatial) or not all(-n <= int(i) < n for i, n in zip(p, spatial, strict=True)):
            raise NeuronscopeError(f"conv position {p!r} is not a valid {len(spatial)}-d index into spatial shape {spatial}")
        sel[tuple(int(i) for i in p)] = True
    return sel[None, None]


# --------------------------------------------------------------------------- dispatch


class _Dispatch:
    """The one forward hook an edited module carries: applies the active edits in order."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.edits: list[tuple[Intervention, str]] = []
        self.handle = module.register_forward_hook(self._hook, prepend=True)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        t = _first_tensor(output)
        new = t
        for iv, name in list(self.edits):
            new = iv._apply(name, new)
        return None if new is t else _replace_first_tensor(output, new)


_DISPATCH: weakref.WeakKeyDictionary[nn.Module, _Dispatch] = weakref.WeakKeyDictionary()


def _attach(module: nn.Module, iv: Intervention, name: str) -> None:
    d = _DISPATCH.get(module)
    if d is None:
        d = _DISPATCH[module] = _Dispatch(module)
    d.edits.append((iv, name))


def _detach(module: nn.Module, iv: Intervention) -> None:
    d = _DISPATCH.get(module)
    if d is None:
        return
    d.edits = [(i, n) for i, n in d.edits if i is not iv]
    if not d.edits:
        d.handle.remove()
        del _DISPATCH[module]


# --------------------------------------------------------------------------- base


@dataclass
class _Target:
    site: Site
    units: torch.Tensor | None


class Intervention:
    """Base of every intervention: resolves sites and units, installs and removes hooks,
    checks that each site ran, describes itself. Subclasses implement :meth:`_values`."""

    kind = "intervention"

    def __init__(self, model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, positions: Positions = "all"):
        if not isinstance(model, nn.Module):
            raise NeuronscopeError(f"interventions act on a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.positions = positions
        self.targets: dict[str, _Target] = {}
        if isinstance(sites, Mapping):
            if units is not None:
                raise NeuronscopeError("give units either in the {site: units} mapping or as units=, not both")
            pairs = list(sites.items())
        else:
            pairs = [(sites, units)]
        for glob, u in pairs:
            idx = _as_index(u)
            for s in resolve_sites(model, glob if isinstance(glob, str) else list(glob)):
                _check_units(s.name, idx, s.units)
                if s.name in self.targets:
                    raise NeuronscopeError(f"site {s.name!r} is matched by more than one pattern; give each site once")
                self.targets[s.name] = _Target(s, idx)
        self._fired: set[str] = set()
        self._attn: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._active = False

    # -- subclass API -------------------------------------------------------------

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """The edited values (broadcastable to ``out``) where the edit applies."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    # -- machinery ----------------------------------------------------------------

    def _unit_mask(self, name: str, out: torch.Tensor) -> torch.Tensor | None:
        tgt = self.targets[name]
        width = out.shape[_unit_axis(out)]
        _check_units(name, tgt.units, width)
        if tgt.units is None:
            return None
        m = torch.zeros(width, dtype=torch.bool, device=out.device)
        m[tgt.units.to(out.device)] = True
        return m.reshape(_unit_shape(out))

    def _select(self, name: str, out: torch.Tensor) -> torch.Tensor | None:
        um = self._unit_mask(name, out)
        pm = _position_mask(self.positions, out, self._attn)
        if um is None:
            return pm
        return um if pm is None else um & pm

    def _apply(self, name: str, out: torch.Tensor) -> torch.Tensor:
        self._fired.add(name)
        values = self._values(name, out)
        values = torch.as_tensor(values, dtype=out.dtype, device=out.device)
        sel = self._select(name, out)
        if sel is None:  # a fresh tensor (not a broadcast view) so later in-place ops stay legal
            return values.expand_as(out).clone() if values.shape != out.shape else values
        return torch.where(sel, values, out)

    def _vector(self, name: str, v: Any, what: str, out: torch.Tensor) -> torch.Tensor:
        """A per-unit vector (scalar, full site width, or one value per listed unit) shaped
        to broadcast over ``out``."""
        t = torch.as_tensor(v, dtype=out.dtype, device=out.device)
        if t.numel() == 1:
            return t.reshape(())
        width = out.shape[_unit_axis(out)]
        t = t.reshape(-1)
        units = self.targets[name].units
        if t.numel() != width:
            if units is None or t.numel() != units.numel():
                n_units = "" if units is None else f" or {units.numel()} (one per listed unit)"
                raise NeuronscopeError(f"{what} for site {name!r} has {t.numel()} values; give {width} (one per unit){n_units}")
            full = torch.zeros(width, dtype=out.dtype, device=out.device)
            full[units.to(out.device)] = t
            t = full
        return t.reshape(_unit_shape(out))

    def _pre(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self._fired = set()
        self._attn = kwargs.get("attention_mask") if isinstance(kwargs, dict) else None

    def _post(self, _module: nn.Module, _args: Any, _kwargs: Any, _output: Any) -> None:
        missing = [n for n in self.targets if n not in self._fired]
        if missing:
            raise NeuronscopeError(
                f"{self.kind} on site {missing[0]!r} never ran: the forward pass did not call this module; "
                "choose modules the model calls"
            )

    def __enter__(self) -> Intervention:
        if self._active:
            raise NeuronscopeError(f"this {self.kind} intervention is already active; create a new one to nest")
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._post, with_kwargs=True))
            for name, tgt in self.targets.items():
                _attach(tgt.site.module, self, name)
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for tgt in self.targets.values():
            _detach(tgt.site.module, self)
        self._active = False
        self._attn = None

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def describe(self) -> dict[str, Any]:
        """JSON description: ``kind``, ``sites`` (site → units or ``"all"``), ``positions``
        and the kind's parameters."""
        return {
            "kind": self.kind,
            "sites": {n: _describe_units(t.units) for n, t in self.targets.items()},
            "positions": _describe_positions(self.positions),
            **self._params(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


# --------------------------------------------------------------------------- kinds


def _means_from_run(run: Any, site: str) -> np.ndarray:
    from neuronscope.store import Run, open_run

    r = run if isinstance(run, Run) else open_run(Path(run))
    if site not in r.sites:
        raise NeuronscopeError(f"run {r.path} has no site {site!r}; record that site to take its means")
    ss = r.summaries(site)
    if ss is None:
        raise NeuronscopeError(f"run {r.path} holds no summaries for {site!r}; record it with keep=both or keep=summaries")
    return np.asarray(ss.result()["moments.mean"], dtype=np.float64)


class Ablate(Intervention):
    """Ablate units: replace them by zero, by their mean over a corpus, or by the
    activations of other samples drawn at random from a reference pool ("resample")."""

    kind = "ablate"

    def __init__(self, model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, how: str = "zero",
                 means: Any = None, run: Any = None, pool: Any = None, seed: int = 0, positions: Positions = "all"):
        super().__init__(model, sites, units, positions)
        if how not in ("zero", "mean", "resample"):
            raise NeuronscopeError(f"how must be 'zero', 'mean' or 'resample', not {how!r}")
        self.how = how
        self.seed = int(seed)
        self.run_path = None
        self.means: dict[str, np.ndarray] = {}
        self.pool: dict[str, torch.Tensor] = {}
        if how == "mean":
            if (means is None) == (run is None):
                raise NeuronscopeError("how='mean' needs means= (per-unit means) or run= (a recorded run with summaries), exactly one")
            for name in self.targets:
                if run is not None:
                    self.means[name] = _means_from_run(run, name)
                elif isinstance(means, Mapping):
                    if name not in means:
                        raise NeuronscopeError(f"means has no entry for site {name!r}; give one per site")
                    self.means[name] = np.asarray(means[name], dtype=np.float64)
                else:
                    self.means[name] = np.asarray(means, dtype=np.float64)
            if run is not None:
                self.run_path = str(getattr(run, "path", run))
        elif how == "resample":
            if pool is None:
                raise NeuronscopeError("how='resample' needs pool= (reference activations: a tensor [samples, units], {site: tensor} or capture(...)'s result)")
            for name in self.targets:
                if isinstance(pool, Captured):
                    p = pool.samples(name)
                elif isinstance(pool, Mapping):
                    if name not in pool:
                        raise NeuronscopeError(f"pool has no activations for site {name!r}; give one per site")
                    p = torch.as_tensor(pool[name])
                else:
                    p = torch.as_tensor(pool)
                if p.ndim != 2 or p.shape[0] == 0:
                    raise NeuronscopeError(f"resample pool for {name!r} must be [samples, units] with at least one sample, not {tuple(p.shape)}")
                self.pool[name] = p.detach()
            self._gen = torch.Generator().manual_seed(self.seed)
        elif means is not None or run is not None or pool is not None:
            raise NeuronscopeError("means=/run=/pool= apply to how='mean' / how='resample' only")

    def __enter__(self) -> Intervention:
        if self.how == "resample":
            self._gen = torch.Generator().manual_seed(self.seed)
        return super().__enter__()

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        if self.how == "zero":
            return torch.zeros((), dtype=out.dtype, device=out.device)
        if self.how == "mean":
            return self._vector(name, self.means[name], "means", out)
        pool = self.pool[name]
        ax = _unit_axis(out)
        width = out.shape[ax]
        if pool.shape[1] != width:
            raise NeuronscopeError(f"resample pool for {name!r} has {pool.shape[1]} units; the site has {width}")
        lead = [n for i, n in enumerate(out.shape) if i != ax]
        idx = torch.randint(pool.shape[0], lead, generator=self._gen)
        vals = pool[idx].to(dtype=out.dtype, device=out.device)  # [..., units]
        if ax != out.ndim - 1:
            vals = vals.movedim(-1, ax)
        return vals

    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"how": self.how}
        if self.how == "mean":
            p["means_from"] = self.run_path or "given"
            p["means"] = {n: {"sha": _digest(m)} for n, m in self.means.items()}
        if self.how == "resample":
            p["seed"] = self.seed
            p["pool"] = {n: {"samples": int(t.shape[0]), "sha": _digest(t)} for n, t in self.pool.items()}
        return p


class Clamp(Intervention):
    """Set units to a fixed value (a scalar, or one value per unit)."""

    kind = "clamp"

    def __init__(self, model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, value: Any, positions: Positions = "all"):
        super().__init__(model, sites, units, positions)
        self.value = torch.as_tensor(value).detach()

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        return self._vector(name, self.value, "value", out)

    def _params(self) -> dict[str, Any]:
        return {"value": _vector_info(self.value)}


class Scale(Intervention):
    """Multiply units by a factor (a scalar, or one factor per unit)."""

    kind = "scale"

    def __init__(self, model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, factor: Any, positions: Positions = "all"):
        super().__init__(model, sites, units, positions)
        self.factor = torch.as_tensor(factor).detach()

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        return out * self._vector(name, self.factor, "factor", out)

    def _params(self) -> dict[str, Any]:
        return {"factor": _vector_info(self.factor)}


class Add(Intervention):
    """Add ``coefficient × vector`` to a site's output (a steering vector, Rimsky et al. 2023,
    "Steering Llama 2 via Contrastive Activation Addition"): ``y ← y + c·v`` at the chosen
    positions; ``vector`` spans the site's units (or the listed ``units``)."""

    kind = "add"

    def __init__(self, model: nn.Module, sites: SitesSpec, vector: Any, *, coefficient: float = 1.0,
                 units: UnitsSpec = None, positions: Positions = "all"):
        super().__init__(model, sites, units, positions)
        self.vector = vector if isinstance(vector, Mapping) else torch.as_tensor(vector).detach()
        self.coefficient = float(coefficient)

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        v = self.vector
        if isinstance(v, Mapping):
            if name not in v:
                raise NeuronscopeError(f"no steering vector given for site {name!r}; give one per site")
            v = v[name]
        return out + self.coefficient * self._vector(name, v, "vector", out)

    def _params(self) -> dict[str, Any]:
        v = self.vector
        vec = {n: _vector_info(x) for n, x in v.items()} if isinstance(v, Mapping) else _vector_info(v)
        return {"coefficient": self.coefficient, "vector": vec}


@dataclass
class Captured:
    """Site outputs captured from one forward pass (:func:`capture`), with the attention
    mask of that input (for ``positions='last'`` and for flattening to samples)."""

    outputs: dict[str, torch.Tensor]
    mask: torch.Tensor | None = None

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.outputs:
            raise NeuronscopeError(f"no activations captured for site {site!r}; captured: {', '.join(self.outputs)}")
        return self.outputs[site]

    def samples(self, site: str) -> torch.Tensor:
        """The site's activations as ``[samples, units]`` in their own dtype (padding dropped,
        conv positions as samples), in the recorder's order."""
        t = self[site]
        if t.ndim == 3 and self.mask is not None and tuple(self.mask.shape) == tuple(t.shape[:2]):
            return t[self.mask.to(torch.bool)]
        if t.ndim >= 4:
            return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
        return t.reshape(-1, t.shape[-1]) if t.ndim == 3 else t


def _run(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def capture(model: nn.Module, sites: str | Sequence[str], inputs: Any) -> Captured:
    """Run ``model`` once on ``inputs`` (a dict of keyword tensors, a tuple of positional
    tensors, or one tensor) under ``torch.no_grad`` and keep the output of every site
    matched by ``sites`` (for :func:`patch` and resample ablation). Interventions active
    at the time apply."""
    site_list = resolve_sites(model, sites if isinstance(sites, str) else list(sites))
    store: dict[str, torch.Tensor] = {}
    handles = [s.module.register_forward_hook(lambda _m, _i, o, n=s.name: store.__setitem__(n, _first_tensor(o).detach().clone()))
               for s in site_list]
    try:
        with torch.no_grad():
            _run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    for s in site_list:
        if s.name not in store:
            raise NeuronscopeError(f"site {s.name!r} did not run in the forward pass; choose modules the model calls")
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return Captured(store, None if mask is None else mask.detach().clone())


class Patch(Intervention):
    """Activation patching: replace units by the activations the same sites had on another
    input (``source``: :func:`capture`'s result, a tensor shaped like the site output, or
    ``{site: tensor}``). With ``positions='last'`` the source's last real token is written
    into this input's last real token (inputs of different lengths); otherwise the source
    must have the site output's shape (a batch of 1 broadcasts)."""

    kind = "patch"

    def __init__(self, model: nn.Module, sites: SitesSpec, source: Any, *, units: UnitsSpec = None, positions: Positions = "all"):
        super().__init__(model, sites, units, positions)
        self.source = source
        for name in self.targets:
            self._source(name)

    def _source(self, name: str) -> torch.Tensor:
        s = self.source
        if isinstance(s, Captured):
            return s[name]
        if isinstance(s, Mapping):
            if name not in s:
                raise NeuronscopeError(f"patch source has no activations for site {name!r}")
            return torch.as_tensor(s[name])
        return torch.as_tensor(s)

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        src = self._source(name).to(dtype=out.dtype, device=out.device)
        if self.positions == "last":
            smask = self.source.mask if isinstance(self.source, Captured) else None
            if src.ndim != 3 or src.shape[-1] != out.shape[-1] or src.shape[0] not in (1, out.shape[0]):
                raise NeuronscopeError(f"patch source for {name!r} has shape {tuple(src.shape)}; the site output is {tuple(out.shape)}")
            s_last = last_positions(smask, src.shape[1], src.shape[0], out.device)
            vec = src[torch.arange(src.shape[0], device=out.device), s_last]  # [b_src, u]
            b = out.shape[0]
            o_last = last_positions(self._attn if self._attn is not None and self._attn.shape[0] == b else None,
                                    out.shape[1], b, out.device)
            return out.index_put((torch.arange(b, device=out.device), o_last), vec.expand(b, -1))
        if src.shape[1:] != out.shape[1:] or src.shape[0] not in (1, out.shape[0]):
            raise NeuronscopeError(f"patch source for {name!r} has shape {tuple(src.shape)}; the site output is {tuple(out.shape)} (use positions='last' for inputs of different lengths)")
        return src

    def _params(self) -> dict[str, Any]:
        return {"source": {n: {"shape": list(self._source(n).shape), "sha": _digest(self._source(n))} for n in self.targets}}


class SetAblation(Intervention):
    """Batched ablation of several unit sets at once: the model runs on a batch expanded
    to ``copies × batch`` items (copy-major: item ``c·B + i`` is copy ``c`` of example
    ``i``); copy ``c`` has the units where ``masks[site][c]`` (or ``[c, i]`` per example)
    is True replaced by zero or the mean. One forward pass evaluates ``copies`` ablations
    (:func:`neuronscope.analyses.attribute.ablation_effects`)."""

    kind = "ablate-sets"

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], *, how: str = "zero",
                 means: Mapping[str, Any] | None = None, positions: Positions = "all"):
        super().__init__(model, {k: None for k in masks}, None, positions)
        if how not in ("zero", "mean"):
            raise NeuronscopeError(f"batched ablation supports how='zero' or 'mean', not {how!r}")
        self.how = how
        names = list(self.targets)
        if len(names) != len(masks):
            raise NeuronscopeError("give one mask per site name (exact module names)")
        self.masks = {}
        for glob, m in masks.items():
            (site,) = [s.name for s in resolve_sites(model, glob)]
            m = torch.as_tensor(m, dtype=torch.bool)
            if m.ndim not in (2, 3):
                raise NeuronscopeError("a set-ablation mask is [copies, units] or [copies, batch, units]")
            self.masks[site] = m
        copies = {m.shape[0] for m in self.masks.values()}
        if len(copies) != 1:
            raise NeuronscopeError("every site's mask needs the same number of copies")
        self.copies = copies.pop()
        self.means = {}
        if how == "mean":
            if means is None:
                raise NeuronscopeError("how='mean' needs means= {site: per-unit means}")
            self.means = {n: np.asarray(means[n], dtype=np.float64) for n in self.targets}

    def _select(self, name: str, out: torch.Tensor) -> torch.Tensor | None:
        m = self.masks[name].to(out.device)
        ax = _unit_axis(out)
        width = out.shape[ax]
        if m.shape[-1] != width:
            raise NeuronscopeError(f"set-ablation mask for {name!r} has {m.shape[-1]} units; the site has {width}")
        c = self.copies
        if out.shape[0] % c:
            raise NeuronscopeError(f"batch of {out.shape[0]} is not {c} copies of a batch; expand the inputs copy-major")
        b = out.shape[0] // c
        if m.ndim == 2:
            m = m[:, None, :].expand(c, b, width)
        elif m.shape[1] != b:
            raise NeuronscopeError(f"set-ablation mask has {m.shape[1]} examples per copy; the batch has {b}")
        m = m.reshape(c * b, width)
        shape = [c * b] + [1] * (out.ndim - 1)
        shape[ax] = width
        sel = m.reshape(shape)
        pm = _position_mask(self.positions, out, self._attn)
        return sel if pm is None else sel & pm

    def _values(self, name: str, out: torch.Tensor) -> torch.Tensor:
        if self.how == "zero":
            return torch.zeros((), dtype=out.dtype, device=out.device)
        return self._vector(name, self.means[name], "means", out)

    def _params(self) -> dict[str, Any]:
        return {"how": self.how, "copies": self.copies}


class Compose(Intervention):
    """Several interventions entered together, in order (and left in reverse order)."""

    kind = "compose"

    def __init__(self, members: Iterable[Intervention]):
        self.members = list(members)
        for m in self.members:
            if not isinstance(m, Intervention):
                raise NeuronscopeError(f"compose takes interventions, not {type(m).__name__}")
        self._stack: ExitStack | None = None

    def __enter__(self) -> Compose:
        stack = ExitStack()
        try:
            for m in self.members:
                stack.enter_context(m)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": [m.describe() for m in self.members]}

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.members)


# --------------------------------------------------------------------------- constructors


def ablate(model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, how: str = "zero", means: Any = None,
           run: Any = None, pool: Any = None, seed: int = 0, positions: Positions = "all") -> Ablate:
    """Ablate ``units`` of the sites matched by ``sites`` while the context is active.

    ``sites`` is a module glob (``units`` a list of indices, None for all) or a mapping
    ``{glob: units}`` over several sites at once (e.g. one language's LAPE neurons per
    layer). ``how``:

    * ``"zero"`` — ``y_u ← 0``;
    * ``"mean"`` — ``y_u ← μ_u``, with ``means=`` (a vector over the site's units, one value
      per listed unit, or ``{site: vector}``) or ``run=`` (a :class:`~neuronscope.store.Run`
      or its path: ``μ = run.summaries(site).result()["moments.mean"]``);
    * ``"resample"`` — ``y_u ← y'_u`` of a sample drawn uniformly (``seed``) from ``pool``
      (a ``[samples, units]`` tensor, ``{site: tensor}`` or :func:`capture`'s result on a
      reference batch), independently per example and position.
    """
    return Ablate(model, sites, units, how=how, means=means, run=run, pool=pool, seed=seed, positions=positions)


def clamp(model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, value: Any, positions: Positions = "all") -> Clamp:
    """Clamp ``units`` to ``value`` (``y_u ← v_u``; scalar, per-unit or per-listed-unit)."""
    return Clamp(model, sites, units, value=value, positions=positions)


def scale(model: nn.Module, sites: SitesSpec, units: UnitsSpec = None, *, factor: Any, positions: Positions = "all") -> Scale:
    """Scale ``units`` by ``factor`` (``y_u ← f_u · y_u``)."""
    return Scale(model, sites, units, factor=factor, positions=positions)


def add(model: nn.Module, sites: SitesSpec, vector: Any, *, coefficient: float = 1.0, units: UnitsSpec = None,
        positions: Positions = "all") -> Add:
    """Add ``coefficient · vector`` to the site output (``y ← y + c·v``), e.g. a steering
    vector from :func:`neuronscope.analyses.steer.steering_vector`; ``vector`` may be
    ``{site: vector}`` for several sites."""
    return Add(model, sites, vector, coefficient=coefficient, units=units, positions=positions)


def patch(model: nn.Module, sites: SitesSpec, source: Any, *, units: UnitsSpec = None, positions: Positions = "all") -> Patch:
    """Patch ``units`` with activations from another input (``source = capture(model, sites,
    other_inputs)``): ``y_u ← y'_u``."""
    return Patch(model, sites, source, units=units, positions=positions)


def ablate_sets(model: nn.Module, masks: Mapping[str, torch.Tensor], *, how: str = "zero",
                means: Mapping[str, Any] | None = None, positions: Positions = "all") -> SetAblation:
    """Batched ablation of unit sets over a copy-expanded batch (see :class:`SetAblation`)."""
    return SetAblation(model, masks, how=how, means=means, positions=positions)


def compose(*interventions: Intervention | Iterable[Intervention]) -> Compose:
    """Enter several interventions as one context (``compose(a, b)`` or ``compose([a, b])``);
    on one module they apply in the order given."""
    flat: list[Intervention] = []
    for item in interventions:
        if isinstance(item, Intervention):
            flat.append(item)
        else:
            flat.extend(item)
    return Compose(flat)
