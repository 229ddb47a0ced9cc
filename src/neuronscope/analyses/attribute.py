"""How important is a neuron for an output: conductance, ablation effects, influential paths.

* :func:`conductance` — the conductance of every unit of one or more sites for one batch,
  from one integrated-gradients path (Dhamdhere, Sundararajan & Yan 2018, "How Important Is
  a Neuron?"); :func:`conductance_over` aggregates it over a dataset in a streaming,
  mergeable :class:`ConductanceSummary` (mean, mean |·|, per label, completeness).
* :func:`ablation_effects` — the effect on a target of ablating each of N neurons (or the
  cumulative sets top-1, top-2, …), batched over neurons.
* :func:`joint_influence` and :func:`influential_path` — the joint influence of a neuron set
  and the layer-progressive greedy search of Wang et al. 2025 ("Discovering Influential
  Neuron Path in Vision Transformers"); :func:`plot_path` draws a path.
* :func:`save_conductance`, :func:`save_ablation`, :func:`save_path` store results in a run
  for the atlas (per-neuron importance in the site table; an ablation page; a path page).

Targets (what "the output" is) come from :mod:`neuronscope.analyses.targets`; data is a
source (anything with ``batches()``: :class:`~neuronscope.sources.text.TextSource`,
:class:`~neuronscope.sources.tensors.TensorSource`) or one batch (a source ``Batch``, a
tokenizer's output dict, or an input tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from neuronscope.analyses.targets import ModelBatch, Target, as_model_batch, as_target
from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import SetAblation, _first_tensor, _means_from_run, _unit_axis
from neuronscope.population import short_site_names
from neuronscope.sources.torch_sites import Site
from neuronscope.sources.torch_sites import sites as resolve_sites
from neuronscope.summaries.base import register

__all__ = [
    "METHODS",
    "AblationEffects",
    "ConductanceResult",
    "ConductanceSummary",
    "NeuronPath",
    "ablation_effects",
    "conductance",
    "conductance_over",
    "influential_path",
    "integration_alphas",
    "joint_influence",
    "load_importance",
    "plot_path",
    "save_ablation",
    "save_conductance",
    "save_path",
]

#: Integration rules (the alphas of Captum's ``approximation_methods``).
METHODS = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- data helpers


def _iter_batches(data: Any) -> Iterator[tuple[ModelBatch, Any]]:
    """``(model batch, source batch or None)`` for a source or a single batch."""
    if hasattr(data, "batches") and callable(data.batches):
        for b in data.batches():
            yield as_model_batch(b), b
    else:
        yield as_model_batch(data), data if hasattr(data, "samples") else None


def _item_labels(batch: Any, label: str, n: int) -> np.ndarray:
    """Per-item label codes of a source batch (text: the code of each document's first token)."""
    samples = getattr(batch, "samples", None)
    if samples is None or label not in samples:
        raise NeuronscopeError(f"the data carries no label {label!r}; give a source whose items have that label")
    codes = np.asarray(samples[label])
    if "doc" in samples and len(codes) != n:
        _, first = np.unique(np.asarray(samples["doc"]), return_index=True)
        codes = codes[np.sort(first)]
    if len(codes) != n:
        raise NeuronscopeError(f"label {label!r} has {len(codes)} values for {n} items in a batch")
    return codes.astype(np.int64)


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout off), restoring the previous mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _one_site(model: nn.Module, site: str | Site) -> Site:
    if isinstance(site, Site):
        return site
    found = resolve_sites(model, site)
    if len(found) != 1:
        raise NeuronscopeError(f"site pattern {site!r} matches {len(found)} modules ({', '.join(s.name for s in found[:4])}); give one site")
    return found[0]


class _Capture:
    """Forward hooks that keep each site's output tensor (not detached) for one forward.

    With ``cut=True`` (conductance's fast path) the forward pass starts without autograd;
    the first site to run returns its output as a fresh leaf that requires grad and turns
    autograd on, so the graph holds only what follows the first site (the gradients of the
    target with respect to the sites are unchanged: nothing before that site depends on
    it). Later sites stay inside the graph."""

    def __init__(self, site_list: Sequence[Site], cut: bool = False):
        self.sites = list(site_list)
        self.cut = cut
        self.out: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._h: list[Any] = []

    def __enter__(self) -> _Capture:
        for s in self.sites:
            self._h.append(s.module.register_forward_hook(self._hook(s.name)))
        return self

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, _i: Any, o: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            t = _first_tensor(o)
            if self.cut and not self.out:
                torch.set_grad_enabled(True)  # restored by the caller's no_grad() on exit
                t = t.detach().requires_grad_()
                self.out[name] = t
                from neuronscope.intervene import _replace_first_tensor

                return _replace_first_tensor(o, t)
            self.out[name] = t
            return None

        return hook

    def reset(self) -> None:
        self.out, self.calls = {}, {}

    def missing(self) -> list[str]:
        return [s.name for s in self.sites if self.calls.get(s.name, 0) == 0]

    def check(self) -> None:
        for s in self.sites:
            n = self.calls.get(s.name, 0)
            if n == 0:
                raise NeuronscopeError(f"site {s.name!r} did not run in the forward pass; choose modules the model calls")
            if n > 1:
                raise NeuronscopeError(f"site {s.name!r} ran {n} times in one forward pass; attribution needs a module called once")

    def __exit__(self, *exc: object) -> None:
        for h in self._h:
            h.remove()
        self._h = []


# --------------------------------------------------------------------------- conductance


def integration_alphas(points: int, method: str = "riemann_trapezoid") -> list[float]:
    """The ``points`` path positions ``α_k ∈ [0, 1]`` of an integration rule, identical to
    Captum's ``approximation_methods`` (``riemann_*``: ``torch.linspace`` in float32;
    ``gausslegendre``: ``(1 + x_k)/2`` of the Gauss–Legendre nodes)."""
    if method not in METHODS:
        raise NeuronscopeError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    n = points
    if method == "gausslegendre":
        return (0.5 * (1 + np.polynomial.legendre.leggauss(n)[0])).tolist()
    if n < 2:
        raise NeuronscopeError("a Riemann rule needs at least 2 points (steps >= 1)")
    rule = method.split("_")[1]
    if rule == "trapezoid":
        return torch.linspace(0, 1, n).tolist()
    if rule == "left":
        return torch.linspace(0, 1 - 1 / n, n).tolist()
    if rule == "middle":
        return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
    return torch.linspace(1 / n, 1, n).tolist()


@dataclass
class _Path:
    """The straight path from ``x0`` (baseline) to ``x`` (input) in the model's input space,
    and how to run the model on ``k`` stacked points of it."""

    x: torch.Tensor
    x0: torch.Tensor
    run: Callable[[torch.Tensor, int], Any]


def _make_path(model: nn.Module, mb: ModelBatch, baseline: Any) -> _Path:
    """Text models (inputs with ``input_ids`` and ``get_input_embeddings``): the path runs
    over the token embeddings (``inputs_embeds``); position and token-type embeddings and
    the attention mask stay as they are. Tensor models: over the input tensor."""
    inputs = mb.inputs
    if isinstance(inputs, Mapping):
        if "input_ids" not in inputs or not callable(getattr(model, "get_input_embeddings", None)):
            raise NeuronscopeError("conductance on keyword inputs needs input_ids and a model with get_input_embeddings() (a Hugging Face model)")
        emb = model.get_input_embeddings()
        ids = inputs["input_ids"]
        with torch.no_grad():
            x = emb(ids).detach()
            if isinstance(baseline, str) and baseline == "zeros":
                x0 = torch.zeros_like(x)
            elif isinstance(baseline, str) and baseline == "pad":
                pad = getattr(getattr(model, "config", None), "pad_token_id", None)
                if pad is None:
                    raise NeuronscopeError("baseline='pad' needs model.config.pad_token_id; give a token id or 'zeros'")
                x0 = emb(torch.full_like(ids, int(pad))).detach()
            elif isinstance(baseline, int | np.integer):
                x0 = emb(torch.full_like(ids, int(baseline))).detach()
            elif isinstance(baseline, torch.Tensor | np.ndarray):
                x0 = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x).contiguous()
            else:
                raise NeuronscopeError(f"baseline must be 'zeros', 'pad', a token id or a tensor, not {baseline!r}")
        others = {k: v for k, v in inputs.items() if k != "input_ids"}

        def run_text(points: torch.Tensor, k: int) -> Any:
            rep = {n: v.repeat(k, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.ndim else v
                   for n, v in others.items()}
            return model(inputs_embeds=points, **rep)

        return _Path(x, x0, run_text)
    x = inputs.detach()
    if not x.is_floating_point():
        raise NeuronscopeError("conductance integrates along the input; a tensor model needs floating-point inputs")
    if isinstance(baseline, str) and baseline == "zeros":
        x0 = torch.zeros_like(x)
    elif isinstance(baseline, torch.Tensor | np.ndarray | float | int):
        x0 = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x).contiguous()
    else:
        raise NeuronscopeError(f"baseline for a tensor model must be 'zeros' or a tensor, not {baseline!r}")
    return _Path(x, x0, lambda points, k: model(points))


@dataclass
class ConductanceResult:
    """Conductance of one batch.

    * ``conductance[site]`` — ``[batch, units]`` float64: per unit, summed over the real
      positions of the sequence (text) or over space (conv);
    * ``per_position[site]`` — the raw ``[batch, seq, units]`` / ``[batch, C, H, W]``
      conductance (when requested; what Captum's ``LayerConductance`` returns);
    * ``f_input``, ``f_baseline`` — ``F(x)`` and ``F(x')`` per example;
    * ``delta[site]`` — completeness error ``Σ_u cond_u − (F(x) − F(x'))`` per example (zero
      in the limit of many steps when every path from the input to the output passes
      through the site; a residual connection around the site carries the rest).
    """

    conductance: dict[str, np.ndarray]
    f_input: np.ndarray
    f_baseline: np.ndarray
    delta: dict[str, np.ndarray]
    per_position: dict[str, torch.Tensor] | None = None


def _reduce_positions(c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if c.ndim == 2:
        return c
    if c.ndim == 3:
        if mask is not None and tuple(mask.shape) == tuple(c.shape[:2]):
            c = c * mask.to(c.dtype)[:, :, None]
        return c.sum(dim=1)
    return c.flatten(2).sum(dim=2)


def conductance(
    model: nn.Module,
    sites: str | Sequence[str],
    inputs: Any,
    target: Target | Callable[..., torch.Tensor],
    *,
    baseline: Any = "zeros",
    steps: int = 50,
    method: str = "riemann_trapezoid",
    internal_batch_size: int | None = None,
    per_position: bool = False,
) -> ConductanceResult:
    """Conductance of every unit of ``sites`` for ``target`` on one batch of ``inputs``.

    Dhamdhere et al. 2018 define the conductance of hidden unit ``y`` for input ``x`` and
    baseline ``x'`` as the flow of integrated gradients through it::

        Cond_y(x) = Σ_i (x_i − x'_i) ∫₀¹ ∂F/∂y · ∂y/∂x_i (x' + α(x − x')) dα
                  = ∫₀¹ ∂F/∂y (α) · dy(α)/dα dα                       (chain rule)

    Discretised on the path points ``α_0 < … < α_n`` (``n = steps``; ``method`` as in
    Captum), every unit of the site at once from ONE path::

        cond_u ≈ Σ_{k=0}^{n−1} ∂F/∂y_u(α_k) · (y_u(α_{k+1}) − y_u(α_k))

    — the "layer conductance" form of Captum's ``LayerConductance``, to which this is equal
    for the same inputs, baseline, steps and method. ``riemann_trapezoid`` (the default)
    puts ``α_0 = 0`` and ``α_n = 1`` on the path, so ``Σ_u cond_u`` is a left Riemann sum of
    the line integral of ``∇_y F`` from ``y(x')`` to ``y(x)``: it equals ``F(x) − F(x')`` up to
    ``O(1/steps)`` when the site separates input and output (completeness).

    The path runs over the model's input: for text models the token embeddings
    (``inputs_embeds``), from ``baseline`` — ``"zeros"`` (zero vectors), ``"pad"`` (the
    [PAD] embedding at every position), a token id (e.g. the [MASK] id), or a tensor —
    to the input's embeddings; position/token-type embeddings and the attention mask are
    not interpolated. For tensor models, the input tensor (baseline zeros or a tensor).

    ``internal_batch_size`` bounds the examples × path points of one forward pass (chunks
    of the path are chained, so memory is bounded without changing the result). Several
    sites share the path. The model runs in eval mode.
    """
    tgt = as_target(target)
    if steps < 1:
        raise NeuronscopeError("steps must be at least 1")
    if torch.is_inference_mode_enabled():
        raise NeuronscopeError("conductance needs autograd; call it outside torch.inference_mode()")
    tgt.check(model)
    site_list = resolve_sites(model, sites if isinstance(sites, str) else list(sites))
    mb = as_model_batch(inputs)
    B = mb.size
    alphas = integration_alphas(steps + 1, method)
    points = len(alphas)
    per_chunk = points if internal_batch_size is None else max(1, int(internal_batch_size) // B)
    with _eval(model):
        tgt.prepare(model, mb)
        path = _make_path(model, mb, baseline)
        x, x0 = path.x, path.x0
        acc: dict[str, torch.Tensor] = {}
        prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        f_path: list[torch.Tensor] = []
        cut = True
        with torch.enable_grad(), _Capture(site_list, cut=True) as cap, tgt.attach(model):
            for c0 in range(0, points, per_chunk):
                chunk = alphas[c0 : c0 + per_chunk]
                k = len(chunk)
                pts = torch.cat([x0 + a * (x - x0) for a in chunk], dim=0)
                cap.reset()
                if cut:
                    with torch.no_grad():
                        outputs = path.run(pts, k)
                    if cap.missing():  # a module that skips submodules without autograd (fused fast paths)
                        cut = cap.cut = False
                        cap.reset()
                if not cut:
                    outputs = path.run(pts.requires_grad_(), k)
                cap.check()
                mbk = mb.expand(k)
                f = tgt(outputs, mbk)
                if f.shape != (k * B,):
                    raise NeuronscopeError(f"target returned shape {tuple(f.shape)}; it must give one value per example ({k * B})")
                ys = [cap.out[s.name] for s in site_list]
                grads = (torch.autograd.grad(f.sum(), ys, allow_unused=True) if f.requires_grad
                         else tuple(None for _ in ys))
                f_path.append(f.detach())
                for s, y, g in zip(site_list, ys, grads, strict=True):
                    y = y.detach()
                    g = torch.zeros_like(y) if g is None else g.detach()
                    if prev.get(s.name) is not None:
                        py, pg = prev[s.name]
                        y_all, g_all = torch.cat([py, y]), torch.cat([pg, g])
                    else:
                        y_all, g_all = y, g
                    if y_all.shape[0] > B:
                        part = (g_all[:-B] * (y_all[B:] - y_all[:-B]))
                        part = part.reshape((-1, B) + tuple(y.shape[1:])).sum(dim=0)
                        acc[s.name] = part if s.name not in acc else acc[s.name] + part
                    prev[s.name] = (y_all[-B:], g_all[-B:])
                del outputs, pts, ys, grads
        f_all = torch.cat(f_path).reshape(points, B)
        if alphas[0] == 0.0 and alphas[-1] == 1.0:
            f_x, f_0 = f_all[-1], f_all[0]
        else:
            with torch.no_grad(), tgt.attach(model):
                ends = path.run(torch.cat([x, x0], dim=0), 2)
                f_ends = tgt(ends, mb.expand(2)).detach()
            f_x, f_0 = f_ends[:B], f_ends[B:]
    change = (f_x - f_0).double().cpu().numpy()
    cond: dict[str, np.ndarray] = {}
    delta: dict[str, np.ndarray] = {}
    raw: dict[str, torch.Tensor] = {}
    for s in site_list:
        c = acc[s.name]
        raw[s.name] = c
        cond[s.name] = _reduce_positions(c, mb.mask).double().cpu().numpy()
        delta[s.name] = c.double().flatten(1).sum(1).cpu().numpy() - change
    return ConductanceResult(cond, f_x.double().cpu().numpy(), f_0.double().cpu().numpy(), delta,
                             raw if per_position else None)


@register
class ConductanceSummary:
    """Streaming, mergeable summary of per-example conductance of one site's units.

    Keeps, per unit, ``count``, ``Σ cond`` and ``Σ |cond|`` (float64), the same per label
    code (``labels`` categories; code −1 = no label, counted in the totals only), and the
    completeness of each example: ``Σ |δ|``, ``max |δ|`` and ``Σ |F(x) − F(x')|`` with
    ``δ = Σ_u cond_u − (F(x) − F(x'))``. Merge adds the sums (exact up to float64 rounding,
    associative); memory is ``O(units × labels)`` whatever the dataset size.
    """

    kind = "conductance"

    def __init__(self, units: int, labels: Sequence[str] | None = None):
        self.units = int(units)
        self.labels = [str(x) for x in labels] if labels else []
        L = len(self.labels)
        self.count = 0
        self.sum = np.zeros(self.units)
        self.sum_abs = np.zeros(self.units)
        self.label_count = np.zeros(L, dtype=np.int64)
        self.label_sum = np.zeros((L, self.units))
        self.label_sum_abs = np.zeros((L, self.units))
        self.delta_abs_sum = 0.0
        self.delta_abs_max = 0.0
        self.change_abs_sum = 0.0

    def update(self, cond: np.ndarray, labels: np.ndarray | None = None, delta: np.ndarray | None = None,
               change: np.ndarray | None = None) -> None:
        """Fold in ``cond`` ``[n, units]`` (per-example conductance), optional label codes
        ``[n]``, completeness errors ``delta`` ``[n]`` and ``change = F(x) − F(x')`` ``[n]``."""
        c = np.asarray(cond, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != self.units:
            raise NeuronscopeError(f"conductance batch of shape {c.shape} does not fit {self.units} units")
        self.count += c.shape[0]
        self.sum += c.sum(0)
        a = np.abs(c)
        self.sum_abs += a.sum(0)
        if self.labels:
            if labels is None:
                raise NeuronscopeError("this summary is per label; pass the label codes of the batch")
            codes = np.asarray(labels, dtype=np.int64)
            ok = (codes >= 0) & (codes < len(self.labels))
            np.add.at(self.label_count, codes[ok], 1)
            np.add.at(self.label_sum, codes[ok], c[ok])
            np.add.at(self.label_sum_abs, codes[ok], a[ok])
        if delta is not None:
            d = np.abs(np.asarray(delta, dtype=np.float64))
            self.delta_abs_sum += float(d.sum())
            self.delta_abs_max = max(self.delta_abs_max, float(d.max(initial=0.0)))
        if change is not None:
            self.change_abs_sum += float(np.abs(np.asarray(change, dtype=np.float64)).sum())

    def merge(self, other: Self) -> Self:
        """Fold in a summary of disjoint examples."""
        if other.units != self.units or other.labels != self.labels:
            raise NeuronscopeError("cannot merge conductance summaries of different sites or label sets")
        self.count += other.count
        self.sum += other.sum
        self.sum_abs += other.sum_abs
        self.label_count += other.label_count
        self.label_sum += other.label_sum
        self.label_sum_abs += other.label_sum_abs
        self.delta_abs_sum += other.delta_abs_sum
        self.delta_abs_max = max(self.delta_abs_max, other.delta_abs_max)
        self.change_abs_sum += other.change_abs_sum
        return self

    def result(self) -> dict[str, np.ndarray]:
        """``mean``, ``mean_abs`` ``[units]``; ``label_mean``, ``label_mean_abs`` ``[labels,
        units]``, ``label_count``; ``completeness_mean_abs`` (mean |δ|),
        ``completeness_max_abs``, ``change_mean_abs`` (mean |F(x) − F(x')|) and
        ``completeness_relative`` (their ratio)."""
        n = max(self.count, 1)
        lc = np.maximum(self.label_count, 1)[:, None]
        nan = np.nan if self.count == 0 else None
        out = {
            "count": np.array(self.count),
            "mean": self.sum / n if nan is None else np.full(self.units, np.nan),
            "mean_abs": self.sum_abs / n if nan is None else np.full(self.units, np.nan),
            "label_count": self.label_count.copy(),
            "label_mean": np.where(self.label_count[:, None] > 0, self.label_sum / lc, np.nan),
            "label_mean_abs": np.where(self.label_count[:, None] > 0, self.label_sum_abs / lc, np.nan),
            "completeness_mean_abs": np.array(self.delta_abs_sum / n),
            "completeness_max_abs": np.array(self.delta_abs_max),
            "change_mean_abs": np.array(self.change_abs_sum / n),
        }
        out["completeness_relative"] = np.array(self.delta_abs_sum / self.change_abs_sum if self.change_abs_sum else np.nan)
        return out

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "count": np.array([self.count], dtype=np.int64), "sum": self.sum, "sum_abs": self.sum_abs,
            "label_count": self.label_count, "label_sum": self.label_sum, "label_sum_abs": self.label_sum_abs,
            "completeness": np.array([self.delta_abs_sum, self.delta_abs_max, self.change_abs_sum]),
        }
        return arrays, {"kind": self.kind, "units": self.units, "labels": self.labels}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Self:
        self = cls(int(attrs["units"]), list(attrs.get("labels") or []))
        self.count = int(np.asarray(arrays["count"]).reshape(-1)[0])
        for k in ("sum", "sum_abs", "label_sum", "label_sum_abs"):
            setattr(self, k, np.array(arrays[k], dtype=np.float64).reshape(getattr(self, k).shape))
        self.label_count = np.array(arrays["label_count"], dtype=np.int64).reshape(-1)
        comp = np.asarray(arrays["completeness"], dtype=np.float64)
        self.delta_abs_sum, self.delta_abs_max, self.change_abs_sum = (float(v) for v in comp)
        return self

    def top(self, k: int = 20, by: str = "mean_abs") -> list[tuple[int, float, float]]:
        """The ``k`` most important units ``(unit, mean, mean_abs)``, by ``mean_abs`` or ``mean``."""
        r = self.result()
        order = np.argsort(-r[by], kind="stable")[:k]
        return [(int(u), float(r["mean"][u]), float(r["mean_abs"][u])) for u in order]


def conductance_over(
    model: nn.Module,
    data: Any,
    sites: str | Sequence[str],
    target: Target | Callable[..., torch.Tensor],
    *,
    baseline: Any = "zeros",
    steps: int = 50,
    method: str = "riemann_trapezoid",
    label: str | None = None,
    internal_batch_size: int | None = None,
    progress: Progress | None = None,
) -> dict[str, ConductanceSummary]:
    """Dataset-level conductance: :func:`conductance` on every batch of ``data`` folded
    into one :class:`ConductanceSummary` per site (per-example conductance summed over
    positions; mean, mean |·|, per ``label`` of the source's items, completeness).
    Nothing per example is kept: memory is flat in the dataset size. ``progress(n)`` is
    called with the items done after each batch."""
    site_list = resolve_sites(model, sites if isinstance(sites, str) else list(sites))
    cats = list(getattr(data, "label_categories", {}).get(label, [])) if label else None
    if label and not cats:
        raise NeuronscopeError(f"the data has no label {label!r}; its labels: {', '.join(getattr(data, 'label_categories', {})) or 'none'}")
    out: dict[str, ConductanceSummary] = {}
    done = 0
    for mb, raw in _iter_batches(data):
        res = conductance(model, [s.name for s in site_list], mb, target, baseline=baseline, steps=steps,
                          method=method, internal_batch_size=internal_batch_size)
        codes = _item_labels(raw, label, mb.size) if label else None
        for s in site_list:
            c = res.conductance[s.name]
            if s.name not in out:
                out[s.name] = ConductanceSummary(c.shape[1], cats)
            out[s.name].update(c, codes, res.delta[s.name], res.f_input - res.f_baseline)
        done += mb.size
        if progress is not None:
            progress(done)
    if not out:
        raise NeuronscopeError("the data yielded no batch; give at least one example")
    return out


def save_conductance(run: Any, summaries: Mapping[str, ConductanceSummary], *, name: str = "conductance",
                     attrs: Mapping[str, Any] | None = None) -> str:
    """Store per-neuron importance in ``run`` as ``extras/<name>``: per site ``<site>.mean``,
    ``<site>.mean_abs`` (``[units]``) and, with labels, ``<site>.label_mean_abs``
    (``[labels, units]``, shown as a heatmap by the atlas); attrs hold the sites, labels,
    completeness per site and ``attrs``. Every site must be one the run recorded (same
    module names and widths). Returns the extras name."""
    from neuronscope.store import Run, open_run

    r = run if isinstance(run, Run) else open_run(Path(run))
    arrays: dict[str, np.ndarray] = {}
    comp: dict[str, dict[str, float]] = {}
    heat: dict[str, dict[str, Any]] = {}
    labels: list[str] = []
    for site, summ in summaries.items():
        if site not in r.sites:
            raise NeuronscopeError(f"run {r.path} has no site {site!r}; attribute the sites the run recorded")
        if int(r.sites[site]) != summ.units:
            raise NeuronscopeError(f"site {site!r} has {r.sites[site]} units in run {r.path} but {summ.units} here; use the run's model")
        res = summ.result()
        arrays[f"{site}.mean"] = res["mean"]
        arrays[f"{site}.mean_abs"] = res["mean_abs"]
        if summ.labels:
            labels = summ.labels
            arrays[f"{site}.label_mean_abs"] = res["label_mean_abs"]
            heat[f"{site}.label_mean_abs"] = {"title": f"{site}: mean |conductance| per label", "rows": summ.labels}
        comp[site] = {"examples": int(res["count"]), "mean_abs_delta": float(res["completeness_mean_abs"]),
                      "relative": float(res["completeness_relative"])}
    meta = {"title": f"conductance ({name})", "kind": "conductance", "sites": list(summaries), "labels": labels,
            "completeness": comp, "heatmaps": heat, **dict(attrs or {})}
    r.write_extras(name, arrays, meta)
    return name


def load_importance(run: Any, site: str, name: str = "conductance", by: str = "mean_abs") -> np.ndarray:
    """Per-neuron importance of ``site`` saved by :func:`save_conductance` (``by``:
    ``mean_abs`` or ``mean``)."""
    from neuronscope.store import Run, open_run

    r = run if isinstance(run, Run) else open_run(Path(run))
    extra = r.extras(name)
    if extra is None:
        raise NeuronscopeError(f"run {r.path} holds no {name!r} result; run `neuronscope attribute ... --save {r.path}` first")
    key = f"{site}.{by}"
    if key not in extra["arrays"]:
        raise NeuronscopeError(f"the {name!r} result in {r.path} has no site {site!r}; its sites: {', '.join(extra['attrs'].get('sites', []))}")
    return np.asarray(extra["arrays"][key], dtype=np.float64)


# --------------------------------------------------------------------------- ablation


def _resolve_means(model: nn.Module, names: Iterable[str], how: str, means: Any, run: Any) -> dict[str, np.ndarray] | None:
    if how == "zero":
        if means is not None or run is not None:
            raise NeuronscopeError("means=/run= apply to how='mean' only")
        return None
    if how != "mean":
        raise NeuronscopeError(f"how must be 'zero' or 'mean', not {how!r}")
    if (means is None) == (run is None):
        raise NeuronscopeError("how='mean' needs means= (per-unit means) or run= (a recorded run with summaries), exactly one")
    out = {}
    for n in names:
        if run is not None:
            out[n] = _means_from_run(run, n)
        elif isinstance(means, Mapping):
            if n not in means:
                raise NeuronscopeError(f"means has no entry for site {n!r}; give one per site")
            out[n] = np.asarray(means[n], dtype=np.float64)
        else:
            out[n] = np.asarray(means, dtype=np.float64)
    return out


def _clean(model: nn.Module, tgt: Target, mb: ModelBatch, site_list: Sequence[Site]) -> tuple[torch.Tensor, dict[str, int]]:
    """Target on the unmodified model, and each site's width (from the same pass)."""
    tgt.prepare(model, mb)
    with torch.inference_mode(), _Capture(site_list) as cap, tgt.attach(model):
        f = tgt(mb.run(model), mb)
        cap.check()
    widths = {n: int(t.shape[_unit_axis(t)]) for n, t in cap.out.items()}
    return f.detach().clone(), widths


def _chunk(max_batch: int, b: int, chunk: int | None) -> int:
    return max(1, int(chunk) if chunk else max_batch // max(b, 1))


def _set_effects(model: nn.Module, tgt: Target, mb: ModelBatch, masks: Mapping[str, torch.Tensor], clean: torch.Tensor,
                 how: str, means: Mapping[str, np.ndarray] | None, positions: Any, per: int) -> torch.Tensor:
    """``F(ablated) − F(clean)`` ``[copies, B]`` for copy-wise unit-set masks, ``per`` copies per pass."""
    copies = next(iter(masks.values())).shape[0]
    B = mb.size
    out = torch.empty(copies, B, dtype=torch.float64)
    for c0 in range(0, copies, per):
        part = {n: m[c0 : c0 + per] for n, m in masks.items()}
        k = next(iter(part.values())).shape[0]
        mbk = mb.expand(k)
        with torch.inference_mode(), SetAblation(model, part, how=how, means=means, positions=positions), tgt.attach(model):
            f = tgt(mbk.run(model), mbk)
        out[c0 : c0 + k] = (f.reshape(k, B) - clean[None]).double()
    return out


@dataclass
class AblationEffects:
    """Mean effect of ablations on a target over the data: ``effect[j] = mean_x
    F(x; sets[j] ablated) − F(x)`` (negative: ablating lowers the target), ``effect_abs``
    the mean of ``|·|``, ``clean`` the mean unablated target, ``count`` the examples.
    ``sets[j]`` is ``[units[j]]`` or, cumulative, ``units[:j+1]``."""

    site: str
    units: np.ndarray
    how: str
    cumulative: bool
    effect: np.ndarray
    effect_abs: np.ndarray
    clean: float
    count: int

    @property
    def sets(self) -> list[list[int]]:
        u = [int(x) for x in self.units]
        return [u[: j + 1] for j in range(len(u))] if self.cumulative else [[x] for x in u]

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "units": self.units.tolist(), "how": self.how, "cumulative": self.cumulative,
                "effect": self.effect.tolist(), "effect_abs": self.effect_abs.tolist(), "clean": self.clean,
                "count": self.count}


def ablation_effects(
    model: nn.Module,
    site: str,
    units: Sequence[int] | np.ndarray | None,
    target: Target | Callable[..., torch.Tensor],
    data: Any,
    *,
    how: str = "zero",
    means: Any = None,
    run: Any = None,
    cumulative: bool = False,
    positions: Any = "all",
    max_batch: int = 256,
    chunk: int | None = None,
    progress: Progress | None = None,
) -> AblationEffects:
    """The effect on ``target`` of ablating each of ``units`` of one site (or, with
    ``cumulative``, the sets top-1, top-2, … in the order given), averaged over ``data``.

    Batched over neurons: each data batch of ``B`` examples is expanded to ``c × B`` items
    (copy-major) and one forward pass ablates unit ``j`` in copy ``j`` only
    (:class:`~neuronscope.intervene.SetAblation`), so ``N`` single-neuron ablations cost
    about ``N·B / max_batch`` passes instead of ``N``; ``c = chunk`` or ``max_batch // B``
    bounds the memory. ``how``: ``"zero"`` or ``"mean"`` (``means=`` or ``run=``, as in
    :func:`neuronscope.intervene.ablate`). Equal to looping ``with ablate(model, site,
    [j]): …`` over ``j``.
    """
    tgt = as_target(target)
    tgt.check(model)
    s = _one_site(model, site)
    mean_vec = _resolve_means(model, [s.name], how, means, run)
    sums: np.ndarray | None = None
    sums_abs: np.ndarray | None = None
    clean_sum = 0.0
    count = 0
    idx: np.ndarray | None = None
    with _eval(model):
        for mb, _raw in _iter_batches(data):
            clean, widths = _clean(model, tgt, mb, [s])
            width = widths[s.name]
            if idx is None:
                idx = np.arange(width) if units is None else np.asarray(units, dtype=np.int64).reshape(-1)
                if idx.size == 0:
                    raise NeuronscopeError("no units to ablate; list at least one")
                bad = idx[(idx < 0) | (idx >= width)]
                if bad.size:
                    raise NeuronscopeError(f"unit {int(bad[0])} is out of range for site {s.name!r} with {width} units; use indices 0..{width - 1}")
                masks = torch.zeros(len(idx), width, dtype=torch.bool)
                for j, u in enumerate(idx):
                    if cumulative:
                        masks[j, torch.as_tensor(idx[: j + 1])] = True
                    else:
                        masks[j, int(u)] = True
                sums = np.zeros(len(idx))
                sums_abs = np.zeros(len(idx))
            eff = _set_effects(model, tgt, mb, {s.name: masks}, clean, how, mean_vec, positions,
                               _chunk(max_batch, mb.size, chunk)).numpy()
            sums += eff.sum(1)
            sums_abs += np.abs(eff).sum(1)
            clean_sum += float(clean.double().sum())
            count += mb.size
            if progress is not None:
                progress(count)
    if idx is None or count == 0:
        raise NeuronscopeError("the data yielded no batch; give at least one example")
    return AblationEffects(s.name, idx, how, cumulative, sums / count, sums_abs / count, clean_sum / count, count)


# --------------------------------------------------------------------------- influential path


def joint_influence(
    model: nn.Module,
    units_by_site: Mapping[str, Sequence[int]],
    target: Target | Callable[..., torch.Tensor],
    data: Any,
    *,
    how: str = "zero",
    means: Any = None,
    run: Any = None,
    positions: Any = "all",
    per_example: bool = False,
) -> float | np.ndarray:
    """Joint influence of a neuron set ``N`` (units of several sites) on ``target``
    (Wang et al. 2025, "Discovering Influential Neuron Path in Vision Transformers").

    The paper's joint attribution score integrates the gradient along the path that scales
    the activations of all neurons of ``N`` together from their ablated value ``a'`` to
    their value ``a``: ``JAS(N) = Σ_{i∈N} (a_i − a'_i) ∫₀¹ ∂F/∂a_i (a' + α(a − a')) dα``. By
    the completeness of integrated gradients this is exactly ``F(a) − F(a')``: the drop of
    the target when the set is ablated together. We compute that drop directly (one
    ablated forward pass, no Riemann error): ``JI(N) = F(x) − F(x; N ablated)``; positive
    when the set supports the target. Returns the mean over ``data`` (or one value per
    example with ``per_example``).
    """
    tgt = as_target(target)
    tgt.check(model)
    sites = {(_one_site(model, g)).name: list(map(int, u)) for g, u in units_by_site.items()}
    site_objs = [_one_site(model, n) for n in sites]
    mean_vec = _resolve_means(model, sites, how, means, run)
    drops = []
    with _eval(model):
        for mb, _raw in _iter_batches(data):
            clean, widths = _clean(model, tgt, mb, site_objs)
            masks = {}
            for n, us in sites.items():
                m = torch.zeros(1, widths[n], dtype=torch.bool)
                if any(u < 0 or u >= widths[n] for u in us):
                    raise NeuronscopeError(f"a unit of {us} is out of range for site {n!r} with {widths[n]} units")
                m[0, us] = True
                masks[n] = m
            eff = _set_effects(model, tgt, mb, masks, clean, how, mean_vec, positions, 1)
            drops.append(-eff[0].numpy())
    if not drops:
        raise NeuronscopeError("the data yielded no batch; give at least one example")
    d = np.concatenate(drops)
    return d if per_example else float(d.mean())


@dataclass
class NeuronPath:
    """An influential neuron path: one unit per site (in layer order) and the joint
    influence of the path's prefix after each layer (mean over the data, or of one
    ``example``)."""

    sites: list[str]
    units: list[int]
    influence: list[float]
    example: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"sites": self.sites, "units": self.units, "influence": self.influence}
        if self.example is not None:
            d["example"] = self.example
        return d


def influential_path(
    model: nn.Module,
    sites: str | Sequence[str],
    target: Target | Callable[..., torch.Tensor],
    data: Any,
    *,
    how: str = "zero",
    means: Any = None,
    run: Any = None,
    candidates: Mapping[str, Sequence[int]] | None = None,
    per_example: bool = False,
    positions: Any = "all",
    max_batch: int = 256,
    progress: Progress | None = None,
) -> NeuronPath | list[NeuronPath]:
    """Layer-progressive search for the most influential neuron path (Wang et al. 2025).

    With ``sites`` in layer order (a glob such as ``encoder.layer.*.intermediate``), for
    ``l = 1 … L``: ``n_l = argmax_{j ∈ site_l} JI({n_1, …, n_{l−1}, j})`` — the unit of layer
    ``l`` whose ablation together with the units already chosen in earlier layers drops
    the target most (:func:`joint_influence`). Every candidate of a layer is evaluated in
    batched ablation passes (``max_batch`` items per pass). ``candidates`` restricts the
    units tried per site (e.g. the top units by conductance).

    Over the dataset (default) one path maximises the mean joint influence over ``data``;
    with ``per_example`` every example gets its own path (a list, in data order).
    """
    tgt = as_target(target)
    tgt.check(model)
    site_list = resolve_sites(model, sites if isinstance(sites, str) else list(sites))
    names = [s.name for s in site_list]
    mean_vec = _resolve_means(model, names, how, means, run)
    cand: dict[str, np.ndarray | None] = {}
    for n in names:
        cand[n] = None if not candidates or n not in candidates else np.asarray(candidates[n], dtype=np.int64)
    with _eval(model):
        if per_example:
            paths: list[NeuronPath] = []
            offset = 0
            for mb, _raw in _iter_batches(data):
                clean, widths = _clean(model, tgt, mb, site_list)
                B = mb.size
                chosen: dict[str, np.ndarray] = {}
                infl: list[np.ndarray] = []
                for n in names:
                    cu = cand[n] if cand[n] is not None else np.arange(widths[n])
                    _check_cands(n, cu, widths[n])
                    masks = {}
                    for pn, pu in chosen.items():
                        m = torch.zeros(len(cu), B, widths[pn], dtype=torch.bool)
                        m[:, torch.arange(B), torch.as_tensor(pu)] = True
                        masks[pn] = m
                    m = torch.zeros(len(cu), widths[n], dtype=torch.bool)
                    m[torch.arange(len(cu)), torch.as_tensor(cu)] = True
                    masks[n] = m
                    drop = -_set_effects(model, tgt, mb, masks, clean, how, mean_vec, positions,
                                         _chunk(max_batch, B, None)).numpy()  # [cands, B]
                    best = drop.argmax(0)
                    chosen[n] = cu[best]
                    infl.append(drop[best, np.arange(B)])
                for i in range(B):
                    paths.append(NeuronPath(list(names), [int(chosen[n][i]) for n in names],
                                            [float(v[i]) for v in infl], example=offset + i))
                offset += B
                if progress is not None:
                    progress(offset)
            if not paths:
                raise NeuronscopeError("the data yielded no batch; give at least one example")
            return paths
        chosen_units: dict[str, int] = {}
        influence: list[float] = []
        for li, n in enumerate(names):
            totals: np.ndarray | None = None
            count = 0
            cu_final: np.ndarray | None = None
            for mb, _raw in _iter_batches(data):
                clean, widths = _clean(model, tgt, mb, site_list)
                cu = cand[n] if cand[n] is not None else np.arange(widths[n])
                _check_cands(n, cu, widths[n])
                masks = {}
                for pn, pu in chosen_units.items():
                    m = torch.zeros(len(cu), widths[pn], dtype=torch.bool)
                    m[:, pu] = True
                    masks[pn] = m
                m = torch.zeros(len(cu), widths[n], dtype=torch.bool)
                m[torch.arange(len(cu)), torch.as_tensor(cu)] = True
                masks[n] = m
                drop = -_set_effects(model, tgt, mb, masks, clean, how, mean_vec, positions,
                                     _chunk(max_batch, mb.size, None)).numpy()
                totals = drop.sum(1) if totals is None else totals + drop.sum(1)
                count += mb.size
                cu_final = cu
            if totals is None or cu_final is None:
                raise NeuronscopeError("the data yielded no batch; give at least one example")
            mean = totals / count
            best = int(mean.argmax())
            chosen_units[n] = int(cu_final[best])
            influence.append(float(mean[best]))
            if progress is not None:
                progress(li + 1)
        return NeuronPath(list(names), [chosen_units[n] for n in names], influence)


def _check_cands(site: str, cu: np.ndarray, width: int) -> None:
    if cu.size == 0:
        raise NeuronscopeError(f"no candidate units for site {site!r}")
    bad = cu[(cu < 0) | (cu >= width)]
    if bad.size:
        raise NeuronscopeError(f"unit {int(bad[0])} is out of range for site {site!r} with {width} units; use indices 0..{width - 1}")


def plot_path(path: NeuronPath | Sequence[NeuronPath], file: str | Path, *, title: str | None = None) -> Path:
    """Draw influential path(s) across layers (matplotlib, Agg): x = layer (site), y = the
    chosen unit, each node annotated with the joint influence of the path up to it; a
    list of per-example paths is drawn together (translucent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [path] if isinstance(path, NeuronPath) else list(path)
    if not paths:
        raise NeuronscopeError("no path to plot")
    labels, glob = short_site_names(paths[0].sites)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 4.0))
    xs = np.arange(len(labels))
    alpha = 1.0 if len(paths) == 1 else max(0.15, 1.0 / np.sqrt(len(paths)))
    for p in paths:
        ax.plot(xs, p.units, "-o", alpha=alpha, color="tab:blue")
    if len(paths) == 1:
        for x, u, v in zip(xs, paths[0].units, paths[0].influence, strict=True):
            ax.annotate(f"{u}\nJI={v:.3g}", (x, u), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_xlabel(f"site ({glob})" if glob else "site")
    ax.set_ylabel("unit")
    ax.set_title(title or ("influential neuron path" if len(paths) == 1 else f"{len(paths)} influential neuron paths"))
    fig.tight_layout()
    out = Path(file)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- saving for the atlas


def _open(run: Any) -> Any:
    from neuronscope.store import Run, open_run

    return run if isinstance(run, Run) else open_run(Path(run))


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def save_ablation(run: Any, effects: AblationEffects, *, name: str | None = None,
                  attrs: Mapping[str, Any] | None = None) -> str:
    """Store ablation effects in ``run`` as ``extras/<name>`` (default ``ablate-<site>``; an
    earlier result of that name is replaced): arrays ``units``, ``effect``, ``effect_abs``
    (``effect[j] = mean F(sets[j] ablated) − F(x)``); attrs a table of the ablated sets and
    their effects and, for cumulative sets, a ``curves`` spec (effect against the number of
    ablated units) — the atlas shows both. Returns the extras name."""
    from neuronscope.analyses.extras import check_extra_name

    r = _open(run)
    name = check_extra_name(name or f"ablate-{effects.site}".replace("*", "all"))
    label = [f"top-{len(s)}" if effects.cumulative else str(s[0]) for s in effects.sets]
    meta: dict[str, Any] = {
        "title": f"{effects.how}-ablation of {effects.site}", "kind": "ablation", "site": effects.site,
        "how": effects.how, "cumulative": bool(effects.cumulative), "clean": float(effects.clean),
        "count": int(effects.count),
        "tables": [{"title": f"effect of ablating {'the top-k units' if effects.cumulative else 'each unit'} "
                             f"(mean F(ablated) − F(x); unablated mean {effects.clean:.4g})",
                    "columns": ["ablated", "last unit", "effect", "mean |effect|"],
                    "rows": [[lab, int(s[-1]), _num(e), _num(a)] for lab, s, e, a in
                             zip(label, effects.sets, effects.effect, effects.effect_abs, strict=True)]}],
        **dict(attrs or {}),
    }
    arrays = {"units": np.asarray(effects.units, dtype=np.int64),
              "effect": np.asarray(effects.effect, dtype=np.float64),
              "effect_abs": np.asarray(effects.effect_abs, dtype=np.float64)}
    if effects.cumulative:
        arrays["k"] = np.arange(1, len(effects.units) + 1, dtype=np.float64)
        meta["curves"] = [{"title": f"cumulative ablation of {effects.site}", "x": "k", "y": "effect",
                           "xlabel": "units ablated (top-k)", "ylabel": "mean effect on the target", "baseline": 0.0,
                           "baseline_label": "no effect"}]
    r.write_extras(name, arrays, meta)
    return name


def save_path(run: Any, path: NeuronPath, *, name: str | None = None, attrs: Mapping[str, Any] | None = None) -> str:
    """Store an influential neuron path in ``run`` as ``extras/<name>`` (default
    ``path-<site glob>``, e.g. ``path-encoder.layer.all.intermediate``, else
    ``path-<first site>-to-<last site>``; an earlier result of that name is replaced): arrays ``units`` and
    ``influence`` (the joint influence of the path up to each layer), the sites in attrs,
    a table (layer, site, unit, joint influence, gain over the previous layer) and a
    ``curves`` spec (joint influence against the layer) — the atlas's path page. Returns
    the extras name."""
    from neuronscope.analyses.extras import check_extra_name

    if not isinstance(path, NeuronPath):
        raise NeuronscopeError("save_path takes one NeuronPath (the dataset path); save per-example paths one by one")
    r = _open(run)
    short, glob = short_site_names(path.sites)
    default = f"path-{glob}" if glob else f"path-{path.sites[0]}-to-{path.sites[-1]}"
    name = check_extra_name(name or default.replace("*", "all"))
    infl = np.asarray(path.influence, dtype=np.float64)
    gain = np.diff(infl, prepend=0.0)
    meta = {
        "title": f"influential neuron path through {glob or ', '.join(path.sites)}", "kind": "neuron_path",
        "sites": list(path.sites), "path_units": [int(u) for u in path.units],
        "tables": [{"title": "the most influential neuron of each layer (joint influence of the path up to it: "
                             "F(x) − F(x; path ablated))",
                    "columns": ["layer", "site", "unit", "joint influence", "gain"], "link": {"site": "site", "unit": "unit"},
                    "rows": [[i, s, int(u), _num(v), _num(g)] for i, (s, u, v, g) in
                             enumerate(zip(path.sites, path.units, infl, gain, strict=True))]}],
        "curves": [{"title": "joint influence of the path up to each layer", "x": "layer", "y": "influence",
                    "xlabel": "layer (" + ", ".join(short) + ")", "ylabel": "joint influence", "baseline": 0.0,
                    "baseline_label": "no influence"}],
        **dict(attrs or {}),
    }
    if path.example is not None:
        meta["example"] = int(path.example)
    r.write_extras(name, {"units": np.asarray(path.units, dtype=np.int64), "influence": infl,
                          "layer": np.arange(len(infl), dtype=np.float64)}, meta)
    return name
