"""Neuron matching across networks: universal neurons, alignments, Rosetta neurons.

* Universal neurons (Gurnee et al., "Universal Neurons in GPT2 Language Models", 2024):
  a neuron's statistic is, for each other model, its maximum Pearson correlation with any
  neuron of that model; the neuron is *universal* when that maximum exceeds a threshold in
  every other model. Chance level comes from the same statistic against a randomly rotated
  basis of the other model (or from untrained networks of the same architecture).
* Alignments (Li, Yosinski et al., "Convergent Learning: Do different neural networks learn
  the same representations?", ICLR 2016): one-to-one by maximum-weight bipartite matching of
  the correlation matrix, one-to-many by sparse (lasso) prediction of a neuron from the other
  network's neurons, many-to-many by spectral clustering of the joint correlation graph.
* Rosetta neurons (Dravid et al., "Rosetta Neurons: Mining the Common Units in a Model
  Zoo", ICCV 2023): sets of one neuron per model that are pairwise mutual best matches
  ("best buddies") across all models of the zoo.
* :func:`match_report` — all of the above for one lockstep recording, as records and tables
  (a :class:`MatchReport`; what ``neuronscope match`` prints).

Everything works from streamed cross-products (``CrossProducts`` / ``Lockstep``), so no
activation matrix is needed; ``Lockstep.from_arrays`` wraps in-memory populations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from neuronscope.errors import NeuronscopeError
from neuronscope.lockstep import Lockstep
from neuronscope.summaries.crossprod import CrossProducts, _corr


def max_correlation(corr: np.ndarray, absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``corr`` (neurons of A × neurons of B): ``max_j r_ij`` and its ``argmax``.

    NaN entries (zero-variance neurons) are ignored; a row with no finite entry gives
    ``(NaN, -1)``. ``absolute=True`` maximizes ``|r_ij|`` instead.
    """
    c = np.abs(corr) if absolute else np.asarray(corr)
    if c.ndim != 2 or c.shape[1] == 0:
        raise NeuronscopeError("max_correlation needs a 2-D correlation matrix with at least one column")
    filled = np.where(np.isnan(c), -np.inf, c)
    arg = filled.argmax(axis=1)
    val = filled[np.arange(len(c)), arg]
    dead = ~np.isfinite(val)
    return np.where(dead, np.nan, val), np.where(dead, -1, arg)


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix: Q of the QR factorization of a Gaussian matrix with
    the signs fixed so R has a positive diagonal (Mezzadri 2007). The Householder QR runs in
    torch's LAPACK (MKL), several times faster here than numpy's for d in the thousands."""
    import torch

    q, r = torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, d))))
    return (q * torch.sign(torch.diagonal(r))).numpy()


def rotation_baseline(
    cross: CrossProducts, blocks: list[int] | None = None, seed: int = 0
) -> np.ndarray:
    """Correlation of x with a randomly rotated basis of y: ``corr(X, Y Q)``.

    ``Q`` is Haar-random orthogonal, block-diagonal over ``blocks`` (unit counts of y's sites,
    default one block), so each rotated unit mixes the units of one site. From the streamed
    statistics: ``cov(X, YQ) = cov(X, Y) Q`` and ``var((YQ)_j) = q_jᵀ cov(Y) q_j``; needs
    ``gram=True``. This is the chance level of the universal-neuron statistic: a rotated basis
    spans the same space but its units are not the network's own.
    """
    rng = np.random.default_rng(seed)
    blocks = [cross.ny] if blocks is None else list(blocks)
    if sum(blocks) != cross.ny:
        raise NeuronscopeError(f"rotation blocks sum to {sum(blocks)}, y has {cross.ny} units")
    cxy, cyy = cross.cov_xy(), cross.cov_yy()
    out_cov = np.empty_like(cxy)
    out_var = np.empty(cross.ny)
    c0 = 0
    for b in blocks:
        sl = slice(c0, c0 + b)
        q = _orthogonal(b, rng)
        out_cov[:, sl] = cxy[:, sl] @ q
        out_var[sl] = np.sum(q * (cyy[sl, sl] @ q), axis=0)
        c0 += b
    return _corr(out_cov, cross.var_x(), np.maximum(out_var, 0.0))


def universal_neurons(
    lock: Lockstep,
    threshold: float = 0.5,
    models: list[str] | None = None,
    sites: str | None = None,
    same_site: bool = False,
    baseline: bool = True,
    seed: int = 0,
    quantile: float = 0.99,
) -> pd.DataFrame:
    """Universal-neuron statistics (Gurnee et al. 2024) for every neuron of ``models``.

    For neuron ``i`` of model ``A`` and each other model ``B``: ``ρ_B(i) = max_j r(i, j)`` over
    B's neurons (all of B's recorded sites, or the same-named site with ``same_site=True``).
    The universality statistic is ``ρ(i) = min_B ρ_B(i)``; ``universal = ρ(i) > threshold``
    (the neuron has a strongly correlated partner in *every* other model). With
    ``baseline=True`` the same statistic against a Haar-rotated basis of each other model's
    sites (``rotation_baseline``) gives ``baseline_corr`` and ``baseline_universal``, and
    ``excess = ρ − baseline_corr``. Zero-variance (dead) neurons get NaN and are never
    universal. ``sites`` restricts which of A's neurons are reported (glob).

    A fixed threshold means different things on different networks: on small nets whose
    units span a low-dimensional space almost every direction correlates strongly with some
    unit of another net, so 0.5 calls ~all neurons *and* ~all rotated-basis units universal.
    The baseline therefore also calibrates a threshold per site of ``A``:
    ``calibrated_threshold`` = the ``quantile`` (default 0.99) quantile of ``baseline_corr``
    over the site's live neurons — the value the rotated basis exceeds 1% of the time — and
    ``universal_calibrated = ρ(i) > calibrated_threshold`` (``baseline_universal_calibrated``
    is the baseline's own, ≈ 1 − ``quantile`` of the site by construction).

    Returns one row per neuron: model, site, unit, dead, corr[<B>] and match[<B>] per other
    model, max_corr (= ρ), universal, and the baseline and calibrated columns.
    """
    models = list(lock.models if models is None else models)
    if len(models) < 2:
        raise NeuronscopeError("universal neurons need at least two models; pass two or more")
    if not 0 <= threshold <= 1:
        raise NeuronscopeError("threshold is a correlation; give a value in [0, 1]")
    if not 0 < quantile < 1:
        raise NeuronscopeError(f"quantile must be in (0, 1) (0.99 = the baseline's 99th percentile), not {quantile}")
    frames = []
    for a in models:
        site_a, unit_a = lock.labels(a, sites)
        df = pd.DataFrame({"model": a, "site": site_a, "unit": unit_a})
        stats, base = [], []
        for b in models:
            if b == a:
                continue
            best = np.full(len(df), np.nan)
            bbest = np.full(len(df), np.nan)
            match = np.full(len(df), "", dtype=object)
            # (rows of df, glob of A's sites, glob of B's sites, B's rotation blocks)
            if same_site:
                missing = [sa for sa in lock.sites[a] if sa not in lock.sites[b]]
                if missing:
                    raise NeuronscopeError(
                        f"same_site: model {b!r} has no site {missing[0]!r}; "
                        "use same_site=False to search all of its sites"
                    )
                groups = [(np.flatnonzero(site_a == sa), sa, sa, [lock.sites[b][sa]])
                          for sa in lock.sites[a]]
            else:
                groups = [(np.arange(len(df)), sites, None, list(lock.sites[b].values()))]
            for rows, glob_a, glob_b, blocks in groups:
                if len(rows) == 0:
                    continue
                cp = lock.cross(a, b, glob_a, glob_b)
                val, arg = max_correlation(cp.correlation())
                site_b, unit_b = lock.labels(b, glob_b)
                best[rows] = val
                match[rows] = [f"{site_b[j]}:{unit_b[j]}" if j >= 0 else "" for j in arg]
                if baseline:
                    rb = rotation_baseline(cp, blocks, seed=seed + len(stats))
                    bbest[rows] = max_correlation(rb)[0]
            df[f"corr[{b}]"] = best
            df[f"match[{b}]"] = match
            stats.append(best)
            base.append(bbest)
        stat = np.stack(stats)
        dead = np.isnan(stat).all(axis=0)
        df["dead"] = dead
        with np.errstate(invalid="ignore"):
            df["max_corr"] = np.where(np.isnan(stat).any(axis=0), np.nan, stat.min(axis=0))
        df["universal"] = df["max_corr"].to_numpy() > threshold
        if baseline:
            bstat = np.stack(base)
            df["baseline_corr"] = np.where(np.isnan(bstat).any(axis=0), np.nan, bstat.min(axis=0))
            df["baseline_universal"] = df["baseline_corr"].to_numpy() > threshold
            df["excess"] = df["max_corr"] - df["baseline_corr"]
            cal = np.full(len(df), np.nan)
            for sa in dict.fromkeys(site_a.tolist()):
                rows = np.flatnonzero(site_a == sa)
                vals = df["baseline_corr"].to_numpy()[rows]
                vals = vals[np.isfinite(vals)]
                if len(vals):
                    cal[rows] = np.quantile(vals, quantile)
            df["calibrated_threshold"] = cal
            with np.errstate(invalid="ignore"):
                df["universal_calibrated"] = df["max_corr"].to_numpy() > cal
                df["baseline_universal_calibrated"] = df["baseline_corr"].to_numpy() > cal
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["threshold"] = threshold
    if baseline:
        out.attrs["quantile"] = quantile
    return out


def universal_fractions(neurons: pd.DataFrame, untrained: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, site): fraction of (live) neurons that are universal, against chance.

    ``universal_frac`` is the fraction above the fixed threshold; ``baseline_frac`` the
    fraction universal against rotated bases (if ``neurons`` has the baseline columns), and
    beside them the baseline-calibrated threshold of the site (``calibrated_threshold``), the
    fraction of neurons above it (``calibrated_frac``) and the rotated baseline's own fraction
    above it (``baseline_calibrated_frac``, ≈ 1 − quantile); ``untrained_frac`` the per-site
    fraction (averaged over models) of ``untrained`` — ``universal_neurons`` run on untrained
    networks of the same architecture. ``excess`` = universal_frac − the larger available
    baseline.
    """
    rows = []
    base_un = None
    if untrained is not None:
        live = untrained[~untrained["dead"]]
        base_un = live.groupby("site")["universal"].mean()
    for (model, site), g in neurons.groupby(["model", "site"], sort=False):
        live = g[~g["dead"]]
        row = {
            "model": model,
            "site": site,
            "units": len(g),
            "dead": int(g["dead"].sum()),
            "universal": int(live["universal"].sum()),
            "universal_frac": float(live["universal"].mean()) if len(live) else float("nan"),
            "mean_max_corr": float(live["max_corr"].mean()) if len(live) else float("nan"),
        }
        bases = []
        if "baseline_universal" in g:
            row["baseline_frac"] = float(live["baseline_universal"].mean()) if len(live) else float("nan")
            row["baseline_mean_corr"] = float(live["baseline_corr"].mean()) if len(live) else float("nan")
            bases.append(row["baseline_frac"])
        if "calibrated_threshold" in g:
            row["calibrated_threshold"] = float(live["calibrated_threshold"].iloc[0]) if len(live) else float("nan")
            row["calibrated_frac"] = float(live["universal_calibrated"].mean()) if len(live) else float("nan")
            row["baseline_calibrated_frac"] = (float(live["baseline_universal_calibrated"].mean())
                                               if len(live) else float("nan"))
        if base_un is not None:
            row["untrained_frac"] = float(base_un.get(site, np.nan))
            bases.append(row["untrained_frac"])
        if bases:
            row["excess"] = row["universal_frac"] - np.nanmax(bases)
        rows.append(row)
    return pd.DataFrame(rows)


def match_one_to_one(corr: np.ndarray | CrossProducts, absolute: bool = False) -> pd.DataFrame:
    """One-to-one alignment (Convergent Learning, bipartite matching): the permutation
    ``π`` maximizing ``Σ_i r(i, π(i))`` (Hungarian algorithm, ``scipy.optimize.
    linear_sum_assignment``); rectangular matrices match min(nA, nB) pairs.

    Returns rows ``unit_a, unit_b, corr`` (and ``best_b``, ``semi_corr``: each A neuron's
    unconstrained best match — the "semi-matching" of the paper) sorted by ``unit_a``.
    Zero-variance neurons (NaN correlations) weigh as −1 so they match last.
    """
    r = corr.correlation() if isinstance(corr, CrossProducts) else np.asarray(corr, dtype=np.float64)
    if r.ndim != 2 or 0 in r.shape:
        raise NeuronscopeError("match_one_to_one needs a non-empty 2-D correlation matrix")
    w = np.abs(r) if absolute else r
    w = np.where(np.isnan(w), -1.0, w)
    ia, ib = linear_sum_assignment(w, maximize=True)
    semi, best = max_correlation(r, absolute)
    return pd.DataFrame({
        "unit_a": ia, "unit_b": ib, "corr": r[ia, ib], "best_b": best[ia], "semi_corr": semi[ia],
    })


@dataclass
class OneToMany:
    """Sparse prediction of each A neuron from all B neurons (standardized units).

    ``coef`` (nB, nA): lasso weights; ``r2`` (nA,): variance of the A neuron explained;
    ``r2_single`` (nA,): the best single B neuron's r² (max r²) for comparison; ``alpha``.
    """

    coef: np.ndarray
    r2: np.ndarray
    r2_single: np.ndarray
    alpha: float

    def table(self, top: int = 5) -> pd.DataFrame:
        """One row per A neuron: r2, r2_single, n_predictors and the ``top`` B neurons by |weight|."""
        rows = []
        for i in range(self.coef.shape[1]):
            w = self.coef[:, i]
            nz = np.flatnonzero(w)
            order = nz[np.argsort(-np.abs(w[nz]))][:top]
            rows.append({"unit_a": i, "r2": self.r2[i], "r2_single": self.r2_single[i],
                         "n_predictors": len(nz), "predictors": order.tolist(),
                         "weights": w[order].round(4).tolist()})
        return pd.DataFrame(rows)


def _lasso_gram(R: np.ndarray, r: np.ndarray, alpha: float, max_iter: int, tol: float) -> np.ndarray:
    """Coordinate descent for ``min_w ½ wᵀRw − rᵀw + α‖w‖₁`` for all columns of ``r`` at once."""
    ny, nt = r.shape
    W = np.zeros((ny, nt))
    G = np.zeros((ny, nt))  # R @ W, kept up to date
    diag = np.diag(R).copy()
    for _ in range(max_iter):
        delta = 0.0
        for j in range(ny):
            if diag[j] <= 0:
                continue
            g = r[j] - G[j] + diag[j] * W[j]
            new = np.sign(g) * np.maximum(np.abs(g) - alpha, 0.0) / diag[j]
            d = new - W[j]
            if np.any(d):
                G += np.outer(R[:, j], d)
                W[j] = new
                delta = max(delta, float(np.abs(d).max()))
        if delta < tol:
            break
    return W


def match_one_to_many(
    cross: CrossProducts, alpha: float = 0.05, max_iter: int = 200, tol: float = 1e-6
) -> OneToMany:
    """One-to-many alignment (Convergent Learning, sparse prediction): each neuron of A is
    predicted from all neurons of B by an L1-penalized linear regression on standardized
    units, ``min_w (1/2n)‖z_a − Z_B w‖² + α‖w‖₁``, solved from the streamed statistics alone:
    with R = corr(B, B) and r = corr(B, a) the objective is ``½(1 − 2rᵀw + wᵀRw) + α‖w‖₁``
    (coordinate descent); ``r2 = 2rᵀw − wᵀRw`` (in-sample). Needs ``gram=True``.
    Zero-variance neurons get zero weight and r2 0.
    """
    if alpha <= 0:
        raise NeuronscopeError("alpha (the L1 penalty) must be positive")
    R = np.nan_to_num(cross.corr_yy(), nan=0.0)
    dead_b = np.isnan(np.diag(cross.corr_yy()))
    R[dead_b, :] = 0.0
    R[:, dead_b] = 0.0
    r = np.nan_to_num(cross.correlation().T, nan=0.0)  # (nB, nA)
    W = _lasso_gram(R, r, alpha, max_iter, tol)
    r2 = 2 * (r * W).sum(0) - (W * (R @ W)).sum(0)
    return OneToMany(W, np.clip(r2, 0.0, 1.0), (r**2).max(axis=0), float(alpha))


@dataclass
class ManyToMany:
    """Spectral clusters of the joint correlation graph of A's and B's neurons.

    ``labels_a`` (nA,), ``labels_b`` (nB,): cluster of each neuron; ``clusters``: one row per
    cluster with n_a, n_b, mean_between (mean r between its A and B members) and
    mean_within_a / mean_within_b.
    """

    labels_a: np.ndarray
    labels_b: np.ndarray
    clusters: pd.DataFrame


def match_many_to_many(cross: CrossProducts, n_clusters: int, seed: int = 0) -> ManyToMany:
    """Many-to-many alignment (Convergent Learning, spectral clustering): the affinity is the
    joint correlation matrix ``[[R_AA, R_AB], [R_BA, R_BB]]`` with negative and undefined
    entries set to 0 (and 1 on the diagonal); normalized spectral clustering
    (``sklearn.cluster.SpectralClustering``, precomputed affinity) splits the nA + nB
    neurons into ``n_clusters`` groups. Clusters holding neurons of both nets are
    many-to-many matches. Needs ``gram=True``.
    """
    from sklearn.cluster import SpectralClustering

    na, nb = cross.nx, cross.ny
    if not 2 <= n_clusters <= na + nb:
        raise NeuronscopeError(f"n_clusters must be between 2 and {na + nb}")
    J = np.block([[cross.corr_xx(), cross.correlation()], [cross.correlation().T, cross.corr_yy()]])
    J = np.nan_to_num(J, nan=0.0)
    J = np.maximum(J, 0.0)
    np.fill_diagonal(J, 1.0)
    labels = SpectralClustering(
        n_clusters=n_clusters, affinity="precomputed", random_state=seed, assign_labels="discretize"
    ).fit_predict(J)
    la, lb = labels[:na], labels[na:]
    rows = []
    for c in range(n_clusters):
        ia, ib = np.flatnonzero(la == c), na + np.flatnonzero(lb == c)
        rows.append({
            "cluster": c, "n_a": len(ia), "n_b": len(ib),
            "mean_between": float(J[np.ix_(ia, ib)].mean()) if len(ia) and len(ib) else float("nan"),
            "mean_within_a": _offdiag_mean(J[np.ix_(ia, ia)]),
            "mean_within_b": _offdiag_mean(J[np.ix_(ib, ib)]),
        })
    return ManyToMany(la, lb, pd.DataFrame(rows))


def _offdiag_mean(m: np.ndarray) -> float:
    k = len(m)
    return float((m.sum() - np.trace(m)) / (k * (k - 1))) if k > 1 else float("nan")


def best_buddies(corr: np.ndarray, min_corr: float = 0.0) -> np.ndarray:
    """Mutual best matches ("best buddies"): pairs ``(i, j)`` with ``j = argmax_j r_ij``,
    ``i = argmax_i r_ij`` and ``r_ij ≥ min_corr``; returns an (k, 2) int array."""
    _, ab = max_correlation(corr)
    _, ba = max_correlation(np.asarray(corr).T)
    i = np.flatnonzero(ab >= 0)
    i = i[ba[ab[i]] == i]
    pairs = np.stack([i, ab[i]], axis=1)
    return pairs[np.asarray(corr)[pairs[:, 0], pairs[:, 1]] >= min_corr]


def rosetta_neurons(
    lock: Lockstep, models: list[str] | None = None, sites: str | None = None, min_corr: float = 0.0
) -> pd.DataFrame:
    """Rosetta neurons (Dravid et al. 2023): groups of one neuron per model that are pairwise
    best buddies (mutual argmax of the correlation, ``≥ min_corr``) for *every* pair of models
    of the zoo. Each neuron has at most one best buddy per other model, so the groups are the
    connected components of the best-buddy graph that hold exactly one neuron of each model
    and all M(M−1)/2 edges.

    Returns long rows: group, model, site, unit, mean_corr and min_corr of the group's pairs
    (groups sorted by mean_corr, strongest first).
    """
    models = list(lock.models if models is None else models)
    if len(models) < 2:
        raise NeuronscopeError("Rosetta neurons need at least two models")
    offset = {}
    total = 0
    for m in models:
        offset[m] = total
        total += len(lock.columns(m, sites))
    parent = np.arange(total)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges: dict[tuple[int, int], float] = {}
    for ai, a in enumerate(models):
        for b in models[ai + 1 :]:
            r = lock.correlation(a, b, sites, sites)
            for i, j in best_buddies(r, min_corr):
                u, v = offset[a] + i, offset[b] + j
                edges[(u, v)] = float(r[i, j])
                parent[find(u)] = find(v)
    comps: dict[int, list[int]] = {}
    for node in range(total):
        comps.setdefault(find(node), []).append(node)
    owner = np.concatenate([np.full(len(lock.columns(m, sites)), k) for k, m in enumerate(models)])
    m_count = len(models)
    groups = []
    for nodes in comps.values():
        if len(nodes) != m_count or len(set(owner[nodes])) != m_count:
            continue
        cs = [edges.get((u, v), edges.get((v, u))) for ui, u in enumerate(nodes) for v in nodes[ui + 1 :]]
        if any(c is None for c in cs):
            continue
        groups.append((float(np.mean(cs)), float(np.min(cs)), sorted(nodes, key=lambda n: owner[n])))
    groups.sort(key=lambda g: -g[0])
    labels = {m: lock.labels(m, sites) for m in models}
    rows = []
    for gi, (mean_c, min_c, nodes) in enumerate(groups):
        for node in nodes:
            m = models[owner[node]]
            local = node - offset[m]
            rows.append({"group": gi, "model": m, "site": labels[m][0][local],
                         "unit": int(labels[m][1][local]), "mean_corr": mean_c, "min_corr": min_c})
    return pd.DataFrame(rows, columns=["group", "model", "site", "unit", "mean_corr", "min_corr"])


# --------------------------------------------------------------------------- one report


@dataclass
class MatchReport:
    """Everything :func:`match_report` finds in a lockstep recording.

    Plain records (lists of dicts with JSON-able values):

    * ``correlation`` — per model pair (a, b) and site of a: mean and median over a's
      neurons of their maximum correlation with any neuron of b;
    * ``matching`` — per model pair and site both record: one-to-one matching (Convergent
      Learning) — pairs, mean matched correlation, pairs above threshold, and the share of
      pairs whose partner is also the unconstrained best match;
    * ``rosetta_top`` — the strongest Rosetta groups, each ``{"group", "mean_corr",
      "neurons": ["model/site:unit", …]}``; ``rosetta_groups`` counts all groups.

    Tables: ``neurons`` (:func:`universal_neurons`, one row per neuron) and ``fractions``
    (:func:`universal_fractions`, one row per model and site: fractions above the fixed
    ``threshold`` and above the baseline-calibrated one, whose ``quantile`` is kept here).
    """

    models: list[str]
    samples: int
    sites: dict[str, dict[str, int]]
    threshold: float
    quantile: float
    correlation: list[dict]
    matching: list[dict]
    rosetta_groups: int
    rosetta_top: list[dict]
    neurons: pd.DataFrame
    fractions: pd.DataFrame

    def to_dict(self) -> dict:
        """The report as JSON-able data (what ``neuronscope match --json`` prints): the
        records, ``universal`` (the fractions table as records) and ``rosetta`` (``groups``,
        ``top``); the per-neuron table is left out."""
        return {
            "models": list(self.models),
            "samples": int(self.samples),
            "sites": {m: dict(s) for m, s in self.sites.items()},
            "threshold": self.threshold,
            "calibration_quantile": self.quantile,
            "correlation": self.correlation,
            "universal": self.fractions.to_dict("records"),
            "matching": self.matching,
            "rosetta": {"groups": self.rosetta_groups, "top": self.rosetta_top},
        }


def match_report(
    lock: Lockstep,
    threshold: float = 0.5,
    same_site: bool = False,
    untrained: Lockstep | None = None,
    seed: int = 0,
    top_groups: int = 20,
    quantile: float = 0.99,
) -> MatchReport:
    """Correlation summary, universal neurons against chance, one-to-one matching and
    Rosetta neurons of a lockstep recording in one report (what ``neuronscope match`` shows).

    ``threshold`` is the correlation above which a neuron is universal (Gurnee et al. 2024),
    a matched pair counts as strong, and best buddies join a Rosetta group (Dravid et al.
    2023). ``same_site`` searches a neuron's partners only in the same-named site of the
    other models. The rotation baseline (``seed`` seeds its rotations) is used when ``lock``
    holds within-model Gram matrices; ``untrained`` — a lockstep recording of untrained
    networks of the same architectures, keyed by the same model names — adds the
    untrained-network baseline. ``top_groups`` Rosetta groups (strongest first) are listed.
    With the rotation baseline the universal fractions also use a threshold calibrated per
    site on it (its ``quantile`` quantile, :func:`universal_neurons`), reported beside the
    fixed one.
    """
    neurons = universal_neurons(lock, threshold=threshold, same_site=same_site, baseline=lock.within, seed=seed,
                                quantile=quantile)
    base = None
    if untrained is not None:
        base = universal_neurons(untrained, threshold=threshold, same_site=same_site, baseline=False)
    fractions = universal_fractions(neurons, untrained=base)
    correlation, matching = [], []
    for i, a in enumerate(lock.models):
        for b in lock.models[i + 1 :]:
            for sa in lock.sites[a]:
                vals = neurons.loc[(neurons["model"] == a) & (neurons["site"] == sa), f"corr[{b}]"]
                correlation.append({"model_a": a, "model_b": b, "site_a": sa,
                                    "mean_max_corr": float(vals.mean()), "median_max_corr": float(vals.median())})
                if sa in lock.sites[b]:
                    m = match_one_to_one(lock.cross(a, b, sa, sa))
                    matching.append({
                        "model_a": a, "model_b": b, "site": sa, "pairs": len(m),
                        "mean_matched_corr": float(np.nanmean(m["corr"])),
                        "matched_above_threshold": int((m["corr"] > threshold).sum()),
                        "same_as_best": float((m["unit_b"] == m["best_b"]).mean()),
                    })
    ros = rosetta_neurons(lock, min_corr=threshold)
    top = ros[ros["group"] < top_groups]  # group ids are ranked by mean correlation
    groups = [{"group": int(gid), "mean_corr": float(g["mean_corr"].iloc[0]),
               "neurons": [f"{m}/{s}:{u}" for m, s, u in zip(g["model"], g["site"], g["unit"], strict=True)]}
              for gid, g in top.groupby("group", sort=True)]
    return MatchReport(
        models=list(lock.models), samples=int(lock.n_samples), sites=lock.sites, threshold=threshold,
        quantile=quantile,
        correlation=correlation, matching=matching, rosetta_groups=int(ros["group"].nunique()),
        rosetta_top=groups, neurons=neurons, fractions=fractions,
    )
