"""Per-neuron and per-site characterization from a run's streaming summaries.

Plain functions over a run (:class:`RunLike`: a :class:`~neuronscope.store.Run`) or a dict
``{site: SiteSummaries}`` (with ``vocab`` / ``samples`` given as keyword arguments when
token strings and context tokens are wanted).

* :func:`characterize` — one row per neuron (firing frequency, moments, dead / dormant,
  positional, BOS-detector and token-detector scores and labels, hot rank; with ``label``,
  the label columns of :func:`with_label_columns`).
* :func:`site_summary` — one row per site (lazy-neuron share, dead / dormant fractions,
  power-law exponent, top-20% share).
* :func:`site_examples` / :func:`top_examples` — the top-k activating examples with their
  context, for every neuron of a site at once or for one neuron.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from neuronscope.errors import NeuronscopeError
from neuronscope.population import select_sites

if TYPE_CHECKING:
    from neuronscope.summaries.site import SiteSummaries

NEURON_COLUMNS = [
    "site", "unit", "freq", "mean", "std", "mean_abs", "min", "max", "dead",
    "dormant_score", "dormant", "positional_score", "positional", "bos_score", "bos_detector",
    "token_score", "token_detector", "top_token_id", "top_token", "hot_rank",
]
SITE_COLUMNS = [
    "site", "units", "samples", "pct_active_per_token", "dead_frac", "dormant_frac",
    "powerlaw_exponent", "top20_share",
]


@runtime_checkable
class RunLike(Protocol):
    """What characterization reads from a run; :class:`~neuronscope.store.Run` is one."""

    @property
    def sites(self) -> Mapping[str, int]:
        """``{site: units}`` in site order."""

    @property
    def samples(self) -> Mapping[str, np.ndarray]:
        """Sample coordinates of every sample (``sample``, ``doc``, ``pos``, ``token_id``, …)."""

    @property
    def vocab(self) -> Sequence[str] | None:
        """Token strings by id (text runs), else None."""

    def summaries(self, site: str) -> SiteSummaries | None:
        """The site's streaming summaries, or None if none were kept."""


#: What the functions here accept: a run, or ``{site: SiteSummaries}``.
RunOrSummaries = RunLike | Mapping[str, "SiteSummaries"]


def _is_run(obj: Any) -> bool:
    return callable(getattr(obj, "summaries", None))


def _site_summaries(run_or_summaries: RunOrSummaries, site: str | None) -> list[tuple[str, SiteSummaries]]:
    """``[(site, SiteSummaries)]`` selected by ``site`` (:func:`~neuronscope.population.select_sites`:
    exact names or globs, comma-separated)."""
    if _is_run(run_or_summaries):
        names = list(run_or_summaries.sites)
        get = run_or_summaries.summaries
    elif isinstance(run_or_summaries, Mapping):
        names = list(run_or_summaries)
        get = run_or_summaries.get
    else:
        raise NeuronscopeError("pass a Run (neuronscope.open_run) or a dict {site: SiteSummaries}")
    out = [(n, get(n)) for n in select_sites(names, site)]
    out = [(n, s) for n, s in out if s is not None]
    if not out:
        raise NeuronscopeError(
            "no summaries found; run `neuronscope summarize RUN` on its stored activations "
            "or record with --keep both / summaries"
        )
    return out


def firing_frequency(result: Mapping[str, np.ndarray], threshold: float | None = None) -> np.ndarray:
    """Fraction of samples on which each neuron is active.

    ``threshold=None``: ``freq = #(a > 0) / count`` (ReLU nets; Voita et al.).
    Otherwise ``freq = #(|a| > t) / count`` for a recorded magnitude threshold ``t``
    (Zhang et al., *ReLU² Wins*: activation by output magnitude for GELU/SwiGLU nets).
    """
    count = result["moments.count"].astype(np.float64)
    if threshold is None:
        active = result["firing.pos_count"]
    else:
        recorded = np.asarray(result["firing.thresholds"], dtype=np.float64)
        hit = np.flatnonzero(np.isclose(recorded, threshold, rtol=1e-6, atol=1e-12))
        if not len(hit):
            raise NeuronscopeError(
                f"threshold {threshold} was not recorded (recorded: {recorded.tolist()}); "
                "pick one of those or record with SummaryConfig(thresholds=...)"
            )
        active = result["firing.abs_count"][hit[0]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, active / np.maximum(count, 1), np.nan)


def dormant_scores(mean_abs: np.ndarray) -> np.ndarray:
    """ReDo's tau-dormant score (Sokar et al., *The Dormant Neuron Phenomenon in Deep RL*):
    ``s_i = E|a_i| / ((1/H) sum_j E|a_j|)`` over the H neurons of the layer; a neuron
    is tau-dormant when ``s_i <= tau``. A layer that is all zero scores 0."""
    layer = float(np.nanmean(mean_abs)) if len(mean_abs) else 0.0
    if layer <= 0 or not np.isfinite(layer):
        return np.zeros_like(mean_abs, dtype=np.float64)
    return mean_abs / layer


def positional_scores(count: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Share of the variance of each neuron's firing indicator explained by position.

    With ``n_p`` samples and ``c_p`` firings (``a > 0``) at position ``p``,
    ``r_p = c_p / n_p``, ``N = sum n_p`` and ``p = sum c_p / N``::

        score = sum_p n_p (r_p - p)^2 / (N p (1 - p))

    the correlation ratio eta^2 of the 0/1 firing on position (between-position
    variance over total variance, both of the Bernoulli indicator). 1 for a neuron
    whose firing is a function of position alone (Voita et al.'s positional
    neurons), ~0 when firing ignores position; 0 for never- or always-firing neurons.
    Firing here is ``a > 0`` (the recorded per-position counts), whatever threshold
    ``characterize`` uses for ``freq``.
    """
    count = np.asarray(count, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        return np.zeros(count.shape[1])
    p = count.sum(axis=0) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n[:, None] > 0, count / np.maximum(n[:, None], 1), 0.0)
        between = (n[:, None] * (rate - p) ** 2).sum(axis=0) / total
        var = p * (1 - p)
        score = np.where(var > 0, between / np.where(var > 0, var, 1), 0.0)
    return np.clip(score, 0.0, 1.0)


def bos_scores(count: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much of each neuron's firing sits on the first token (position 0: ``[CLS]``,
    ``<s>``, BOS, or the first word of a model without one), from the per-position firing
    counts ``c_p`` (``a > 0``) and sample counts ``n_p``.

    Returns ``(share, rate)``: ``share = c_0 / Σ_p c_p``, the fraction of the neuron's firings
    that are at position 0 (NaN for a neuron that never fires), and ``rate = c_0 / n_0``, how
    often it fires on a first token. A BOS detector (attention-sink / ``[CLS]`` neuron) has
    both high: most of its firing is on the first token although that is one position of
    many, and it fires on most first tokens. Such neurons are a position-0 class of their own:
    :func:`characterize` counts them neither as positional neurons (whose firing varies with
    position over a range) nor as token detectors (their top examples are all the same
    special token, so ``token_score`` is ~1 for a reason that says nothing about the vocabulary).
    """
    count = np.asarray(count, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if count.shape[0] == 0:
        nan = np.full(count.shape[1], np.nan)
        return nan, nan
    total = count.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, count[0] / np.where(total > 0, total, 1), np.nan)
        rate = count[0] / n[0] if n[0] > 0 else np.full(count.shape[1], np.nan)
    return share, rate


def token_scores(token_id: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each neuron's top-k examples: the most common token id (ties: smallest id)
    and its share of the filled examples — high for token detectors (Voita et al.).
    Returns ``(score, top_token_id)``; NaN / -1 when a neuron has no examples."""
    tok = np.asarray(token_id, dtype=np.int64)
    valid = (np.asarray(sample) >= 0) & (tok >= 0)
    units, k = tok.shape
    n_valid = valid.sum(axis=1)
    # invalid slots get distinct ids above every real id so they never form a mode
    sentinel = int(tok.max(initial=0)) + 1 + np.arange(k)
    t = np.where(valid, tok, sentinel[None, :])
    t = np.sort(t, axis=1)
    span = int(t.max(initial=0)) + 1
    flat = (t + np.arange(units)[:, None] * span).ravel()
    runs = (np.searchsorted(flat, flat, side="right") - np.searchsorted(flat, flat, side="left"))
    runs = runs.reshape(units, k)
    runs = np.where(t < sentinel[0], runs, 0)
    best = runs.argmax(axis=1)
    rows = np.arange(units)
    top = np.where(n_valid > 0, t[rows, best], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(n_valid > 0, runs[rows, best] / np.maximum(n_valid, 1), np.nan)
    return score, top


def powerlaw_exponent(freq: np.ndarray) -> float:
    """Exponent ``alpha`` of ``freq ~ rank^-alpha``: least squares of ``log freq`` on
    ``log rank`` (rank 1 = hottest) over the non-zero frequencies (PowerInfer's
    hot/cold power law). NaN with fewer than two firing neurons."""
    f = np.sort(np.asarray(freq, dtype=np.float64)[np.asarray(freq) > 0])[::-1]
    if len(f) < 2:
        return float("nan")
    slope = np.polyfit(np.log(np.arange(1, len(f) + 1)), np.log(f), 1)[0]
    return float(-slope)


def top_share(freq: np.ndarray, fraction: float = 0.2) -> float:
    """Share of all firing events carried by the ``ceil(fraction * units)`` most
    frequently firing neurons (PowerInfer: a few hot neurons carry most activations)."""
    f = np.sort(np.nan_to_num(np.asarray(freq, dtype=np.float64)))[::-1]
    total = f.sum()
    if total <= 0:
        return float("nan")
    return float(f[: math.ceil(fraction * len(f))].sum() / total)


def _neuron_table(
    name: str,
    ss: SiteSummaries,
    vocab: Sequence[str] | None,
    threshold: float | None,
    dormant_tau: float,
    positional_threshold: float,
    token_threshold: float,
    bos_share: float,
    bos_rate: float,
) -> pd.DataFrame:
    r = ss.result()
    units = len(r["moments.count"])
    freq = firing_frequency(r, threshold)
    dead = freq == 0
    dscore = dormant_scores(r["moments.mean_abs"])
    if "position.count" in r:
        pscore = positional_scores(r["position.count"], r["position.n"])
        bscore, brate = bos_scores(r["position.count"], r["position.n"])
    else:
        pscore = bscore = brate = np.full(units, np.nan)
    with np.errstate(invalid="ignore"):
        bos = (bscore >= bos_share) & (brate >= bos_rate) & ~dead
    tscore, top_tok = token_scores(r["topk.token_id"], r["topk.sample"])
    # a dead neuron's top-k holds its least negative values, not firings: no token score
    tscore = np.where(dead, np.nan, tscore)
    top_tok = np.where(dead, -1, top_tok)
    hot = np.empty(units, dtype=np.int64)
    hot[np.argsort(-np.nan_to_num(freq, nan=-1.0), kind="stable")] = np.arange(units)
    if vocab is not None:
        top_token = ["" if d else (vocab[t] if 0 <= t < len(vocab) else None)
                     for t, d in zip(top_tok.tolist(), dead.tolist(), strict=True)]
    else:
        top_token = [None] * units
    return pd.DataFrame(
        {
            "site": name,
            "unit": np.arange(units),
            "freq": freq,
            "mean": r["moments.mean"],
            "std": np.sqrt(r["moments.var"]),
            "mean_abs": r["moments.mean_abs"],
            "min": r["moments.min"],
            "max": r["moments.max"],
            "dead": dead,
            "dormant_score": dscore,
            "dormant": dscore <= dormant_tau,
            "positional_score": pscore,
            "positional": (pscore >= positional_threshold) & ~bos,
            "bos_score": bscore,
            "bos_detector": bos,
            "token_score": tscore,
            "token_detector": (np.nan_to_num(tscore, nan=0.0) >= token_threshold) & ~bos,
            "top_token_id": top_tok,
            "top_token": top_token,
            "hot_rank": hot,
        },
        columns=NEURON_COLUMNS,
    )


def characterize(
    run_or_summaries: RunOrSummaries,
    site: str | None = None,
    threshold: float | None = None,
    dormant_tau: float = 0.025,
    positional_threshold: float = 0.5,
    *,
    vocab: Sequence[str] | None = None,
    token_threshold: float = 0.5,
    bos_share: float = 0.5,
    bos_rate: float = 0.5,
    label: str | None = None,
) -> pd.DataFrame:
    """One row per neuron: what it does and how often it fires.

    Columns: ``site, unit``; ``freq`` (:func:`firing_frequency`: ``a > 0``, or
    ``|a| > threshold`` for a recorded magnitude threshold); ``mean, std, mean_abs,
    min, max`` (streaming moments); ``dead`` = never active over the corpus,
    ``freq == 0`` (Voita et al., *Neurons in LLMs: Dead, N-gram, Positional*);
    ``dormant_score``/``dormant`` = ReDo's score ``<= dormant_tau``
    (:func:`dormant_scores`); ``positional_score`` = eta^2 of firing on position
    (:func:`positional_scores`), ``positional`` = score ``>= positional_threshold`` and not
    a BOS detector; ``bos_score`` = share of the neuron's firing at position 0 and
    ``bos_detector`` = ``bos_score >= bos_share`` and firing on at least ``bos_rate`` of
    first tokens (:func:`bos_scores`: ``[CLS]`` / ``<s>`` / BOS detectors, a class of their
    own); ``token_score``, ``top_token_id``, ``top_token`` = share of the top-k examples on
    the most common token (:func:`token_scores`; string from ``run.vocab``) — NaN, -1 and
    ``""`` for dead neurons, whose top-k values are not firings; ``token_detector`` =
    ``token_score >= token_threshold`` and not a BOS detector (Voita et al.'s token
    detectors); ``hot_rank`` = rank by ``freq``, 0 hottest, ties by unit (PowerInfer).
    ``site`` selects sites by name or glob (comma-separated globs too). ``vocab`` gives token
    strings for a dict of summaries (a run's own ``vocab`` is used by default). ``label`` (a
    label field such as ``lang``) adds the label columns of :func:`with_label_columns`.
    """
    if vocab is None and _is_run(run_or_summaries):
        vocab = run_or_summaries.vocab
    tables = [
        _neuron_table(name, ss, vocab, threshold, dormant_tau, positional_threshold, token_threshold,
                      bos_share, bos_rate)
        for name, ss in _site_summaries(run_or_summaries, site)
    ]
    table = pd.concat(tables, ignore_index=True)
    return table if label is None else with_label_columns(table, run_or_summaries, label, site)


def with_label_columns(table: pd.DataFrame, run_or_summaries: RunOrSummaries, label: str,
                       site: str | None = None) -> pd.DataFrame:
    """``table`` (one row per ``site, unit``) with the label columns of
    :func:`neuronscope.analyses.locate.label_columns` for the label field ``label``:
    ``top_label`` (value with the highest activation probability), ``top_label_prob``,
    ``lape_entropy`` and ``lape_labels`` (values LAPE finds the neuron specific to, Tang et
    al. 2024; pooled over the selected sites)."""
    from neuronscope.analyses.locate import label_columns

    cols = label_columns(run_or_summaries, label, site)
    return table.merge(cols, on=["site", "unit"], how="left")


def site_summary(
    run_or_summaries: RunOrSummaries,
    site: str | None = None,
    threshold: float | None = None,
    dormant_tau: float = 0.025,
) -> pd.DataFrame:
    """One row per site: ``units``, ``samples``; ``pct_active_per_token`` = mean over
    tokens of the % of the site's neurons active (Li et al., *The Lazy Neuron
    Phenomenon*; equals ``100 * mean(freq)``); ``dead_frac``; ``dormant_frac``
    (ReDo, ``tau = dormant_tau``); ``powerlaw_exponent`` (:func:`powerlaw_exponent`)
    and ``top20_share`` (:func:`top_share`, PowerInfer)."""
    rows = []
    for name, ss in _site_summaries(run_or_summaries, site):
        r = ss.result()
        freq = firing_frequency(r, threshold)
        tokens = int(r["firing.tokens"])
        if threshold is None and tokens:
            pct = 100.0 * float(r["firing.active_frac_sum"]) / tokens
        else:
            pct = 100.0 * float(np.nanmean(freq)) if tokens else float("nan")
        dscore = dormant_scores(r["moments.mean_abs"])
        rows.append(
            {
                "site": name,
                "units": len(freq),
                "samples": int(r["moments.count"][0]) if len(freq) else 0,
                "pct_active_per_token": pct,
                "dead_frac": float(np.mean(freq == 0)),
                "dormant_frac": float(np.mean(dscore <= dormant_tau)),
                "powerlaw_exponent": powerlaw_exponent(freq),
                "top20_share": top_share(freq, 0.2),
            }
        )
    return pd.DataFrame(rows, columns=SITE_COLUMNS)


def _sample_rows(samples: Mapping[str, np.ndarray], sample: np.ndarray) -> np.ndarray:
    """Row of each global sample id of ``sample`` in ``samples`` (-1 where absent); ids are
    row numbers when ``samples['sample']`` is missing or ``0..n-1``."""
    n = len(samples["token_id"])
    sid = samples.get("sample")
    if sid is None or np.array_equal(np.asarray(sid), np.arange(n)):
        return np.where((sample >= 0) & (sample < n), sample, -1)
    sid = np.asarray(sid)
    order = np.argsort(sid, kind="stable")
    at = order[np.minimum(np.searchsorted(sid, sample, sorter=order), n - 1)]
    return np.where(sid[at] == sample, at, -1)


def site_examples(
    result: Mapping[str, np.ndarray],
    samples: Mapping[str, np.ndarray] | None = None,
    vocab: Sequence[str] | None = None,
    k: int | None = None,
) -> list[list[dict[str, Any]]]:
    """The top-k activating examples of every neuron of a site, Neuroscope-style.

    ``result`` holds the site's ``topk.*`` arrays (``SiteSummaries.result()``); ``samples``
    and ``vocab`` are the run's (``run.samples``: coordinates of every sample, documents
    contiguous; ``run.vocab``). Per neuron, the first ``k`` filled examples (all with
    ``None``) in the top-k's order (activation descending, sample id ascending), each a dict
    of ``activation, sample, doc, pos, token_id, token``, plus ``tokens`` (the tokens at
    ``pos - W .. pos + W`` that lie in the same document), ``acts`` (the neuron's activation
    on each of them, None if unknown) and ``peak`` (index of the example's own token in
    ``tokens``). Without ``samples`` the neighbours' ids are unknown and their tokens are
    ``""``; without ``vocab`` a token is its id as text. Vectorised over neurons.
    """
    values, sample = result["topk.values"], result["topk.sample"]
    ctx = result["topk.context"]
    units, kk = sample.shape
    window = (ctx.shape[-1] - 1) // 2
    offsets = np.arange(-window, window + 1)
    filled = sample >= 0
    rank = np.cumsum(filled, axis=1) - 1
    take = filled & (rank < (kk if k is None else max(int(k), 0)))
    in_doc = ~np.isnan(ctx)
    in_doc[..., window] = True
    tids = np.full(ctx.shape, -1, dtype=np.int64)
    tids[..., window] = result["topk.token_id"]
    if samples is not None and "token_id" in samples and len(samples["token_id"]):
        tok = np.asarray(samples["token_id"])
        n = len(tok)
        rows = _sample_rows(samples, sample)
        nb = rows[..., None] + offsets
        ok = (rows[..., None] >= 0) & (nb >= 0) & (nb < n)
        nbc = np.clip(nb, 0, n - 1)
        if "doc" in samples:
            doc = np.asarray(samples["doc"])
            ok &= doc[nbc] == doc[np.clip(rows, 0, n - 1)][..., None]
        has_row = rows[..., None] >= 0
        tids = np.where(has_row, np.where(ok, tok[nbc], -1), tids)
        in_doc &= np.where(has_row, ok, True)
    strings = list(vocab) if vocab is not None else []

    def token_str(t: int) -> str:
        if 0 <= t < len(strings):
            return str(strings[t])
        return str(t) if t >= 0 else ""

    doc_, pos_, tid_ = result["topk.doc"], result["topk.pos"], result["topk.token_id"]
    out: list[list[dict[str, Any]]] = []
    for u in range(units):
        exs = []
        for j in np.flatnonzero(take[u]):
            keep = np.flatnonzero(in_doc[u, j])
            acts = ctx[u, j, keep]
            exs.append({
                "activation": float(values[u, j]),
                "sample": int(sample[u, j]),
                "doc": int(doc_[u, j]),
                "pos": int(pos_[u, j]),
                "token_id": int(tid_[u, j]),
                "token": token_str(int(tid_[u, j])),
                "tokens": [token_str(int(t)) for t in tids[u, j, keep]],
                "acts": [None if a != a else float(a) for a in acts.tolist()],
                "peak": int(np.searchsorted(keep, window)),
            })
        out.append(exs)
    return out


def top_examples(
    run: RunOrSummaries,
    site: str,
    unit: int,
    k: int | None = None,
    *,
    samples: Mapping[str, np.ndarray] | None = None,
    vocab: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The top-k activating examples of one neuron, Neuroscope-style: :func:`site_examples`
    for unit ``unit`` of ``site`` (same dicts).

    Token strings and context tokens come from the run's ``samples`` and ``vocab``; for a
    plain ``{site: SiteSummaries}`` dict pass them as keyword arguments (without them the
    neighbours' ids are unknown and their tokens are ``""``).
    """
    if _is_run(run):
        ss = run.summaries(site)
        if ss is None:
            raise NeuronscopeError(f"site {site!r} has no summaries; record it with summaries")
        samples = run.samples if samples is None else samples
        vocab = run.vocab if vocab is None else vocab
    elif isinstance(run, Mapping):
        if site not in run:
            raise NeuronscopeError(f"no site {site!r}; sites: {list(run)}")
        ss = run[site]
    else:
        raise NeuronscopeError("pass a Run (neuronscope.open_run) or a dict {site: SiteSummaries}")
    tk = ss.parts["topk"].result()
    units = tk["values"].shape[0]
    if not 0 <= unit < units:
        raise NeuronscopeError(f"unit {unit} is out of range for site {site!r} (0..{units - 1})")
    one = {f"topk.{key}": v[unit : unit + 1] for key, v in tk.items()}
    return site_examples(one, samples, vocab, k)[0]
