"""Steering with contrastive activation addition (Rimsky et al. 2023, "Steering Llama 2 via
Contrastive Activation Addition").

* :func:`steering_vector` — ``v = mean(y | positive) − mean(y | negative)`` of one site's
  activations over positive and negative examples, from streamed moments (one pass per
  set through :func:`neuronscope.recording.forward_batches` into
  :class:`~neuronscope.summaries.moments.Moments`; no activation is stored);
  :func:`steering_vector_from_labels` takes both sets from one labelled source (per-label
  moments, :class:`~neuronscope.summaries.groups.GroupMoments`);
  :func:`steering_vector_from_run` reads them from a run's ``label_moments`` with no pass.
* :func:`steering_sweep` — the target as a function of the coefficient ``c`` of
  ``y ← y + c·v`` (:func:`neuronscope.intervene.add`) at chosen positions; :func:`plot_sweep`;
  :func:`save_steering_curve` stores it in a run (the atlas draws it as a curve page).

Deactivating or activating whole neuron sets (e.g. one language's LAPE neurons across
layers) is :func:`neuronscope.intervene.ablate` / :func:`~neuronscope.intervene.clamp` with
a ``{site: units}`` mapping, measured with the same targets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.analyses.attribute import _eval, _iter_batches
from neuronscope.analyses.targets import Target, as_target
from neuronscope.errors import NeuronscopeError
from neuronscope.intervene import add
from neuronscope.summaries.groups import GroupMoments
from neuronscope.summaries.moments import Moments

__all__ = ["SteeringCurve", "SteeringVector", "plot_sweep", "save_steering_curve", "steering_sweep",
           "steering_vector", "steering_vector_from_labels", "steering_vector_from_run"]


@dataclass
class SteeringVector:
    """``vector = mean_pos − mean_neg`` (float64, one value per unit of ``site``), with the
    sample counts behind each mean and the positions averaged over."""

    site: str
    vector: np.ndarray
    n_positive: int
    n_negative: int
    positions: str

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "vector": self.vector.tolist(), "norm": self.norm,
                "n_positive": self.n_positive, "n_negative": self.n_negative, "positions": self.positions}


def _as_source(data: Any, tokenizer: Any, batch_size: int, max_tokens: int) -> Any:
    if hasattr(data, "batches"):
        return data
    if isinstance(data, list | tuple) and data and all(isinstance(t, str) for t in data):
        if tokenizer is None:
            raise NeuronscopeError("texts need tokenizer= to become model inputs")
        from neuronscope.sources.text import TextSource

        return TextSource(list(data), tokenizer, batch_size=batch_size, max_tokens=max_tokens)
    if isinstance(data, torch.Tensor | np.ndarray):
        from neuronscope.sources.tensors import TensorSource

        return TensorSource(data, batch_size=batch_size)
    raise NeuronscopeError(f"examples must be a source, a list of texts or a tensor, not {type(data).__name__}")


def _rows(samples: dict[str, np.ndarray], positions: str) -> np.ndarray | None:
    """Rows of a batch's samples to keep: all, or the last real token of each document."""
    if positions == "all":
        return None
    if positions != "last":
        raise NeuronscopeError(f"positions must be 'all' or 'last', not {positions!r}")
    if "doc" not in samples or "pos" not in samples:
        raise NeuronscopeError("positions='last' needs a text source (samples with doc and pos)")
    doc, pos = np.asarray(samples["doc"]), np.asarray(samples["pos"])
    last = np.full(doc.max() + 1 - doc.min(), -1)
    np.maximum.at(last, doc - doc.min(), pos)
    return pos == last[doc - doc.min()]


def _stream(model: nn.Module, source: Any, site: str, positions: str, conv: str,
            label: str | None = None, values: Sequence[str] = (), codes: Sequence[int] = (),
            progress: Callable[[int], None] | None = None) -> tuple[str, Moments | GroupMoments | None]:
    """One pass: the site's streamed moments over the kept rows (``Moments``), or with
    ``label`` the per-label moments of the label ``values`` (source codes ``codes``) — the
    same :class:`~neuronscope.summaries.groups.GroupMoments` that records a run's
    ``label_moments.<field>`` (so a steering vector equals the run's difference in means)."""
    from neuronscope.recording import forward_batches

    summary: Moments | GroupMoments | None = None
    name = site
    done = 0
    for batch, acts in forward_batches(model, source, site, conv=conv):
        done += batch.items
        if progress is not None:
            progress(done)
        if len(acts) != 1:
            raise NeuronscopeError(f"site pattern {site!r} matches {len(acts)} modules; steer one site at a time")
        name, a = next(iter(acts.items()))
        keep = _rows(batch.samples, positions)
        if summary is None:
            summary = Moments(a.shape[1]) if label is None else GroupMoments.by_label(a.shape[1], label, values)
        rows = np.arange(len(a)) if keep is None else np.flatnonzero(keep)
        samples = {"sample": rows.astype(np.int64)}
        if label is not None:
            lab = np.asarray(batch.samples[label])[rows]
            group = np.full(len(rows), -1, dtype=np.int64)
            for g, c in enumerate(codes):
                group[lab == c] = g
            samples[label] = group
        summary.update(a[rows], samples)
    return name, summary


def steering_vector(
    model: nn.Module,
    site: str,
    positive: Any,
    negative: Any,
    *,
    tokenizer: Any = None,
    positions: str = "all",
    conv: str = "positions",
    batch_size: int = 16,
    max_tokens: int = 128,
) -> SteeringVector:
    """The CAA steering vector of ``site``: ``v = mean_{pos} y − mean_{neg} y``.

    ``positive`` / ``negative`` are sources, lists of texts (with ``tokenizer``) or input
    tensors. ``positions``: ``"all"`` real tokens, or ``"last"`` (each document's last real
    token; CAA averages at the answer token). The means are streamed
    (:class:`~neuronscope.summaries.moments.Moments`), so any number of examples fits.
    """
    with _eval(model):
        name, mp = _stream(model, _as_source(positive, tokenizer, batch_size, max_tokens), site, positions, conv)
        _, mn = _stream(model, _as_source(negative, tokenizer, batch_size, max_tokens), site, positions, conv)
    if mp is None or mp.count == 0 or mn is None or mn.count == 0:
        raise NeuronscopeError("positive and negative examples must each give at least one sample")
    return SteeringVector(name, mp.mean - mn.mean, mp.count, mn.count, positions)


def steering_vector_from_labels(
    model: nn.Module,
    source: Any,
    site: str,
    label: str,
    positive: str,
    negative: str,
    *,
    positions: str = "all",
    conv: str = "positions",
    progress: Callable[[int], None] | None = None,
) -> SteeringVector:
    """The steering vector from one labelled source: positive examples are those whose
    ``label`` is ``positive``, negative those with ``negative`` (per-label streamed moments,
    one pass; ``progress(n)`` gets the items done)."""
    cats = getattr(source, "label_categories", {}).get(label)
    if not cats:
        raise NeuronscopeError(f"the source has no label {label!r}")
    for v in (positive, negative):
        if v not in cats:
            raise NeuronscopeError(f"label {label!r} has no value {v!r}; its values: {', '.join(cats)}")
    if positive == negative:
        raise NeuronscopeError("positive and negative label values must differ")
    with _eval(model):
        name, gm = _stream(model, source, site, positions, conv, label, [positive, negative],
                           [cats.index(positive), cats.index(negative)], progress)
    if gm is None:
        raise NeuronscopeError("the source yielded no batch; give a non-empty corpus")
    n = gm.n
    if n[0] == 0 or n[1] == 0:
        raise NeuronscopeError(f"label values {positive!r} and {negative!r} must each have at least one example")
    return SteeringVector(name, gm.mean[0] - gm.mean[1], int(n[0]), int(n[1]), positions)


def steering_vector_from_run(run_or_summaries: Any, site: str, label: str, positive: str,
                             negative: str) -> SteeringVector:
    """The steering vector of ``site`` from a run's per-label moments (``label_moments.<label>``,
    all positions), with no pass over the data: ``mean(y | positive) − mean(y | negative)``,
    the difference-in-means direction of :func:`neuronscope.analyses.locate.pair_direction`."""
    from neuronscope.analyses.locate import label_summaries, pair_direction

    if positive == negative:
        raise NeuronscopeError("positive and negative label values must differ")
    (ls,) = label_summaries(run_or_summaries, label, site)
    vec = pair_direction(ls, positive, negative)
    return SteeringVector(ls.site, vec, int(ls.n[ls.labels.index(positive)]), int(ls.n[ls.labels.index(negative)]),
                          "all")


@dataclass
class SteeringCurve:
    """Target versus steering coefficient: ``mean[k]`` / ``std[k]`` of the target over the
    data with ``y ← y + coefficients[k]·v``; ``clean`` the unsteered mean."""

    site: str
    coefficients: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    clean: float
    count: int
    positions: Any
    target: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "coefficients": self.coefficients.tolist(), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "clean": self.clean, "count": self.count,
                "positions": self.positions if isinstance(self.positions, str | int) else str(self.positions),
                "target": self.target}


def steering_sweep(
    model: nn.Module,
    site: str,
    vector: Any,
    coefficients: Sequence[float],
    target: Target | Callable[..., torch.Tensor],
    data: Any,
    *,
    positions: Any = "all",
    progress: Callable[[int], None] | None = None,
) -> SteeringCurve:
    """Measure ``target`` over ``data`` with ``coefficient × vector`` added to ``site`` for
    every coefficient (``vector``: a :class:`SteeringVector`, an array over the site's
    units, or ``{site: vector}``). Streamed: sums of the target and its square per
    coefficient."""
    tgt = as_target(target)
    tgt.check(model)
    vec = vector.vector if isinstance(vector, SteeringVector) else vector
    coefs = np.asarray(list(coefficients), dtype=np.float64)
    if coefs.size == 0:
        raise NeuronscopeError("give at least one coefficient")
    s1 = np.zeros(coefs.size)
    s2 = np.zeros(coefs.size)
    clean_sum = 0.0
    count = 0
    name = site
    with _eval(model):
        for mb, _raw in _iter_batches(data):
            tgt.prepare(model, mb)
            with torch.inference_mode(), tgt.attach(model):
                clean_sum += float(tgt(mb.run(model), mb).double().sum())
            for i, c in enumerate(coefs):
                iv = add(model, site, vec, coefficient=float(c), positions=positions)
                name = next(iter(iv.targets))
                with torch.inference_mode(), iv, tgt.attach(model):
                    f = tgt(mb.run(model), mb).double()
                s1[i] += float(f.sum())
                s2[i] += float((f * f).sum())
            count += mb.size
            if progress is not None:
                progress(count)
    if count == 0:
        raise NeuronscopeError("the data yielded no batch; give at least one example")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return SteeringCurve(name, coefs, mean, std, clean_sum / count, count, positions, tgt.describe())


def plot_sweep(curve: SteeringCurve, file: str | Path, *, title: str | None = None) -> Path:
    """Plot a steering curve (mean ± std of the target against the coefficient; dashed:
    the unsteered mean) to ``file`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    ax.plot(curve.coefficients, curve.mean, "-o", color="tab:blue", label="steered")
    ax.fill_between(curve.coefficients, curve.mean - curve.std, curve.mean + curve.std, alpha=0.2, color="tab:blue")
    ax.axhline(curve.clean, ls="--", color="gray", label="unsteered")
    ax.set_xlabel("steering coefficient")
    ax.set_ylabel(str(curve.target.get("target", "target")))
    ax.set_title(title or f"steering {curve.site}")
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(file)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def save_steering_curve(run: Any, curve: SteeringCurve, *, name: str | None = None, title: str | None = None,
                        attrs: dict[str, Any] | None = None) -> str:
    """Store a steering curve in ``run`` as ``extras/<name>`` (default ``steer-<site>``; an
    earlier result of that name is replaced): arrays ``coefficients``, ``mean``, ``std``;
    attrs the site, target, unsteered mean (``clean``), example count and a ``curves`` spec
    (x = coefficient, y = mean target ± std, baseline = unsteered mean) that the atlas draws
    as a line plot. Returns the extras name."""
    from neuronscope.analyses.extras import check_extra_name
    from neuronscope.store import Run, open_run

    r = run if isinstance(run, Run) else open_run(Path(run))
    name = check_extra_name(name or f"steer-{curve.site}".replace("*", "all"))
    ylabel = f"mean {curve.target.get('target', 'target')}"
    meta = {
        "title": title or f"steering {curve.site}", "kind": "steering_curve", "site": curve.site,
        "target": str(curve.target.get("target", "")), "clean": float(curve.clean), "count": int(curve.count),
        "positions": curve.positions if isinstance(curve.positions, str | int) else str(curve.positions),
        "curves": [{"title": title or f"steering {curve.site}", "x": "coefficients", "y": "mean", "err": "std",
                    "xlabel": "steering coefficient c (y + c·v)", "ylabel": ylabel, "baseline": float(curve.clean),
                    "baseline_label": "unsteered"}],
        **dict(attrs or {}),
    }
    r.write_extras(name, {"coefficients": np.asarray(curve.coefficients, dtype=np.float64),
                          "mean": np.asarray(curve.mean, dtype=np.float64),
                          "std": np.asarray(curve.std, dtype=np.float64)}, meta)
    return name
