"""Targets: what "the output" of a model is, for attribution, ablation and steering.

A target is a callable ``target(outputs, batch) -> Tensor[batch]`` giving one number per
example from the model's outputs (and, where needed, the batch's inputs: the attention
mask, the token ids). Every method in :mod:`neuronscope.analyses.attribute` and
:mod:`neuronscope.analyses.steer` takes one:

* :func:`logit` / :func:`logprob` — the logit / log-probability of a token at a position
  (default: the last real token, i.e. the next-token prediction of a causal LM);
* :func:`next_token_loss` — per-example mean cross-entropy of predicting token ``t+1`` from
  position ``t`` over the real tokens;
* :func:`embedding_cosine` — cosine of the sentence embedding (mean of the last hidden
  state over real tokens, as sentence-transformers / e5 pool) to a reference: the clean
  model's embedding of the same input (``reference="clean"``, computed before any
  intervention) or a given vector;
* :func:`embedding_readout` — a fixed linear readout ``w·e + b`` of that embedding;
* :func:`probe_score` — a fitted linear probe ``w·y + b`` on a site's activations (mean over
  real tokens, or the last token), e.g. from the locate analyses;
* :func:`output_unit` — one output unit of a tensor model (``outputs[:, index]``).

Targets that need an output vocabulary (``logit``, ``logprob``, ``next_token_loss``) check
the model first and raise a one-line error on a model without one. A model has a
vocabulary when ``model.get_output_embeddings()`` is not None (Hugging Face ``*ForCausalLM``
/ ``*ForMaskedLM``) or it declares an integer ``vocab_size`` attribute and returns logits
``[batch, seq, vocab]`` (a tensor or an object with ``.logits``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.torch_sites import _first_tensor
from neuronscope.sources.torch_sites import sites as resolve_sites

__all__ = [
    "ModelBatch",
    "Target",
    "as_model_batch",
    "as_target",
    "embedding_cosine",
    "embedding_readout",
    "has_vocab",
    "logit",
    "logprob",
    "next_token_loss",
    "output_unit",
    "parse_target",
    "probe_score",
]


# --------------------------------------------------------------------------- batches


def _repeat(t: Any, k: int) -> Any:
    if isinstance(t, torch.Tensor) and t.ndim >= 1:
        return t.repeat(k, *([1] * (t.ndim - 1)))
    return t


@dataclass
class ModelBatch:
    """One batch of model inputs: ``inputs`` (keyword tensors for ``model(**inputs)`` or one
    tensor for ``model(inputs)``), the attention ``mask`` (``[batch, seq]`` or None) and
    per-example ``reference`` tensors a target prepared (e.g. the clean embedding)."""

    inputs: dict[str, torch.Tensor] | torch.Tensor
    mask: torch.Tensor | None = None
    reference: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        if isinstance(self.inputs, torch.Tensor):
            return int(self.inputs.shape[0])
        return int(next(v for v in self.inputs.values() if isinstance(v, torch.Tensor)).shape[0])

    def expand(self, k: int) -> ModelBatch:
        """``k`` copies of the batch, copy-major (item ``c·B + i`` is copy ``c`` of ``i``)."""
        if k == 1:
            return self
        inputs = _repeat(self.inputs, k) if isinstance(self.inputs, torch.Tensor) else {
            n: _repeat(v, k) for n, v in self.inputs.items()}
        return ModelBatch(inputs, _repeat(self.mask, k), {n: _repeat(v, k) for n, v in self.reference.items()})

    def run(self, model: nn.Module) -> Any:
        """``model(**inputs)`` or ``model(inputs)``."""
        if isinstance(self.inputs, torch.Tensor):
            return model(self.inputs)
        return model(**self.inputs)


def as_model_batch(data: Any) -> ModelBatch:
    """A :class:`ModelBatch` from a source's ``Batch``, a dict of keyword tensors (a
    tokenizer's output) or one input tensor."""
    if isinstance(data, ModelBatch):
        return data
    if hasattr(data, "inputs") and hasattr(data, "samples"):
        inputs = data.inputs
        mask = data.mask
        if isinstance(inputs, Mapping):
            inputs = dict(inputs)
            if "attention_mask" in inputs and mask is None:
                mask = inputs["attention_mask"]
        return ModelBatch(inputs, None if mask is None else mask.to(torch.bool))
    if isinstance(data, Mapping):
        inputs = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if not inputs:
            raise NeuronscopeError("model inputs hold no tensors; pass a tokenizer's output (return_tensors='pt') or a tensor")
        mask = inputs.get("attention_mask")
        return ModelBatch(inputs, None if mask is None else mask.to(torch.bool))
    if isinstance(data, torch.Tensor):
        return ModelBatch(data, None)
    if isinstance(data, np.ndarray):
        return ModelBatch(torch.as_tensor(data), None)
    raise NeuronscopeError(f"cannot use {type(data).__name__} as model inputs; pass a source batch, a dict of tensors or a tensor")


# --------------------------------------------------------------------------- helpers


def has_vocab(model: nn.Module) -> bool:
    """True when the model has an output vocabulary (see the module docstring)."""
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            if get() is not None:
                return True
        except (NotImplementedError, AttributeError):
            pass
    return isinstance(getattr(model, "vocab_size", None), int)


def _logits(outputs: Any, what: str) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, torch.Tensor):
        logits = outputs
    if logits is None and isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], torch.Tensor):
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise NeuronscopeError(f"target {what} needs logits [batch, seq, vocab] from the model; it returned {type(outputs).__name__}")
    return logits


def _hidden(outputs: Any, what: str) -> torch.Tensor:
    h = getattr(outputs, "last_hidden_state", None)
    if h is None and getattr(outputs, "hidden_states", None) is not None:
        h = outputs.hidden_states[-1]
    if h is None and isinstance(outputs, torch.Tensor):
        h = outputs
    if h is None and isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], torch.Tensor):
        h = outputs[0]
    if not isinstance(h, torch.Tensor) or h.ndim != 3:
        raise NeuronscopeError(f"target {what} needs the last hidden state [batch, seq, hidden]; the model returned {type(outputs).__name__} (use a base model such as minilm)")
    return h


def mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embedding: mean of ``h`` ``[b, s, d]`` over real tokens (``mask``)."""
    if mask is None:
        return h.mean(dim=1)
    m = mask.to(h.dtype)[:, :, None]
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def _positions(batch: ModelBatch, seq: int, position: str | int, device: torch.device) -> torch.Tensor:
    from neuronscope.intervene import last_positions

    n = batch.size
    if position == "last":
        return last_positions(batch.mask, seq, n, device)
    if isinstance(position, int) and -seq <= position < seq:
        return torch.full((n,), position % seq, dtype=torch.long, device=device)
    raise NeuronscopeError(f"position must be 'last' or an index into {seq} positions, not {position!r}")


def _token_id(token: int | str, tokenizer: Any) -> int:
    if isinstance(token, int | np.integer):
        return int(token)
    if tokenizer is None:
        raise NeuronscopeError(f"token {token!r} is a string; pass tokenizer= or the token id")
    if hasattr(tokenizer, "encode"):
        try:
            ids = tokenizer.encode(token, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(token)
        if len(ids) != 1:
            raise NeuronscopeError(f"token {token!r} is {len(ids)} tokens for this tokenizer; give a single token (or its id)")
        return int(ids[0])
    if isinstance(tokenizer, Mapping):
        if token not in tokenizer:
            raise NeuronscopeError(f"token {token!r} is not in the vocabulary")
        return int(tokenizer[token])
    vocab = list(tokenizer)
    if token not in vocab:
        raise NeuronscopeError(f"token {token!r} is not in the vocabulary")
    return vocab.index(token)


# --------------------------------------------------------------------------- targets


class Target(abc.ABC):
    """Base of every target: ``target(outputs, batch) -> Tensor[batch]``.

    ``check(model)`` validates the model (vocabulary), ``prepare(model, batch)`` computes
    per-example references before any intervention, ``attach(model)`` installs what the
    target reads during the forward pass (a probe's site capture)."""

    name = "target"
    needs_vocab = False

    def check(self, model: nn.Module) -> None:
        if self.needs_vocab and not has_vocab(model):
            raise NeuronscopeError(
                f"target {self.name} needs a model with an output vocabulary; {type(model).__name__} has none "
                "(use embedding_cosine, embedding_readout, probe_score or output_unit)"
            )

    def prepare(self, model: nn.Module, batch: ModelBatch) -> None:  # noqa: B027 - optional hook
        """Compute per-example references into ``batch.reference`` (default: nothing)."""

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        yield

    @abc.abstractmethod
    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        """The target's value per example, shape ``(batch,)``, differentiable."""

    def describe(self) -> dict[str, Any]:
        return {"target": self.name}


class _Logit(Target):
    needs_vocab = True

    def __init__(self, token: int | str, position: str | int, tokenizer: Any, log: bool):
        self.token = token
        self.token_id = _token_id(token, tokenizer)
        self.position = position
        self.log = log
        self.name = f"{'logprob' if log else 'logit'}({token!r})"

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        logits = _logits(outputs, self.name)
        if not 0 <= self.token_id < logits.shape[-1]:
            raise NeuronscopeError(f"token id {self.token_id} is outside the model's vocabulary of {logits.shape[-1]}")
        pos = _positions(batch, logits.shape[1], self.position, logits.device)
        row = logits[torch.arange(logits.shape[0], device=logits.device), pos]
        if self.log:
            row = torch.log_softmax(row, dim=-1)
        return row[:, self.token_id]

    def describe(self) -> dict[str, Any]:
        return {"target": "logprob" if self.log else "logit", "token": self.token, "token_id": self.token_id,
                "position": self.position}


class _NextTokenLoss(Target):
    name = "next_token_loss()"
    needs_vocab = True

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        logits = _logits(outputs, self.name)
        ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
        if ids is None:
            raise NeuronscopeError("next_token_loss needs input_ids among the model inputs")
        mask = batch.mask if batch.mask is not None else torch.ones_like(ids, dtype=torch.bool)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0]
        valid = (mask[:, 1:] & mask[:, :-1]).to(nll.dtype)
        return (nll * valid).sum(1) / valid.sum(1).clamp(min=1.0)

    def describe(self) -> dict[str, Any]:
        return {"target": "next_token_loss"}


class _EmbeddingCosine(Target):
    def __init__(self, reference: str | Any):
        self.reference = reference
        self.name = "embedding_cosine()"
        if not (isinstance(reference, str) and reference == "clean") and isinstance(reference, str):
            raise NeuronscopeError(f"reference must be 'clean' or an embedding vector, not {reference!r}")

    def prepare(self, model: nn.Module, batch: ModelBatch) -> None:
        if isinstance(self.reference, str):
            with torch.no_grad():
                batch.reference["embedding"] = mean_pool(_hidden(batch.run(model), self.name), batch.mask).detach()

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        e = mean_pool(_hidden(outputs, self.name), batch.mask)
        if isinstance(self.reference, str):
            if "embedding" not in batch.reference:
                raise NeuronscopeError("embedding_cosine(reference='clean') was not prepared on this batch; call target.prepare(model, batch) first")
            ref = batch.reference["embedding"]
        else:
            ref = torch.as_tensor(self.reference, dtype=e.dtype, device=e.device)
            ref = ref.reshape(1, -1) if ref.ndim == 1 else ref
        return torch.nn.functional.cosine_similarity(e, ref.to(e.dtype), dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"target": "embedding_cosine", "reference": self.reference if isinstance(self.reference, str) else "vector"}


class _EmbeddingReadout(Target):
    def __init__(self, weights: Any, bias: float):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1))
        self.bias = float(bias)
        self.name = "embedding_readout()"

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        e = mean_pool(_hidden(outputs, self.name), batch.mask)
        if e.shape[-1] != self.weights.numel():
            raise NeuronscopeError(f"readout has {self.weights.numel()} weights; the embedding has {e.shape[-1]} dimensions")
        # a row-wise reduction (not a GEMV): each example's value is independent of the batch size
        return (e * self.weights.to(e.dtype)).sum(-1) + self.bias

    def describe(self) -> dict[str, Any]:
        return {"target": "embedding_readout", "dims": int(self.weights.numel()), "bias": self.bias}


class _ProbeScore(Target):
    def __init__(self, weights: Any, bias: Any, site: str, reduce: str, cls: int | None):
        w = np.asarray(weights, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64).reshape(-1)
        if w.ndim == 2:
            row = 0 if w.shape[0] == 1 and cls is None else cls
            if row is None:
                raise NeuronscopeError(f"probe weights have {w.shape[0]} classes; pass cls= to choose one")
            w, b = w[row], b[row] if b.size > 1 else b
        if reduce not in ("mean", "last"):
            raise NeuronscopeError(f"reduce must be 'mean' or 'last', not {reduce!r}")
        self.weights = torch.as_tensor(w.reshape(-1))
        self.bias = float(b.reshape(-1)[0]) if b.size else 0.0
        self.site = site
        self.reduce = reduce
        self.cls = cls
        self.name = f"probe_score({site!r})"
        self._out: torch.Tensor | None = None

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        found = resolve_sites(model, self.site)
        if len(found) != 1:
            raise NeuronscopeError(f"probe site {self.site!r} matches {len(found)} modules; give one")

        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            self._out = _first_tensor(o)

        h = found[0].module.register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()
            self._out = None

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        y = self._out
        if y is None:
            raise NeuronscopeError(f"probe site {self.site!r} did not run (use the target inside target.attach(model))")
        ax = 1 if y.ndim >= 4 else y.ndim - 1
        if y.shape[ax] != self.weights.numel():
            raise NeuronscopeError(f"probe has {self.weights.numel()} weights; site {self.site!r} has {y.shape[ax]} units")
        w = self.weights.to(y.dtype)
        if y.ndim == 2:
            s = (y * w).sum(-1)
        elif y.ndim == 3:
            per = (y * w).sum(-1)  # [b, s]
            if self.reduce == "last":
                pos = _positions(batch, y.shape[1], "last", y.device)
                s = per[torch.arange(y.shape[0], device=y.device), pos]
            elif batch.mask is not None:
                m = batch.mask.to(per.dtype)
                s = (per * m).sum(1) / m.sum(1).clamp(min=1.0)
            else:
                s = per.mean(1)
        else:
            s = torch.einsum("bc...,c->b...", y, w).flatten(1).mean(1)
        return s + self.bias

    def describe(self) -> dict[str, Any]:
        return {"target": "probe_score", "site": self.site, "reduce": self.reduce, "units": int(self.weights.numel()),
                "bias": self.bias, "cls": self.cls}


class _OutputUnit(Target):
    def __init__(self, index: int):
        self.index = int(index)
        self.name = f"output_unit({self.index})"

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        y = getattr(outputs, "logits", outputs)
        if isinstance(y, tuple | list):
            y = y[0]
        if not isinstance(y, torch.Tensor) or y.ndim != 2:
            raise NeuronscopeError(f"target {self.name} needs a [batch, outputs] model output, not {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        if not -y.shape[1] <= self.index < y.shape[1]:
            raise NeuronscopeError(f"output unit {self.index} is out of range for {y.shape[1]} outputs")
        return y[:, self.index]

    def describe(self) -> dict[str, Any]:
        return {"target": "output_unit", "index": self.index}


class _Function(Target):
    def __init__(self, fn: Callable[[Any, ModelBatch], torch.Tensor], name: str):
        self.fn = fn
        self.name = name

    def __call__(self, outputs: Any, batch: ModelBatch) -> torch.Tensor:
        return self.fn(outputs, batch)


# --------------------------------------------------------------------------- constructors


def logit(token: int | str, *, position: str | int = "last", tokenizer: Any = None) -> Target:
    """The logit of ``token`` (an id, or a string with ``tokenizer``) at ``position``
    (``"last"``: the last real token — the next-token prediction of a causal LM)."""
    return _Logit(token, position, tokenizer, log=False)


def logprob(token: int | str, *, position: str | int = "last", tokenizer: Any = None) -> Target:
    """``log softmax(logits[position])[token]``."""
    return _Logit(token, position, tokenizer, log=True)


def next_token_loss() -> Target:
    """Per example: ``mean_t −log p(x_{t+1} | x_{≤t})`` over positions whose token and next
    token are real (attention mask)."""
    return _NextTokenLoss()


def embedding_cosine(reference: str | Any = "clean") -> Target:
    """``cos(e(x), e_ref)`` with ``e`` the mean-pooled last hidden state over real tokens
    (sentence-transformers / e5 pooling). ``reference="clean"``: the unmodified model's
    embedding of the same input (computed in ``prepare`` before interventions); or a
    vector (``[hidden]`` or ``[batch, hidden]``)."""
    return _EmbeddingCosine(reference)


def embedding_readout(weights: Any, bias: float = 0.0) -> Target:
    """A fixed linear readout ``w · e(x) + b`` of the mean-pooled sentence embedding."""
    return _EmbeddingReadout(weights, bias)


def probe_score(weights: Any, bias: Any = 0.0, site: str = "", *, reduce: str = "mean", cls: int | None = None) -> Target:
    """A fitted linear probe on a site: ``w · y + b`` with ``y`` the site's activations
    (``[b, u]``; ``[b, s, u]`` reduced by the mean over real tokens or the ``last`` token;
    conv channels averaged over space). ``weights`` ``[u]`` or scikit-learn's ``coef_``
    ``[classes, u]`` with ``cls`` choosing the row (the decision function, not a probability)."""
    if not site:
        raise NeuronscopeError("probe_score needs site= (the module glob the probe reads)")
    return _ProbeScore(weights, bias, site, reduce, cls)


def output_unit(index: int) -> Target:
    """Output unit ``index`` of a model returning ``[batch, outputs]`` (a classifier's logit)."""
    return _OutputUnit(index)


def as_target(target: Any) -> Target:
    """A :class:`Target` as is, or a plain callable ``f(outputs, batch) -> Tensor[batch]``."""
    if isinstance(target, Target):
        return target
    if callable(target):
        return _Function(target, getattr(target, "__name__", "custom"))
    raise NeuronscopeError(f"a target is a Target or a callable f(outputs, batch), not {type(target).__name__}")


#: The target specs the command line accepts.
TARGET_SPECS = ("cosine", "loss", "logit:TOKEN", "logprob:TOKEN", "unit:INDEX", "probe:FILE.npz")


def parse_target(spec: str, tokenizer: Any = None) -> Target:
    """A target from a command-line spec: ``cosine`` (embedding cosine to the clean model),
    ``loss`` (next-token loss), ``logit:TOKEN`` / ``logprob:TOKEN`` (a token string, or
    ``#ID``), ``unit:INDEX`` (output unit), ``probe:FILE.npz`` (arrays ``weights``, ``bias``
    and ``site``, optional ``reduce``)."""
    kind, _, arg = spec.partition(":")
    if kind == "cosine" and not arg:
        return embedding_cosine()
    if kind == "loss" and not arg:
        return next_token_loss()
    if kind in ("logit", "logprob") and arg:
        tok: int | str = int(arg[1:]) if arg.startswith("#") and arg[1:].isdigit() else arg
        return (logit if kind == "logit" else logprob)(tok, tokenizer=tokenizer)
    if kind == "unit" and arg.lstrip("-").isdigit():
        return output_unit(int(arg))
    if kind == "probe" and arg:
        path = Path(arg)
        if not path.exists():
            raise NeuronscopeError(f"probe file {path} does not exist; save weights, bias and site with numpy.savez")
        with np.load(path, allow_pickle=False) as z:
            missing = {"weights", "site"} - set(z.files)
            if missing:
                raise NeuronscopeError(f"probe file {path} lacks {', '.join(sorted(missing))}; it needs weights, bias and site")
            return probe_score(z["weights"], z["bias"] if "bias" in z.files else 0.0, str(z["site"]),
                               reduce=str(z["reduce"]) if "reduce" in z.files else "mean")
    raise NeuronscopeError(f"unknown target {spec!r}; use one of {', '.join(TARGET_SPECS)}")
