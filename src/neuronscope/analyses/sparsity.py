"""Activation sparsity put to work: MoEfication, activation predictors and a sparse FFN on CPU.

* :func:`find_ffns` — the FFN blocks (``Linear → activation → Linear``) behind a site glob:
  BERT's ``encoder.layer.*.intermediate`` (+ the sibling ``output.dense``), or a module whose
  children are ``fc_in, act, fc_out`` (``blocks.*.mlp`` or its ``act``, as in the tiny LM).
  Anything else is refused with an error naming what is expected; every block is checked
  numerically against the model's own modules.
* :func:`split_experts` — MoEfication's split (Zhang et al. 2022, "MoEfication: Transformer
  Feed-forward Layers are Mixtures of Experts"): balanced k-means of the neurons into ``E``
  experts of equal size, by their input-weight vectors (``W_in`` rows, the paper's parameter
  clustering) or by their co-activation profiles (rows of a co-activation graph).
* :func:`collect_ffn_data` — FFN inputs and activations of a model over a source (the training
  data of routers and predictors; a bounded number of tokens).
* :class:`Router` / :func:`train_router` — MoEfication's MLP router on the FFN input, trained to
  rank the experts a token needs; :func:`router_recall`.
* :class:`ActivationPredictor` / :func:`train_predictor` / :func:`evaluate_predictor` — a
  low-rank predictor of which neurons fire (Deja Vu, Liu et al. 2023; PowerInfer, Song et al.
  2023) with the hot/cold split of :func:`hot_cold`; precision / recall of the active set.
* :class:`SparseFFN` and :func:`sparsify` — the drop-in module swap that computes only the
  selected experts (per-expert dense GEMMs over the tokens routed to each) or the predicted
  neurons (one GEMM over the gathered union); ``handle.restore()`` puts the dense modules back.
* :func:`moefy` / :class:`MoEfication` — the whole recipe for a model; :func:`moefication_curve`
  — quality kept against the fraction of FFN neurons used, over ``E`` and top-k;
  :func:`embedding_quality`, :func:`lm_quality` — the quality measures (MiniLM's embedding
  cosine and retrieval, the causal LM's perplexity); :func:`time_ffn`, :func:`time_model` —
  measured CPU speed-ups.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neuronscope.errors import NeuronscopeError

__all__ = [
    "FFN",
    "ActivationPredictor",
    "Experts",
    "FFNData",
    "MoEfication",
    "Router",
    "SparseFFN",
    "Sparsified",
    "collect_ffn_data",
    "embedding_quality",
    "evaluate_predictor",
    "expert_scores",
    "find_ffns",
    "hot_cold",
    "lm_quality",
    "moefication_curve",
    "moefy",
    "router_recall",
    "sparsify",
    "split_experts",
    "time_ffn",
    "time_model",
    "train_predictor",
    "train_router",
]

_FFN_HINT = ("a Linear → activation → Linear block: BERT's encoder.layer.N.intermediate (with the "
             "layer's output.dense), or a module with children fc_in (Linear), an activation and fc_out "
             "(Linear) such as the tiny LM's blocks.N.mlp / blocks.N.mlp.act")


# --------------------------------------------------------------------------- FFN blocks


@dataclass
class FFN:
    """One FFN block ``y = W_out act(W_in x + b_in) + b_out`` of a model.

    ``name`` is the neuron site (whose output are the ``d_ff`` neurons); ``kind`` is ``"bert"``
    (``owner.intermediate`` and ``owner.output.dense``) or ``"sequential"`` (``owner`` is the
    block ``fc_out(act(fc_in(x)))``); ``owner`` and ``attr`` locate the module a swap replaces.
    """

    name: str
    w_in: nn.Linear
    act: nn.Module
    w_out: nn.Linear
    kind: str
    owner: nn.Module
    attr: str
    parent: nn.Module

    @property
    def d_model(self) -> int:
        return int(self.w_in.in_features)

    @property
    def d_ff(self) -> int:
        return int(self.w_in.out_features)

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN neurons ``act(W_in x + b_in)``."""
        return self.act(self.w_in(x))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense FFN output ``W_out act(W_in x + b_in) + b_out``."""
        return self.w_out(self.neurons(x))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN output as the model's own modules compute it (for the structure check)."""
        if self.kind == "bert":
            return self.w_out(self.owner(x))
        return self.owner(x)


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name] if name else model


def _is_act(m: nn.Module) -> bool:
    return not isinstance(m, nn.Linear | nn.Dropout) and not any(True for _ in m.parameters())


def _sequential_ffn(name: str, block: nn.Module, block_name: str, model: nn.Module) -> FFN | None:
    kids = [(n, c) for n, c in block.named_children() if not isinstance(c, nn.Dropout)]
    if len(kids) != 3:
        return None
    (_, a), (_, b), (_, c) = kids
    if not (isinstance(a, nn.Linear) and _is_act(b) and isinstance(c, nn.Linear)):
        return None
    if c.in_features != a.out_features:
        return None
    parent_name, _, attr = block_name.rpartition(".")
    return FFN(name, a, b, c, "sequential", block, attr, _module(model, parent_name))


def find_ffns(model: nn.Module, site: str | Sequence[str]) -> list[FFN]:
    """The FFN blocks behind the sites matched by ``site`` (module globs), in module order.

    A site is accepted when it is BERT's intermediate module (``dense`` + ``intermediate_act_fn``
    with a sibling ``output.dense`` Linear), an activation module whose parent holds exactly
    ``Linear, activation, Linear`` (dropout aside), or such a parent itself. Each block is then
    checked on a random input: ``W_out act(W_in x)`` must equal what the model's modules
    compute, else the site is refused. Errors name what is expected.
    """
    from neuronscope.sources.torch_sites import sites as resolve_sites

    out: list[FFN] = []
    for s in resolve_sites(model, list(site) if not isinstance(site, str) else site):
        m, name = s.module, s.name
        parent_name = name.rpartition(".")[0]
        ffn: FFN | None = None
        dense = getattr(m, "dense", None)
        act = getattr(m, "intermediate_act_fn", None)
        if isinstance(dense, nn.Linear) and act is not None:
            layer = _module(model, parent_name)
            o = getattr(getattr(layer, "output", None), "dense", None)
            if isinstance(o, nn.Linear) and o.in_features == dense.out_features:
                ffn = FFN(name, dense, act if isinstance(act, nn.Module) else _Fn(act), o, "bert", m,
                          name.rpartition(".")[2], layer)
        elif _is_act(m) and parent_name:
            ffn = _sequential_ffn(name, _module(model, parent_name), parent_name, model)
        elif not isinstance(m, nn.Linear):
            ffn = _sequential_ffn(name, m, name, model)
            if ffn is not None:
                ffn.name = name
        if ffn is None:
            raise NeuronscopeError(f"site {name!r} ({type(m).__name__}) is not an FFN; expected {_FFN_HINT}")
        _check_ffn(ffn)
        out.append(ffn)
    return out


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@torch.no_grad()
def _check_ffn(ffn: FFN) -> None:
    gen = torch.Generator().manual_seed(0)
    w = ffn.w_in.weight
    x = torch.randn(3, 5, ffn.d_model, generator=gen, dtype=w.dtype).to(w.device)
    was = ffn.owner.training
    ffn.owner.eval()
    try:
        ref = ffn.reference(x)
    finally:
        ffn.owner.train(was)
    got = ffn.dense(x)
    if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-4, atol=1e-5):
        raise NeuronscopeError(
            f"site {ffn.name!r} does not compute W_out act(W_in x) (checked on a random input); expected {_FFN_HINT}"
        )


# --------------------------------------------------------------------------- experts


@dataclass
class Experts:
    """A split of an FFN's ``d_ff`` neurons into ``n_experts`` experts: ``labels[u]`` is neuron
    ``u``'s expert; sizes differ by at most one."""

    labels: np.ndarray
    n_experts: int
    method: str = "weights"

    def members(self, e: int) -> np.ndarray:
        return np.flatnonzero(self.labels == e)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_experts)

    @classmethod
    def contiguous(cls, d_ff: int, n_experts: int) -> Experts:
        """Experts of consecutive neurons (a baseline split)."""
        _check_experts(d_ff, n_experts)
        return cls(np.arange(d_ff) * n_experts // d_ff, n_experts, "contiguous")


def _check_experts(d_ff: int, n_experts: int) -> None:
    if not isinstance(n_experts, int | np.integer) or n_experts < 1:
        raise NeuronscopeError(f"the number of experts must be a positive integer, not {n_experts!r}")
    if n_experts > d_ff:
        raise NeuronscopeError(f"{n_experts} experts for an FFN of {d_ff} neurons: choose at most {d_ff} experts")


def balanced_kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 10) -> np.ndarray:
    """Balanced k-means: clusters of sizes ``⌊n/k⌋`` or ``⌈n/k⌉`` minimising the squared
    distances to the centroids. Each iteration assigns exactly (a linear assignment of points
    to ``⌈n/k⌉``-fold replicated centroid slots, ``scipy.optimize.linear_sum_assignment``) and
    moves the centroids to the means; stops when the assignment repeats."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import kmeans_plusplus

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    _check_experts(n, k)
    caps = np.full(k, n // k)
    caps[: n % k] += 1
    slot_of = np.repeat(np.arange(k), caps)
    centers, _ = kmeans_plusplus(x, k, random_state=seed)
    labels = np.full(n, -1)
    for _ in range(iters):
        d2 = (x**2).sum(1)[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
        rows, cols = linear_sum_assignment(d2[:, slot_of])
        new = np.empty(n, dtype=np.int64)
        new[rows] = slot_of[cols]
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            centers[c] = x[labels == c].mean(0)
    return labels


def split_experts(ffn: FFN | np.ndarray, n_experts: int, *, method: str = "weights",
                  graph: np.ndarray | None = None, seed: int = 0, iters: int = 10) -> Experts:
    """Split an FFN's neurons into ``n_experts`` balanced experts (MoEfication, Zhang et al. 2022).

    * ``method="weights"`` — balanced k-means of the L2-normalised input-weight vectors (rows
      of ``W_in``; the paper's parameter clustering split);
    * ``method="cofiring"`` — balanced k-means of the neurons' co-activation profiles: the rows
      of ``graph`` (a units × units co-activation graph, e.g. ``coactivation_graph``),
      L2-normalised, so neurons that fire with the same partners share an expert;
    * ``method="contiguous"`` — consecutive neurons (a baseline).

    ``ffn`` may be an :class:`FFN` or its ``W_in`` weight matrix (``d_ff × d_model``).
    """
    w_in = ffn.w_in.weight.detach().cpu().numpy() if isinstance(ffn, FFN) else np.asarray(ffn)
    d_ff = w_in.shape[0]
    _check_experts(d_ff, n_experts)
    if method == "contiguous":
        return Experts.contiguous(d_ff, int(n_experts))
    if method == "weights":
        feats = w_in
    elif method == "cofiring":
        if graph is None:
            raise NeuronscopeError("method='cofiring' needs graph= (a co-activation graph of the FFN's neurons)")
        feats = np.asarray(graph, dtype=np.float64)
        if feats.shape != (d_ff, d_ff):
            raise NeuronscopeError(f"graph must be {d_ff} × {d_ff}, got {feats.shape}")
    else:
        raise NeuronscopeError(f"method must be weights, cofiring or contiguous, not {method!r}")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = feats / np.where(norms > 0, norms, 1.0)
    return Experts(balanced_kmeans(feats, int(n_experts), seed=seed, iters=iters), int(n_experts), method)


# --------------------------------------------------------------------------- data


@dataclass
class FFNData:
    """Recorded FFN inputs ``x`` (tokens × d_model, float32) and neuron activations ``acts``
    (tokens × d_ff, float16) of one FFN, on the same tokens (padding dropped)."""

    x: np.ndarray
    acts: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def collect_ffn_data(model: nn.Module, source: Any, ffns: Sequence[FFN], *, max_tokens: int = 16384,
                     stride: int = 1) -> dict[str, FFNData]:
    """FFN inputs and activations of every block in ``ffns`` over ``source`` (one forward pass per
    batch, a forward hook on each ``W_in``), keeping every ``stride``-th real token until
    ``max_tokens`` per block. Activations are recomputed exactly as ``act(W_in x)``."""
    from neuronscope.sources.torch_sites import to_samples

    xs: dict[str, list[np.ndarray]] = {f.name: [] for f in ffns}
    acts: dict[str, list[np.ndarray]] = {f.name: [] for f in ffns}
    got = dict.fromkeys(xs, 0)
    cur: dict[str, torch.Tensor] = {}
    hooks = []
    for f in ffns:
        def hook(_m: nn.Module, inp: tuple, _out: Any, name: str = f.name) -> None:
            cur[name] = inp[0].detach()
        hooks.append(f.w_in.register_forward_hook(hook))
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for batch in source.batches():
                cur.clear()
                _run(model, batch.inputs)
                n_tok = 0
                for f in ffns:
                    x = to_samples(cur[f.name], batch.mask)
                    n_tok = len(x)
                    keep = (torch.arange(seen, seen + len(x)) % stride) == 0
                    x = x[keep][: max_tokens - got[f.name]]
                    if len(x):
                        xs[f.name].append(x.numpy().copy())
                        acts[f.name].append(f.neurons(x).numpy().astype(np.float16))
                        got[f.name] += len(x)
                seen += n_tok
                if all(v >= max_tokens for v in got.values()):
                    break
    finally:
        for h in hooks:
            h.remove()
    if not all(got.values()):
        raise NeuronscopeError("the source gave no tokens to the FFNs; give a non-empty corpus")
    return {n: FFNData(np.concatenate(xs[n]), np.concatenate(acts[n])) for n in xs}


def _run(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


# --------------------------------------------------------------------------- router


def _onehot(labels: np.ndarray, n: int) -> torch.Tensor:
    m = torch.zeros(len(labels), n)
    m[torch.arange(len(labels)), torch.as_tensor(labels)] = 1.0
    return m


def expert_scores(acts: np.ndarray | torch.Tensor, experts: Experts, ffn: FFN | None = None,
                  target: str = "output", means: np.ndarray | None = None) -> torch.Tensor:
    """How much each token needs each expert (tokens × E):

    * ``target="activation"`` — MoEfication's score, the sum of the expert's positive
      activations ``Σ_{u ∈ e} max(a_u, 0)``;
    * ``target="output"`` — the norm of what the expert writes, ``‖W_out[:, e] (a_e − μ_e)‖``
      with ``μ`` the compensation means (0 without): exactly the output error of skipping that
      expert alone (needs ``ffn``).
    """
    a = torch.as_tensor(np.asarray(acts, dtype=np.float32)) if not isinstance(acts, torch.Tensor) else acts.float()
    if target == "activation":
        return a.clamp(min=0) @ _onehot(experts.labels, experts.n_experts)
    if target != "output":
        raise NeuronscopeError(f"target must be 'output' or 'activation', not {target!r}")
    if ffn is None:
        raise NeuronscopeError("target='output' needs the FFN (its W_out)")
    if means is not None:
        a = a - torch.as_tensor(means, dtype=torch.float32)
    w = ffn.w_out.weight.detach().float()
    out = torch.empty(len(a), experts.n_experts)
    for e in range(experts.n_experts):
        idx = torch.as_tensor(experts.members(e))
        out[:, e] = (a[:, idx] @ w[:, idx].T).norm(dim=1)
    return out


class Router(nn.Module):
    """MoEfication's MLP router: ``logits = W₂ relu(W₁ x + b₁) + b₂`` over the ``E`` experts
    from the FFN input ``x``; a token uses the top-k experts by logit."""

    def __init__(self, d_model: int, n_experts: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_router(x: np.ndarray, scores: torch.Tensor | np.ndarray, *, hidden: int = 128, epochs: int = 30,
                 batch_size: int = 512, lr: float = 3e-3, seed: int = 0, threads: int | None = 1) -> Router:
    """Train a :class:`Router` from recorded FFN inputs ``x`` (tokens × d) and the experts'
    scores (tokens × E, :func:`expert_scores`): a listwise ranking loss, the cross-entropy
    between ``softmax(logits)`` and the normalised scores ``p_e = s_e / Σ s``, so logits order
    the experts as the scores do. Adam, fixed seed."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if xt.ndim != 2 or s.ndim != 2 or len(xt) != len(s):
        raise NeuronscopeError("x and scores must be (tokens, d) and (tokens, E) on the same tokens")
    target = s / s.sum(1, keepdim=True).clamp(min=1e-12)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        router = Router(xt.shape[1], s.shape[1], hidden)
    mu, sd = xt.mean(0), xt.std(0).clamp(min=1e-6)
    router.register_buffer("mu", mu)
    router.register_buffer("sd", sd)
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    steps = epochs * math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    router.train()
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for b0 in range(0, len(xt), batch_size):
                idx = perm[b0 : b0 + batch_size]
                logits = router.net((xt[idx] - mu) / sd)
                loss = -(target[idx] * logits.log_softmax(1)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    router.eval()
    router.forward = _normalised_forward(router)  # type: ignore[method-assign]
    return router


def _normalised_forward(router: Router) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return router.net((x - router.mu) / router.sd)

    return forward


@torch.no_grad()
def router_recall(router: Router, x: np.ndarray, scores: torch.Tensor | np.ndarray, k: int) -> float:
    """Mean over tokens of ``|router top-k ∩ oracle top-k| / k`` (oracle: the ``k`` experts of
    largest score). Chance is ``k / E``."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    logits = router(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    pred = logits.topk(k, dim=1).indices
    true = s.topk(k, dim=1).indices
    hit = (pred[:, :, None] == true[:, None, :]).any(2).float().sum(1)
    return float((hit / k).mean())


# --------------------------------------------------------------------------- predictor


def hot_cold(freq: Any, hot_fraction: float = 0.2, *, site: str | None = None,
             threshold: float | None = None) -> np.ndarray:
    """PowerInfer's hot/cold split from firing frequencies: the ``⌈hot_fraction · units⌉``
    most frequently firing neurons are hot (True), the rest cold. ``freq`` is an array of
    frequencies (``characterize``'s ``freq`` column), or a run / ``SiteSummaries`` whose
    firing-frequency summary gives them (``site`` names the run's site; ``threshold`` a recorded
    magnitude threshold, else ``a > 0``)."""
    if hasattr(freq, "summaries") or hasattr(freq, "parts"):
        from neuronscope.analyses.characterize import firing_frequency

        ss = freq.summaries(site) if hasattr(freq, "summaries") else freq
        if ss is None:
            raise NeuronscopeError(f"no summaries for site {site!r}; record with keep='both' or 'summaries'")
        freq = firing_frequency(ss.result(), threshold)
    f = np.nan_to_num(np.asarray(freq, dtype=np.float64), nan=-1.0)
    if not 0.0 <= hot_fraction <= 1.0:
        raise NeuronscopeError(f"hot_fraction must be in [0, 1], not {hot_fraction}")
    hot = np.zeros(len(f), dtype=bool)
    hot[np.argsort(-f, kind="stable")[: math.ceil(hot_fraction * len(f))]] = True
    return hot


class ActivationPredictor(nn.Module):
    """Low-rank predictor of the active neurons from the FFN input (Deja Vu / PowerInfer):
    ``P(a_u > t | x) = σ((V (U x̂))_u + c_u)`` with ``U`` (rank × d) and ``V`` (d_ff × rank),
    ``x̂`` the standardised input; ``hot`` neurons are always predicted active."""

    def __init__(self, d_model: int, d_ff: int, rank: int, hot: np.ndarray | None = None):
        super().__init__()
        self.u = nn.Linear(d_model, rank, bias=False)
        self.v = nn.Linear(rank, d_ff)
        self.register_buffer("mu", torch.zeros(d_model))
        self.register_buffer("sd", torch.ones(d_model))
        self.register_buffer("hot", torch.zeros(d_ff, dtype=torch.bool) if hot is None
                             else torch.as_tensor(np.asarray(hot, dtype=bool)))
        self.threshold = 0.5

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.u((x - self.mu) / self.sd))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Bool tokens × d_ff: predicted active (hot neurons always)."""
        p = torch.sigmoid(self.logits(x)) >= (self.threshold if threshold is None else threshold)
        return p | self.hot


def train_predictor(x: np.ndarray, fired: np.ndarray, *, rank: int = 64, hot: np.ndarray | None = None,
                    epochs: int = 20, batch_size: int = 512, lr: float = 3e-3, seed: int = 0,
                    pos_weight: float = 1.0, threads: int | None = 1) -> ActivationPredictor:
    """Fit an :class:`ActivationPredictor` on recorded FFN inputs ``x`` and firing indicators
    ``fired`` (tokens × d_ff, bool): binary cross-entropy over the cold neurons (hot ones are
    always computed), Adam with a fixed seed (``threads`` intra-op threads while training)."""
    with _threads(threads):
        return _train_predictor(x, fired, rank, hot, epochs, batch_size, lr, seed, pos_weight)


def _train_predictor(x: Any, fired: Any, rank: int, hot: Any, epochs: int, batch_size: int, lr: float,
                     seed: int, pos_weight: float) -> ActivationPredictor:
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(fired, dtype=bool)).float()
    if len(xt) != len(yt):
        raise NeuronscopeError("x and fired must hold the same tokens")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pred = ActivationPredictor(xt.shape[1], yt.shape[1], rank, hot)
    pred.mu.copy_(xt.mean(0))
    pred.sd.copy_(xt.std(0).clamp(min=1e-6))
    cold = (~pred.hot).float()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(pred.parameters(), lr=lr)
    pw = torch.tensor(pos_weight)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for b0 in range(0, len(xt), batch_size):
                idx = perm[b0 : b0 + batch_size]
                loss = F.binary_cross_entropy_with_logits(pred.logits(xt[idx]), yt[idx], reduction="none",
                                                          pos_weight=pw)
                loss = (loss * cold).sum() / (cold.sum() * len(idx)).clamp(min=1)
                opt.zero_grad()
                loss.backward()
                opt.step()
    pred.eval()
    return pred


@torch.no_grad()
def evaluate_predictor(pred: ActivationPredictor, x: np.ndarray, fired: np.ndarray,
                       threshold: float | None = None) -> dict[str, float]:
    """Precision and recall of the predicted active set against the true one, over all neurons
    and over the cold neurons, and the predicted / true active fractions."""
    p = pred.predict(torch.as_tensor(np.asarray(x, dtype=np.float32)), threshold).numpy()
    y = np.asarray(fired, dtype=bool)
    cold = ~pred.hot.numpy()

    def pr(pp: np.ndarray, yy: np.ndarray) -> tuple[float, float]:
        tp = float(np.sum(pp & yy))
        return (tp / max(float(pp.sum()), 1.0), tp / max(float(yy.sum()), 1.0))

    prec, rec = pr(p, y)
    cprec, crec = pr(p[:, cold], y[:, cold])
    return {"precision": prec, "recall": rec, "cold_precision": cprec, "cold_recall": crec,
            "predicted_fraction": float(p.mean()), "true_fraction": float(y.mean()),
            "hot_fraction": float(pred.hot.float().mean())}


# --------------------------------------------------------------------------- sparse execution


class SparseFFN(nn.Module):
    """An FFN that computes only part of its neurons, as dense GEMMs.

    Expert mode (``experts`` given): a token ``t`` uses the ``top_k`` experts its ``router``
    ranks highest (all experts when ``top_k >= E``; ``router="oracle"`` ranks by the true
    :func:`expert_scores`, computing every neuron — a quality bound, not a speed-up). Tokens are
    sorted by expert; each expert's GEMM pair runs over its tokens with its gathered rows of
    ``W_in`` and columns of ``W_out`` (stored stacked, zero-padded to the largest expert), and
    experts of similar token counts are batched into one ``baddbmm`` / ``bmm`` pair per group
    (at most ``groups`` = 8 groups; an expert joins a group while it has ≥ 70% of the group's
    widest token count, so padding stays small), a handful of large GEMMs rather than 2·E small
    ones; with every expert selected the FFN is computed as two dense GEMMs::

        y_t = Σ_{e ∈ S(t)} W_out[:, e] act(W_in[e] x_t + b_in[e]) + Σ_{e ∉ S(t)} W_out[:, e] μ_e + b_out

    The second sum (``compensate=True``) replaces each skipped expert by its mean activation
    ``μ`` (a mean-ablation; one small GEMM), so skipping costs only the expert's deviation from
    its mean. Predictor mode (``predictor`` given): the union of the neurons predicted active for
    any token of the call is gathered and computed in one GEMM pair; each token keeps only its
    own predicted neurons (exact PowerInfer/Deja Vu sparsity for one token at a time).

    ``include_bias=False`` leaves out ``b_out`` (BERT's ``output.dense`` adds it after the swap).
    ``used`` / ``total`` count neuron evaluations (tokens × neurons computed vs tokens × d_ff).
    """

    def __init__(self, ffn: FFN, experts: Experts | None = None, router: Any = None, top_k: int | None = None,
                 *, compensate: bool = False, means: np.ndarray | None = None,
                 predictor: ActivationPredictor | None = None, include_bias: bool = True):
        super().__init__()
        if (experts is None) == (predictor is None):
            raise NeuronscopeError("give experts= (with a router) or predictor= (exactly one)")
        self.ffn_name = ffn.name
        self.act = ffn.act
        self.d_ff = ffn.d_ff
        w_in = ffn.w_in.weight.detach()
        b_in = ffn.w_in.bias.detach() if ffn.w_in.bias is not None else torch.zeros(ffn.d_ff)
        w_out = ffn.w_out.weight.detach()
        self.register_buffer("b_out", ffn.w_out.bias.detach().clone() if (include_bias and ffn.w_out.bias is not None)
                             else torch.zeros(w_out.shape[0]))
        self.include_bias = include_bias
        self.predictor = predictor
        self.router = router
        self.experts = experts
        self.used = 0
        self.total = 0
        if experts is not None:
            if len(experts.labels) != ffn.d_ff:
                raise NeuronscopeError(f"experts split {len(experts.labels)} neurons; the FFN has {ffn.d_ff}")
            self.n_experts = experts.n_experts
            self.top_k = self.n_experts if top_k is None else int(top_k)
            if not 1 <= self.top_k:
                raise NeuronscopeError("top_k must be at least 1")
            if self.top_k < self.n_experts and router is None:
                raise NeuronscopeError("top_k < experts needs a router (a Router or 'oracle')")
            self.members = [torch.as_tensor(experts.members(e)) for e in range(self.n_experts)]
            # (d, m) contiguous: ``x @ W`` then ``+ b`` (plain GEMMs; addmm with a bias broadcast is
            # several times slower on CPU for these shapes)
            self.w_in_e = [w_in[m].T.contiguous() for m in self.members]
            self.sizes = np.array([len(m) for m in self.members])
            width = int(self.sizes.max())
            e_n, d_in, d_o = self.n_experts, w_in.shape[1], w_out.shape[0]
            # experts stacked for batched GEMMs, zero-padded to the largest expert: a padded
            # neuron has zero input weights and bias and a zero output row, so it adds nothing
            self.w_in_s = torch.zeros(e_n, d_in, width)
            self.b_in_s = torch.zeros(e_n, 1, width)
            self.w_out_s = torch.zeros(e_n, width, d_o)
            for e, m in enumerate(self.members):
                self.w_in_s[e, :, : len(m)] = w_in[m].T
                self.b_in_s[e, 0, : len(m)] = b_in[m]
                self.w_out_s[e, : len(m)] = w_out[:, m].T
            #: experts run in at most this many batched-GEMM groups of similar token counts; a
            #: group admits experts with at least ``fill`` × its widest expert's tokens
            self.groups = min(8, self.n_experts)
            self.fill = 0.7
            self.w_in_t = w_in.T.contiguous()
            self.b_in = b_in.clone()
            self.w_out_t = w_out.T.contiguous()
            self.b_in_e = [b_in[m].contiguous() for m in self.members]
            self.w_out_e = [w_out[:, m].T.contiguous() for m in self.members]  # (m, d) for x @ W
            mu = torch.zeros(ffn.d_ff) if (means is None or not compensate) else torch.as_tensor(
                np.asarray(means, dtype=np.float32))
            self.compensate = bool(compensate and means is not None)
            self.mu_e = [mu[m].contiguous() for m in self.members]
            comp = torch.stack([w_out[:, m] @ mu[m] for m in self.members])  # (E, d)
            self.register_buffer("comp", comp)
            self.d_out = int(w_out.shape[0])
        else:
            self.register_buffer("w_in", w_in.clone())
            self.register_buffer("b_in", b_in.clone())
            self.register_buffer("w_out_t", w_out.T.contiguous())

    def set_top_k(self, k: int) -> None:
        if k < self.n_experts and self.router is None:
            raise NeuronscopeError("top_k < experts needs a router")
        self.top_k = int(k)

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        """Chosen experts per token (tokens × k, int64)."""
        n = len(x)
        if self.top_k >= self.n_experts:
            return torch.arange(self.n_experts).expand(n, -1)
        if isinstance(self.router, str):
            if self.router != "oracle":
                raise NeuronscopeError(f"router must be a Router or 'oracle', not {self.router!r}")
            # the true output-error score of every expert (computes every neuron)
            s = torch.stack([((self.act(x @ w + b) - mu) @ wo).norm(dim=1)
                             for w, b, wo, mu in zip(self.w_in_e, self.b_in_e, self.w_out_e, self.mu_e, strict=True)],
                            dim=1)
            return s.topk(self.top_k, dim=1).indices
        return self.router(x).topk(self.top_k, dim=1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])
        n = len(xf)
        if self.predictor is not None:
            y = self._forward_predicted(xf)
        else:
            y = self._forward_experts(xf)
        self.total += n * self.d_ff
        return (y + self.b_out).reshape(*shape[:-1], -1)

    def _forward_experts(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if self.top_k >= self.n_experts:
            # every expert: the sum over experts is the dense FFN, two GEMMs
            h = self.act((x @ self.w_in_t).add_(self.b_in))
            self.used += n * self.d_ff
            return h @ self.w_out_t
        chosen = self._select(x)
        k = chosen.shape[1]
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = order // k
        counts = torch.bincount(flat, minlength=self.n_experts)
        starts = torch.cumsum(counts, 0) - counts
        e_sorted = flat[order]
        slot = torch.arange(len(flat)) - starts[e_sorted]
        xpad = torch.cat([x, x.new_zeros(1, x.shape[1])])  # row n: padding
        cnt = counts.tolist()
        by_size = [e for e in sorted(range(self.n_experts), key=lambda e: -cnt[e]) if cnt[e] > 0]
        # experts of similar token counts share a batched GEMM: a group closes when the next
        # expert has fewer than ``fill`` × the group's widest count (bounds the padding), at most
        # ``groups`` groups (the last one takes the rest)
        groups: list[list[int]] = []
        for e in by_size:
            if groups and (len(groups) >= self.groups or cnt[e] >= self.fill * cnt[groups[-1][0]]):
                groups[-1].append(e)
            else:
                groups.append([e])
        # row of every (expert, slot) output in the concatenated group outputs
        row_base = torch.zeros(self.n_experts, dtype=torch.long)
        plan = []
        offset = 0
        for ge in groups:
            width = cnt[ge[0]]
            gi = torch.as_tensor(ge)
            row_base[gi] = offset + torch.arange(len(ge)) * width
            plan.append((gi, width, offset))
            offset += len(ge) * width
        rows_all = row_base[e_sorted] + slot  # per sorted position
        src = torch.full((offset,), n, dtype=torch.long)  # token of every output row (n: padding)
        src[rows_all] = tok
        out = x.new_empty(offset, self.d_out)
        used = 0
        for gi, width, off in plan:
            idx = src[off : off + len(gi) * width]
            xg = xpad.index_select(0, idx).view(len(gi), width, -1)
            h = self.act(torch.baddbmm(self.b_in_s.index_select(0, gi), xg, self.w_in_s.index_select(0, gi)))
            torch.bmm(h, self.w_out_s.index_select(0, gi), out=out[off : off + len(gi) * width].view(len(gi), width, -1))
            used += sum(cnt[e] * int(self.sizes[e]) for e in gi.tolist())
        loc = torch.empty(len(flat), dtype=torch.long)
        loc[order] = rows_all  # output row of each (token, choice)
        y = out.index_select(0, loc).view(n, k, -1).sum(1)
        if self.compensate:
            skipped = torch.ones(n, self.n_experts, dtype=x.dtype)
            skipped.scatter_(1, chosen, 0.0)
            y += skipped @ self.comp
        self.used += used
        return y

    def _forward_predicted(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.predictor.predict(x)
        union = torch.nonzero(mask.any(0)).flatten()
        h = self.act((x @ self.w_in[union].T).add_(self.b_in[union]))
        if len(x) > 1:
            h = h * mask[:, union]
        self.used += len(x) * len(union)
        return h @ self.w_out_t[union]


class _Bias(nn.Module):
    """Stands in for BERT's ``output.dense`` after a swap: adds ``b_out`` to the sparse FFN's
    output (which already holds ``W_out h``)."""

    def __init__(self, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias


class Sparsified:
    """Handle of a :func:`sparsify` swap: ``modules`` maps each FFN site to its
    :class:`SparseFFN`; :meth:`restore` puts the dense modules back (also on leaving a
    ``with`` block); :meth:`fraction_used` is the measured share of neuron evaluations."""

    def __init__(self, swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]], modules: dict[str, SparseFFN]):
        self._swaps = swaps
        self.modules = modules
        self.active = True

    def restore(self) -> None:
        """Put every original module back (idempotent)."""
        if not self.active:
            return
        for parent, attr, original, _new in reversed(self._swaps):
            setattr(parent, attr, original)
        self.active = False

    def __enter__(self) -> Sparsified:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def set_top_k(self, k: int) -> None:
        for m in self.modules.values():
            m.set_top_k(k)

    def reset_counts(self) -> None:
        for m in self.modules.values():
            m.used = m.total = 0

    def fraction_used(self) -> float:
        used = sum(m.used for m in self.modules.values())
        total = sum(m.total for m in self.modules.values())
        return used / total if total else float("nan")


def sparsify(model: nn.Module, site: str | Sequence[FFN], *, experts: Experts | Mapping[str, Experts] | None = None,
             routers: Any = None, top_k: int | None = None, compensate: bool = False,
             means: Mapping[str, np.ndarray] | None = None,
             predictors: Mapping[str, ActivationPredictor] | ActivationPredictor | None = None) -> Sparsified:
    """Swap the FFNs behind ``site`` for :class:`SparseFFN` modules; returns a
    :class:`Sparsified` handle (``.restore()``, or use it as a context manager).

    ``experts`` / ``routers`` / ``means`` / ``predictors`` are one object for every FFN or a
    dict by FFN site name. BERT blocks: ``intermediate`` becomes the sparse FFN (returning
    ``W_out h`` without bias) and ``output.dense`` adds ``b_out``, so ``output``'s dropout,
    residual and LayerNorm run unchanged; ``fc_in/act/fc_out`` blocks are replaced whole.
    With every expert selected the model computes the dense output to float tolerance.
    """
    ffns = list(site) if not isinstance(site, str) else find_ffns(model, site)

    def pick(obj: Any, name: str) -> Any:
        if isinstance(obj, Mapping):
            if name not in obj:
                raise NeuronscopeError(f"no entry for FFN {name!r}; have {', '.join(obj)}")
            return obj[name]
        return obj

    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    mods: dict[str, SparseFFN] = {}
    try:
        for f in ffns:
            bert = f.kind == "bert"
            sp = SparseFFN(f, pick(experts, f.name) if experts is not None else None,
                           pick(routers, f.name) if routers is not None else None, top_k,
                           compensate=compensate, means=pick(means, f.name) if means is not None else None,
                           predictor=pick(predictors, f.name) if predictors is not None else None,
                           include_bias=not bert)
            mods[f.name] = sp
            setattr(f.parent, f.attr, sp)
            swaps.append((f.parent, f.attr, f.owner, sp))
            if bert:
                out_mod = f.parent.output
                out_mod.dense = _Bias(f.w_out.bias)
                swaps.append((out_mod, "dense", f.w_out, out_mod.dense))
    except Exception:
        Sparsified(swaps, mods).restore()
        raise
    return Sparsified(swaps, mods)


# --------------------------------------------------------------------------- MoEfication


@dataclass
class MoEfication:
    """A model's FFNs split into experts with trained routers (:func:`moefy`)."""

    ffns: list[FFN]
    experts: dict[str, Experts]
    routers: dict[str, Router]
    means: dict[str, np.ndarray]
    recall: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def n_experts(self) -> int:
        return next(iter(self.experts.values())).n_experts

    def sparsify(self, model: nn.Module, top_k: int, *, router: str = "learned",
                 compensate: bool = True) -> Sparsified:
        """Swap in the sparse FFNs using the ``top_k`` experts per token (``router="oracle"``:
        the true best experts, a quality bound)."""
        routers: Any = self.routers if router == "learned" else "oracle"
        if router not in ("learned", "oracle"):
            raise NeuronscopeError(f"router must be 'learned' or 'oracle', not {router!r}")
        return sparsify(model, self.ffns, experts=self.experts, routers=routers, top_k=top_k,
                        compensate=compensate, means=self.means)


def moefy(model: nn.Module, source: Any, site: str, n_experts: int, *, split: str = "weights",
          data: Mapping[str, FFNData] | None = None, max_tokens: int = 16384, hidden: int = 128,
          epochs: int = 30, target: str = "output", compensate: bool = True, seed: int = 0,
          threshold: float = 0.0) -> MoEfication:
    """MoEfy every FFN behind ``site``: split into ``n_experts`` experts (``split`` = ``weights``
    | ``cofiring`` | ``contiguous``, :func:`split_experts`; ``cofiring`` uses the phi graph of
    the recorded activations fired at ``threshold``), record FFN inputs and activations over
    ``source`` (or take ``data``), and train one router per FFN on the expert scores
    (:func:`expert_scores` with ``target``; with ``compensate`` the scores and the sparse
    execution use the neurons' mean activations ``μ``). Router top-k recall on the training
    tokens is kept in ``recall``."""
    ffns = find_ffns(model, site)
    for f in ffns:
        _check_experts(f.d_ff, n_experts)
    data = dict(data) if data is not None else collect_ffn_data(model, source, ffns, max_tokens=max_tokens)
    experts: dict[str, Experts] = {}
    routers: dict[str, Router] = {}
    means: dict[str, np.ndarray] = {}
    recall: dict[str, dict[int, float]] = {}
    for f in ffns:
        d = data[f.name]
        acts = d.acts.astype(np.float32)
        means[f.name] = acts.mean(0)
        if split == "cofiring":
            from neuronscope.analyses.modules import coactivation_graph
            from neuronscope.summaries.cofiring import CoFiring

            cf = CoFiring(f.d_ff, threshold)
            cf.update(acts)
            graph = coactivation_graph(cf, "phi")
            experts[f.name] = split_experts(f, n_experts, method="cofiring", graph=graph, seed=seed)
        else:
            experts[f.name] = split_experts(f, n_experts, method=split, seed=seed)
        scores = expert_scores(acts, experts[f.name], f, target, means[f.name] if compensate else None)
        routers[f.name] = train_router(d.x, scores, hidden=hidden, epochs=epochs, seed=seed)
        ks = sorted({1, max(1, n_experts // 4), max(1, n_experts // 2)})
        recall[f.name] = {k: router_recall(routers[f.name], d.x, scores, k) for k in ks}
    return MoEfication(ffns, experts, routers, means, recall)


# --------------------------------------------------------------------------- quality


def _batches_of(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield list(texts[i : i + size])


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tok: Any, texts: Sequence[str], *, batch_size: int = 64,
                        max_tokens: int = 128) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: the attention-masked mean of the last hidden
    state, L2-normalised (texts × d)."""
    out = []
    model.eval()
    for chunk in _batches_of(texts, batch_size):
        enc = tok(chunk, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1)
        out.append(F.normalize(e, dim=1))
    return torch.cat(out)


def retrieval_queries(texts: Sequence[str], fraction: float = 0.6) -> list[str]:
    """The retrieval task's queries: the first ``⌈fraction · len⌉`` characters of each text
    (a partial view of the document, language-agnostic)."""
    return [t[: max(1, math.ceil(fraction * len(t)))] for t in texts]


@torch.no_grad()
def embedding_quality(model: nn.Module, tok: Any, texts: Sequence[str], reference: torch.Tensor | None = None,
                      *, batch_size: int = 64, max_tokens: int = 128,
                      fraction: float = 0.6) -> dict[str, Any]:
    """Quality of a (possibly sparsified) sentence-embedding model on held-out ``texts``.

    * ``cosine`` — mean cosine between the model's embedding and ``reference`` (the dense
      model's embeddings of the same texts; 1.0 without a reference);
    * ``retrieval`` — recall@1 of a prefix-retrieval task: each text's query (its first 60% of
      characters, :func:`retrieval_queries`) must retrieve the full text among all ``texts``
      (the other texts are the distractors), queries and documents embedded by the model.

    Returns the two scores and ``embeddings`` (to serve as the next call's ``reference``).
    """
    emb = sentence_embeddings(model, tok, texts, batch_size=batch_size, max_tokens=max_tokens)
    q = sentence_embeddings(model, tok, retrieval_queries(texts, fraction), batch_size=batch_size,
                            max_tokens=max_tokens)
    hits = (q @ emb.T).argmax(1) == torch.arange(len(texts))
    cos = float((emb * reference).sum(1).mean()) if reference is not None else 1.0
    return {"cosine": cos, "retrieval": float(hits.float().mean()), "embeddings": emb}


def lm_quality(model: nn.Module, tok: Any, texts: Sequence[str], *, batch_size: int = 64) -> dict[str, float]:
    """Held-out next-token loss (nats per byte/token) and perplexity ``exp(loss)`` of a causal
    LM with ``token_losses`` (the tiny LM), via ``neuronscope.testing.tinylm.heldout_loss``."""
    from neuronscope.testing.tinylm import heldout_loss

    loss = heldout_loss(model, tok, list(texts), batch_size=batch_size)
    return {"loss": loss, "perplexity": math.exp(loss)}


def moefication_curve(model: nn.Module, moe: MoEfication, evaluate: Callable[[nn.Module], Mapping[str, float]],
                      top_ks: Sequence[int], *, baseline: Mapping[str, float] | None = None,
                      quality: Callable[[Mapping[str, float], Mapping[str, float]], float] | None = None,
                      routers: Sequence[str] = ("learned",), compensate: bool = True) -> list[dict[str, Any]]:
    """Quality kept against the fraction of FFN neurons used, one row per (router, top-k).

    ``evaluate(model)`` returns metrics (e.g. :func:`embedding_quality` or :func:`lm_quality`,
    run under the sparse swap); ``quality(metrics, baseline)`` turns them into the share of the
    dense model's quality kept (default: ``metrics["quality"]``). Each row: ``experts``,
    ``top_k``, ``router``, ``fraction`` (measured neuron evaluations / dense), the metrics and
    ``quality``.
    """
    base = dict(baseline) if baseline is not None else dict(evaluate(model))
    rows = []
    for r in routers:
        for k in top_ks:
            with moe.sparsify(model, int(k), router=r, compensate=compensate) as sp:
                m = dict(evaluate(model))
                frac = sp.fraction_used() if r == "learned" else min(1.0, k / moe.n_experts)
            q = quality(m, base) if quality is not None else float(m.get("quality", float("nan")))
            rows.append({"experts": moe.n_experts, "top_k": int(k), "router": r, "fraction": frac,
                         **{kk: v for kk, v in m.items() if isinstance(v, int | float)}, "quality": q})
    return rows


# --------------------------------------------------------------------------- timing


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


@torch.no_grad()
def time_ffn(ffn: FFN, sparse: SparseFFN, x: torch.Tensor, repeats: int = 7) -> dict[str, float]:
    """Median CPU seconds of the dense FFN (``W_out act(W_in x) + b_out``, torch's Linear
    modules) and of the sparse module (router included) on the same inputs ``x``, interleaved
    so load drifts hit both; ``speedup`` = dense / sparse."""
    dense_ts, sparse_ts = [], []
    ffn.dense(x)
    sparse(x)
    for _ in range(repeats):
        t0 = time.perf_counter()
        ffn.dense(x)
        t1 = time.perf_counter()
        sparse(x)
        t2 = time.perf_counter()
        dense_ts.append(t1 - t0)
        sparse_ts.append(t2 - t1)
    d, s = statistics.median(dense_ts), statistics.median(sparse_ts)
    return {"dense_s": d, "sparse_s": s, "speedup": d / s}


@torch.no_grad()
def time_model(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
               swap: Callable[[], Sparsified], repeats: int = 5) -> dict[str, float]:
    """Median CPU seconds of a pass of ``model`` over ``batches``, dense and under ``swap()``
    (a fresh :func:`sparsify` handle each time, restored after), interleaved; ``speedup``."""
    def run() -> None:
        for b in batches:
            _run(model, dict(b))

    run()
    dense_ts, sparse_ts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        with swap():
            t2 = time.perf_counter()
            run()
            t3 = time.perf_counter()
        dense_ts.append(t1 - t0)
        sparse_ts.append(t3 - t2)
    d, s = statistics.median(dense_ts), statistics.median(sparse_ts)
    return {"dense_s": d, "sparse_s": s, "speedup": d / s}


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- the whole report


def default_ffn_site(model: nn.Module) -> str:
    """The FFN neuron sites of a known architecture: the tiny LM's ``blocks.*.mlp.act``, else
    BERT's ``encoder.layer.*.intermediate``."""
    from neuronscope.sources.models import BERT_FFN_SITES
    from neuronscope.testing.tinylm import TINYLM_FFN_SITES

    return TINYLM_FFN_SITES if hasattr(model, "token_losses") else BERT_FFN_SITES


def moefy_report(model: nn.Module, tok: Any, n_experts: int, top_ks: Sequence[int], *, train_texts: Sequence[str],
                 heldout_texts: Sequence[str], site: str | None = None, split: str = "weights",
                 max_tokens: int = 8192, epochs: int = 20, seed: int = 0, routers: Sequence[str] = ("learned",),
                 timing: bool = True, repeats: int = 5, batch_size: int = 32, max_len: int = 128,
                 timing_tokens: int = 2048, min_quality: float = 0.95, quality: str = "retrieval",
                 moe: MoEfication | None = None) -> dict[str, Any]:
    """MoEfy a model and measure it: the quality-vs-fraction table and the speed-ups.

    Trains on ``train_texts`` (router inputs from at most ``max_tokens`` tokens), evaluates on
    ``heldout_texts``. Quality kept (the rows' ``quality``): for a causal LM (``token_losses``)
    the perplexity ratio ``ppl_dense / ppl_sparse``; for an encoder, with ``quality="retrieval"``
    (default) the task performance kept as MoEfication measures it, the prefix-retrieval
    recall@1 of the sparse model over the dense one's (``retrieval_kept``), or with
    ``quality="cosine"`` the mean cosine of the sparse sentence embeddings to the dense ones
    (a drop-in replacement in a dense index); both are in every row. With ``timing``, every learned-router
    row gets ``ffn_speedup`` (all FFNs on ``timing_tokens`` held-out FFN inputs, dense Linear
    modules vs the sparse modules with their routers) and ``model_speedup`` (whole forward
    passes over held-out batches). ``best`` is the row of smallest fraction with
    ``quality >= min_quality``.
    """
    from neuronscope.sources.text import Corpus, TextSource

    site = site or default_ffn_site(model)
    lm = hasattr(model, "token_losses")
    train_src = TextSource(Corpus(list(train_texts)), tok, batch_size=batch_size, max_tokens=max_len)
    t0 = time.perf_counter()
    if moe is None:
        moe = moefy(model, train_src, site, n_experts, split=split, max_tokens=max_tokens, epochs=epochs, seed=seed)
    fit_s = time.perf_counter() - t0
    held = list(heldout_texts)
    if lm:
        base = lm_quality(model, tok, held)

        def evaluate(m: nn.Module) -> dict[str, float]:
            return lm_quality(m, tok, held)

        def ppl_ratio(q: Mapping[str, float], b: Mapping[str, float]) -> float:
            return b["perplexity"] / q["perplexity"]
    else:
        base_q = embedding_quality(model, tok, held, max_tokens=max_len)
        ref = base_q["embeddings"]
        base = {"cosine": 1.0, "retrieval": base_q["retrieval"]}

        def evaluate(m: nn.Module) -> dict[str, float]:
            q = embedding_quality(m, tok, held, ref, max_tokens=max_len)
            return {"cosine": q["cosine"], "retrieval": q["retrieval"],
                    "retrieval_kept": q["retrieval"] / max(base["retrieval"], 1e-12)}

        if quality not in ("retrieval", "cosine"):
            raise NeuronscopeError(f"quality must be 'retrieval' or 'cosine', not {quality!r}")
        key = "retrieval_kept" if quality == "retrieval" else "cosine"

        def quality_fn(q: Mapping[str, float], b: Mapping[str, float]) -> float:
            return q[key]
    rows = moefication_curve(model, moe, evaluate, top_ks, baseline=base,
                             quality=ppl_ratio if lm else quality_fn, routers=routers)
    if timing:
        held_src = TextSource(Corpus(held), tok, batch_size=batch_size, max_tokens=max_len)
        data = collect_ffn_data(model, held_src, moe.ffns, max_tokens=timing_tokens)
        xs = {n: torch.as_tensor(d.x) for n, d in data.items()}
        batches = []
        for b in held_src.batches():
            batches.append(b.inputs)
            if len(batches) >= 4:
                break
        for row in rows:
            if row["router"] != "learned":
                continue
            k = row["top_k"]
            with moe.sparsify(model, k) as sp:
                d_s = s_s = 0.0
                for f in moe.ffns:
                    t = time_ffn(f, sp.modules[f.name], xs[f.name], repeats=repeats)
                    d_s += t["dense_s"]
                    s_s += t["sparse_s"]
            row["ffn_dense_s"], row["ffn_sparse_s"], row["ffn_speedup"] = d_s, s_s, d_s / s_s
            tm = time_model(model, batches, lambda k=k: moe.sparsify(model, k), repeats=max(3, repeats // 2))
            row["model_dense_s"], row["model_sparse_s"], row["model_speedup"] = (
                tm["dense_s"], tm["sparse_s"], tm["speedup"])
    ok = [r for r in rows if r["router"] == "learned" and r["quality"] >= min_quality]
    best = min(ok, key=lambda r: (r["fraction"], r["top_k"])) if ok else None
    return {"site": site, "experts": moe.n_experts, "split": split, "kind": "causal-lm" if lm else "encoder",
            "quality_measure": "perplexity ratio (dense / sparse)" if lm else (
                "retrieval recall@1 kept (sparse / dense)" if quality == "retrieval"
                else "embedding cosine to the dense model"),
            "baseline": {k: v for k, v in base.items() if isinstance(v, int | float)},
            "router_recall": moe.recall, "fit_seconds": fit_s, "rows": rows, "best": best,
            "min_quality": min_quality}
