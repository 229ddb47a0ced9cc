"""System-identification harness: would a comparison metric pick the right model?

Han, Poggio & Cheung, "System identification of neural systems: If we got it right, would
we know?" (ICML 2023): replace the brain by a known ground-truth model, simulate a
recording from it, and ask each comparison metric which candidate model is the brain. Here
the "brain" is one candidate's population (or a held-out network) with

* a random subsample of ``n_neurons`` units,
* optional random linear mixing of those units (``mixing=True``: ``B = S M``, M Gaussian),
* additive Gaussian noise at a chosen SNR (per neuron: noise variance = signal variance / snr),
* ``n_stimuli`` stimuli drawn from the pool,

repeated over ``draws``; per metric we report how often the true model ranks first.

The design of topological RSA (Lin & Kriegeskorte, "The Topology and Geometry of Neural
Representations", PNAS 2024) is ``layer_design``: the truth is one layer of one network
instance, the candidates are the same and other layers of instances trained from *other*
random seeds (a candidate's score is the mean over its instances).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from neuronscope.errors import NeuronscopeError

Metric = Callable[[np.ndarray, np.ndarray], float]


def default_metrics() -> dict[str, Metric]:
    """The comparison metrics of ``neuronscope.analyses.compare`` as similarity scores
    ``f(model, brain)`` (higher = more similar): linear CKA, RSA (correlation-distance RDMs,
    Spearman), topological RSA, ridge encoding (mean held-out r over brain neurons, model →
    brain, 5-fold CV with α chosen on the same folds) and Procrustes (negated distance
    between unit-Frobenius-norm populations, so the brain's arbitrary scale does not count)."""
    from neuronscope.analyses import compare

    return {
        "linear_cka": lambda m, b: float(compare.linear_cka(m, b)),
        "rsa": lambda m, b: float(compare.rsa(m, b)),
        "trsa": lambda m, b: float(compare.trsa(m, b)),
        "encoding": lambda m, b: float(np.nanmean(compare.encoding_score(m, b, inner_cv=None))),
        "procrustes": lambda m, b: -float(compare.procrustes_distance(m, b, normalize=True)),
    }


def simulate_brain(
    acts: np.ndarray,
    n_neurons: int | None,
    snr: float,
    mixing: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """A simulated recording of a population ``acts`` (stimuli × units): ``n_neurons``
    random units (all if None or larger), optionally mixed by a Gaussian matrix
    ``M_ij ~ N(0, 1/n)``, plus Gaussian noise with per-neuron variance ``var(signal)/snr``
    (``snr=inf``: no noise)."""
    if snr <= 0:
        raise NeuronscopeError("snr must be positive (use inf for no noise)")
    a = np.asarray(acts, dtype=np.float64)
    k = a.shape[1] if n_neurons is None or n_neurons >= a.shape[1] else int(n_neurons)
    s = a[:, np.sort(rng.choice(a.shape[1], size=k, replace=False))]
    if mixing:
        s = s @ (rng.standard_normal((k, k)) / np.sqrt(k))
    if np.isfinite(snr):
        sd = np.sqrt(s.var(axis=0) / snr)
        s = s + rng.standard_normal(s.shape) * sd
    return s.astype(np.float32)


def _instances(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return [value]
    inst = [np.asarray(v) for v in value]
    if not inst or any(v.ndim != 2 for v in inst):
        raise NeuronscopeError("each candidate must be a (stimuli × units) array or a list of such arrays")
    return inst


def sysid_scores(
    candidates: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    true_key: str,
    metrics: Mapping[str, Metric] | None = None,
    snr: float = 1.0,
    n_stimuli: int = 100,
    n_neurons: int | None = 50,
    mixing: bool = False,
    draws: int = 20,
    seed: int = 0,
    brain: np.ndarray | None = None,
) -> pd.DataFrame:
    """Scores of every candidate under every metric over ``draws`` simulated recordings.

    ``candidates``: {name: (pool × units) array, or a list of arrays = instances whose scores
    are averaged}; all on the same stimulus pool (rows). ``brain``: the population the
    recording is simulated from (default: the first instance of ``candidates[true_key]``).
    Returns long rows: draw, metric, candidate, score, rank (1 = best; ties share the worse
    rank, so a tie never counts as a recovery), is_true.
    """
    if true_key not in candidates:
        raise NeuronscopeError(f"true model {true_key!r} is not among the candidates: {', '.join(candidates)}")
    if len(candidates) < 2:
        raise NeuronscopeError("system identification needs at least two candidate models")
    if draws < 1:
        raise NeuronscopeError("draws must be a positive integer")
    metrics = default_metrics() if metrics is None else dict(metrics)
    cands = {k: _instances(v) for k, v in candidates.items()}
    source = np.asarray(brain) if brain is not None else cands[true_key][0]
    pool = len(source)
    if any(len(v) != pool for inst in cands.values() for v in inst):
        raise NeuronscopeError("every candidate and the brain must share the same stimulus pool (rows)")
    if not 3 <= n_stimuli <= pool:
        raise NeuronscopeError(f"n_stimuli must be between 3 and the pool size {pool}")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for d in range(draws):
        stim = np.sort(rng.choice(pool, size=n_stimuli, replace=False))
        rec = simulate_brain(source[stim], n_neurons, snr, mixing, rng)
        for mname, fn in metrics.items():
            scores = {k: float(np.mean([fn(v[stim], rec) for v in inst])) for k, inst in cands.items()}
            vals = np.array([scores[k] if np.isfinite(scores[k]) else -np.inf for k in cands])
            ranks = (vals[None, :] >= vals[:, None]).sum(axis=1)
            for (k, sc), rk in zip(scores.items(), ranks, strict=True):
                rows.append({"draw": d, "metric": mname, "candidate": k, "score": sc,
                             "rank": int(rk), "is_true": k == true_key})
    return pd.DataFrame(rows)


def recovery_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per metric: ``recovery`` (fraction of draws where the true model ranks first, alone),
    ``mean_rank`` of the true model, ``margin`` (mean true score minus the best other
    score), ``draws`` and ``chance`` (1 / number of candidates)."""
    n_cand = scores.groupby(["metric", "draw"])["candidate"].nunique().groupby("metric").first()
    rows = []
    for m, g in scores.groupby("metric", sort=False):
        t = g[g["is_true"]].set_index("draw")
        best_other = g[~g["is_true"]].groupby("draw")["score"].max()
        rows.append({
            "metric": m,
            "recovery": float((t["rank"] == 1).mean()),
            "mean_rank": float(t["rank"].mean()),
            "margin": float((t["score"] - best_other).mean()),
            "draws": len(t),
            "chance": 1.0 / n_cand[m],
        })
    return pd.DataFrame(rows)


def sysid(
    candidates: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    true_key: str,
    metrics: Mapping[str, Metric] | None = None,
    snr: float = 1.0,
    n_stimuli: int = 100,
    n_neurons: int | None = 50,
    mixing: bool = False,
    draws: int = 20,
    seed: int = 0,
    brain: np.ndarray | None = None,
) -> pd.DataFrame:
    """How often each metric identifies the true model (Han et al. 2023's test).

    Runs ``sysid_scores`` and summarizes it with ``recovery_table``; the conditions (snr,
    n_stimuli, n_neurons, mixing) are added as columns so tables of several conditions
    concatenate into a sweep (see ``sysid_sweep`` and ``plot_sysid``).
    """
    table = recovery_table(sysid_scores(
        candidates, true_key, metrics, snr, n_stimuli, n_neurons, mixing, draws, seed, brain))
    return table.assign(snr=snr, n_stimuli=n_stimuli, n_neurons=n_neurons or 0, mixing=mixing)


def sysid_sweep(
    candidates: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    true_key: str,
    snrs: Sequence[float] = (0.1, 1.0, 10.0),
    n_stimuli: Sequence[int] = (100,),
    **kw: Any,
) -> pd.DataFrame:
    """``sysid`` over a grid of SNRs × stimulus counts (same seeds per cell), concatenated."""
    return pd.concat([sysid(candidates, true_key, snr=s, n_stimuli=n, **kw)
                      for n in n_stimuli for s in snrs], ignore_index=True)


def collect_activations(
    model: Any, source: Any, sites: str, max_samples: int, conv: str = "positions"
) -> dict[str, np.ndarray]:
    """The first ``max_samples`` samples' activations of each site of ``model`` over
    ``source`` ({site: float32 (samples, units)}) — a stimulus pool held in memory, bounded
    by ``max_samples``; the forward passes stop as soon as the pool is full."""
    import torch

    from neuronscope.recording import forward_batches

    if max_samples < 3:
        raise NeuronscopeError("the stimulus pool needs at least 3 samples")
    parts: dict[str, list[np.ndarray]] = {}
    seen = 0
    with torch.inference_mode():  # the generator's own context must not outlive this call
        gen = forward_batches(model, source, sites, conv=conv)
        try:
            for _, acts in gen:
                take = min(max_samples - seen, len(next(iter(acts.values()))))
                for k, a in acts.items():
                    parts.setdefault(k, []).append(a[:take].copy())
                seen += take
                if seen >= max_samples:
                    break
        finally:
            gen.close()
    if seen < 3:
        raise NeuronscopeError("the source gave fewer than 3 samples; give a longer corpus")
    return {k: np.concatenate(v) for k, v in parts.items()}


def layer_design(
    acts: Mapping[str, Mapping[str, np.ndarray]], truth_model: str, truth_site: str
) -> tuple[dict[str, list[np.ndarray]], np.ndarray, str]:
    """The topological-RSA simulation design (Lin & Kriegeskorte 2024).

    ``acts[model][site]`` are populations on one stimulus pool, the models being instances
    of one architecture trained from different seeds. The brain is ``truth_site`` of
    ``truth_model``; the candidates are the sites (layers), each with its instances in the
    *other* models; the correct answer is ``truth_site``. Returns (candidates, brain,
    true_key) for ``sysid``.
    """
    if truth_model not in acts or truth_site not in acts[truth_model]:
        raise NeuronscopeError(f"truth {truth_model}:{truth_site} is not among the recorded models/sites")
    others = [m for m in acts if m != truth_model]
    if not others:
        raise NeuronscopeError("the layer design needs at least one model besides the truth (other seeds)")
    site_names = [s for s in acts[truth_model] if all(s in acts[m] for m in others)]
    cands = {s: [np.asarray(acts[m][s]) for m in others] for s in site_names}
    return cands, np.asarray(acts[truth_model][truth_site]), truth_site


def plot_sysid(table: pd.DataFrame, x: str | None = None, ax: Any = None, path: str | None = None) -> Any:
    """Plot recovery rate per metric: a line per metric against ``x`` (``snr`` — log axis —
    or ``n_stimuli``) when the table holds several conditions, else one bar per metric; the
    dashed line is chance. Saves to ``path`` if given; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    if x is None:
        x = next((c for c in ("snr", "n_stimuli", "n_neurons") if c in table and table[c].nunique() > 1), None)
    if x is None:
        ax.bar(table["metric"], table["recovery"], color="tab:blue")
        ax.set_xlabel("metric")
    else:
        others = [c for c in ("snr", "n_stimuli", "n_neurons", "mixing")
                  if c != x and c in table and table[c].nunique() > 1]
        markers, dashes = "osD^vP*X", ["-", "--", "-.", ":"]
        for i, (key, g) in enumerate(table.groupby(["metric", *others], sort=False)):
            key = key if isinstance(key, tuple) else (key,)
            label = key[0] + "".join(f", {c}={v}" for c, v in zip(others, key[1:], strict=True))
            g = g.sort_values(x)
            ax.plot(g[x], g["recovery"], marker=markers[i % len(markers)],
                    ls=dashes[i % len(dashes)], alpha=0.85, label=label)
        if x == "snr":
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.legend(fontsize=8)
    ax.axhline(float(table["chance"].iloc[0]), ls=":", color="gray", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("true model ranked first")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
