"""What a neuron writes: FFN output weights projected through the unembedding, and the weight-based
neuron families of "Universal Neurons in GPT2 Language Models" (Gurnee et al. 2024) and
"Confidence Regulation Neurons in Language Models" (Stolfo et al. 2024).

For an FFN neuron ``u`` with output weight ``w_u`` (the column of the block's output
projection that multiplies ``u``; ``d_model`` values) and the unembedding ``W_U``
(vocab × d_model), the neuron's direct effect on the logits per unit of activation is the
vocabulary composition ``c_u = W_U w_u`` ("Decoding specialised feature neurons in LLMs with
the final projection layer": the tokens a neuron promotes and suppresses). With
``fold_norm`` the final LayerNorm's centering and gain are folded in first:
``w ← γ ⊙ (w − mean(w))`` (its per-token scale is not: it depends on the residual stream).

Families (per site; thresholds are parameters of :func:`vocab_projection`):

* **prediction** / **suppression** neurons — ``c_u`` is heavy-tailed: kurtosis
  ``E[(c−μ)⁴]/σ⁴ ≥ kurtosis_min`` (10; a Gaussian has 3), with positive skew (a few tokens
  strongly promoted) or negative skew (a few strongly suppressed) (Gurnee et al. 2024 §5).
* **entropy** neurons — a large output norm written mostly where the unembedding cannot
  read it: ``‖w_u‖`` at or above the ``norm_quantile`` (0.95) quantile of the site and a
  null-space fraction ``ρ_u = ‖V_nullᵀ w_u‖² / ‖w_u‖² ≥ null_min`` (0.5), ``V_null`` the
  ``null_dims`` right singular vectors of the vocabulary-centered ``W_U`` with the smallest
  singular values (default 5 % of ``d_model``; a random direction has ``ρ = null_dims /
  d_model``). Such neurons change the residual norm, hence the final LayerNorm's scale and
  the entropy of the prediction, with little direct effect on any logit (Stolfo et al. 2024).
* **token-frequency** neurons — ``c_u`` is correlated with the log unigram frequency of the
  tokens: ``|corr(c_u, log f)| ≥ freq_min`` (0.5) over tokens seen at least once, so the
  neuron moves the output towards (or away from) the unigram distribution (Stolfo et al.
  2024). ``f`` comes from ``token_counts`` (e.g. :func:`token_counts` of a run's corpus).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

#: Names of FFN output projections, looked up next to a site from the nearest parent up:
#: tiny LM, GPT-2, LLaMA/Mistral/Qwen, GPT-NeoX/Pythia, OPT, T5, BERT, others.
OUT_PROJ_NAMES = ("fc_out", "c_proj", "down_proj", "dense_4h_to_h", "fc2", "wo", "output.dense", "w2", "proj_out")
#: Final norms whose gain ``fold_norm`` folds in.
FINAL_NORM_NAMES = ("ln_f", "transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm",
                    "model.decoder.final_layer_norm", "norm", "final_layer_norm")
FAMILIES = ("prediction", "suppression", "entropy", "token_frequency")


def load_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local Hugging Face causal LM directory (with its LM head:
    ``AutoModelForCausalLM``, offline, float32, eval mode; the tokenizer is None when the
    directory has no tokenizer files). ``tinylm:SEED`` names the tiny LM."""
    from neuronscope.specs import is_tinylm_name, load_model

    if is_tinylm_name(str(path)):
        return load_model(str(path))
    import transformers

    p = Path(path)
    if not (p / "config.json").exists():
        raise NeuronscopeError(f"{p} is not a Hugging Face model directory (no config.json); pass a causal LM directory")
    transformers.logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise NeuronscopeError(f"cannot load a causal LM from {p}: {str(e).splitlines()[0]}") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError):
        tok = None  # weights without tokenizer files: projections still work, tokens are ids
    model.eval()
    model.neuronscope_id = str(p.resolve())
    return model, tok


def unembedding(model: Any) -> np.ndarray:
    """The unembedding ``W_U`` (vocab, d_model) as float64: ``model.get_output_embeddings().weight``."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or getattr(head, "weight", None) is None:
        raise NeuronscopeError(
            f"{type(model).__name__} has no output vocabulary (get_output_embeddings); vocabulary projection "
            "needs a causal LM: tinylm:SEED or a Hugging Face causal LM directory (load_causal_lm)"
        )
    return head.weight.detach().double().cpu().numpy()


def output_weights(model: Any, site: str, out_proj: str | None = None) -> tuple[str, np.ndarray]:
    """``(module name, W_out)`` of the FFN output projection fed by ``site``: ``W_out`` is
    (d_model, units), column ``u`` = what neuron ``u`` adds to the residual stream per unit
    of activation. ``out_proj`` names the module; otherwise the first of
    :data:`OUT_PROJ_NAMES` next to the site (nearest parent first) that is a linear map
    (``nn.Linear``: weight (out, in); GPT-2's ``Conv1D``: weight (in, out))."""
    modules = dict(model.named_modules())
    if site not in modules:
        raise NeuronscopeError(f"the model has no module {site!r}")
    cands = [out_proj] if out_proj else []
    if not out_proj:
        parts = site.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:depth])
            cands += [f"{parent}.{n}" for n in OUT_PROJ_NAMES]
    for name in cands:
        mod = modules.get(name)
        w = getattr(mod, "weight", None)
        if w is None or w.ndim != 2:
            continue
        w = w.detach().double().cpu().numpy()
        return name, (w if type(mod).__name__ != "Conv1D" else w.T)
    raise NeuronscopeError(
        f"found no FFN output projection for site {site!r} (looked for {', '.join(OUT_PROJ_NAMES)} next to it); "
        "pass out_proj= with the module name"
    )


def _final_gain(model: Any) -> np.ndarray | None:
    modules = dict(model.named_modules())
    for name in FINAL_NORM_NAMES:
        w = getattr(modules.get(name), "weight", None)
        if w is not None and w.ndim == 1:
            return w.detach().double().cpu().numpy()
    return None


def token_counts(run: Any, vocab_size: int | None = None) -> np.ndarray:
    """Unigram counts of a run's recorded tokens (``run.samples["token_id"]``), length
    ``vocab_size`` (default: the run's vocabulary size)."""
    tid = np.asarray(run.samples.get("token_id", np.zeros(0, dtype=np.int64)))
    size = vocab_size or len(run.vocab or []) or (int(tid.max()) + 1 if len(tid) else 0)
    tid = tid[(tid >= 0) & (tid < size)]
    return np.bincount(tid, minlength=size)


@dataclass
class VocabProjection:
    """What each neuron of one site writes into the vocabulary (see the module docstring).

    Per unit: ``top_ids`` / ``top_values`` (units, top) the most promoted tokens and their
    ``c_u`` entries, ``bottom_ids`` / ``bottom_values`` the most suppressed; ``norm`` =
    ``‖w_u‖``; ``kurtosis``, ``skew`` of ``c_u`` over the vocabulary; ``null_fraction`` =
    ``ρ_u``; ``freq_corr`` = ``corr(c_u, log f)`` (NaN without counts); ``families`` one
    boolean array per family name.
    """

    site: str
    out_proj: str
    top_ids: np.ndarray
    top_values: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray
    norm: np.ndarray
    kurtosis: np.ndarray
    skew: np.ndarray
    null_fraction: np.ndarray
    freq_corr: np.ndarray
    families: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def family_of(self, unit: int) -> list[str]:
        """The families neuron ``unit`` belongs to."""
        return [f for f, m in self.families.items() if m[unit]]

    def tokens(self, vocab: Sequence[str], unit: int, which: str = "top") -> list[str]:
        """Token strings of the unit's most promoted (``top``) or suppressed (``bottom``) tokens."""
        ids = self.top_ids[unit] if which == "top" else self.bottom_ids[unit]
        return [str(vocab[i]) if 0 <= i < len(vocab) else str(int(i)) for i in ids.tolist()]


def neuron_logits(model: Any, site: str, unit: int, *, fold_norm: bool = False, out_proj: str | None = None) -> np.ndarray:
    """The full vocabulary composition ``c_u = W_U w_u`` (vocab,) of one neuron."""
    _, w = output_weights(model, site, out_proj)
    if not 0 <= unit < w.shape[1]:
        raise NeuronscopeError(f"unit {unit} is out of range for site {site!r} (0..{w.shape[1] - 1})")
    col = w[:, unit]
    if fold_norm:
        col = _fold(model, col[:, None])[:, 0]
    return unembedding(model) @ col


def _fold(model: Any, w: np.ndarray) -> np.ndarray:
    gain = _final_gain(model)
    w = w - w.mean(axis=0, keepdims=True)
    return w * gain[:, None] if gain is not None else w


def vocab_projection(
    model: Any,
    sites: str | Sequence[str],
    *,
    token_counts: np.ndarray | None = None,
    top: int = 10,
    fold_norm: bool = False,
    out_proj: Mapping[str, str] | None = None,
    null_dims: int | None = None,
    kurtosis_min: float = 10.0,
    norm_quantile: float = 0.95,
    null_min: float = 0.5,
    freq_min: float = 0.5,
    chunk: int = 512,
) -> dict[str, VocabProjection]:
    """Project every FFN neuron of ``sites`` (module names or globs of ``model``) through the
    unembedding: ``C = W_U W_out`` (vocab × units, computed ``chunk`` units at a time), its
    top / bottom tokens, weight norms, moments over the vocabulary, null-space fractions,
    log-frequency correlations and the families of the module docstring."""
    from neuronscope.sources.torch_sites import sites as resolve

    if top < 1:
        raise NeuronscopeError(f"top must be at least 1, not {top}")
    w_u = unembedding(model)
    vocab, d_model = w_u.shape
    null_dims = max(1, round(0.05 * d_model)) if null_dims is None else int(null_dims)
    if not 1 <= null_dims < d_model:
        raise NeuronscopeError(f"null_dims must be in [1, {d_model - 1}], not {null_dims}")
    centered = w_u - w_u.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=True)
    v_null = vt[-null_dims:].T  # (d_model, null_dims): smallest singular values
    logf = None
    if token_counts is not None:
        counts = np.asarray(token_counts, dtype=np.float64)[:vocab]
        counts = np.pad(counts, (0, vocab - len(counts)))
        seen = counts > 0
        if seen.sum() < 3:
            raise NeuronscopeError("token_counts has fewer than 3 seen tokens; pass the counts of a real corpus")
        logf = np.log(counts[seen])
        logf = (logf - logf.mean()) / (logf.std() or 1.0)
    top = min(top, vocab)
    out: dict[str, VocabProjection] = {}
    names = [s.name for s in resolve(model, list(sites) if not isinstance(sites, str) else sites)]
    for site in names:
        proj_name, w = output_weights(model, site, (out_proj or {}).get(site))
        if w.shape[0] != d_model:
            raise NeuronscopeError(f"{proj_name} writes {w.shape[0]} dims, the unembedding reads {d_model}")
        if fold_norm:
            w = _fold(model, w)
        units = w.shape[1]
        res = {k: np.empty((units, top), dtype=np.int64 if k.endswith("ids") else np.float64)
               for k in ("top_ids", "top_values", "bottom_ids", "bottom_values")}
        kurt, skew, fcorr = np.empty(units), np.empty(units), np.full(units, np.nan)
        for a in range(0, units, chunk):
            c = w_u @ w[:, a : a + chunk]  # (vocab, chunk)
            mu, sd = c.mean(axis=0), c.std(axis=0)
            z = (c - mu) / np.where(sd > 0, sd, 1.0)
            skew[a : a + chunk] = (z**3).mean(axis=0)
            kurt[a : a + chunk] = (z**4).mean(axis=0)
            hi = np.argsort(-c, axis=0, kind="stable")[:top].T
            lo = np.argsort(c, axis=0, kind="stable")[:top].T
            cols = np.arange(c.shape[1])[:, None]
            res["top_ids"][a : a + chunk], res["top_values"][a : a + chunk] = hi, c.T[cols, hi]
            res["bottom_ids"][a : a + chunk], res["bottom_values"][a : a + chunk] = lo, c.T[cols, lo]
            if logf is not None:
                cs = c[seen]
                cs = (cs - cs.mean(axis=0)) / np.where(cs.std(axis=0) > 0, cs.std(axis=0), 1.0)
                fcorr[a : a + chunk] = (cs * logf[:, None]).mean(axis=0)
        norm = np.linalg.norm(w, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(norm > 0, np.linalg.norm(v_null.T @ w, axis=0) ** 2 / norm**2, 0.0)
        heavy = kurt >= kurtosis_min
        families = {
            "prediction": heavy & (skew > 0),
            "suppression": heavy & (skew < 0),
            "entropy": (norm >= np.quantile(norm, norm_quantile)) & (rho >= null_min),
            "token_frequency": np.abs(np.nan_to_num(fcorr)) >= freq_min,
        }
        params = {"fold_norm": fold_norm, "null_dims": null_dims, "kurtosis_min": kurtosis_min,
                  "norm_quantile": norm_quantile, "null_min": null_min, "freq_min": freq_min,
                  "random_null_fraction": null_dims / d_model}
        out[site] = VocabProjection(site, proj_name, norm=norm, kurtosis=kurt, skew=skew, null_fraction=rho,
                                    freq_corr=fcorr, families=families, params=params, **res)
    return out


def save_vocab_projection(run: Any, projections: Mapping[str, VocabProjection], name: str = "locate-vocab") -> str:
    """Store vocabulary projections in ``run`` (``extras/locate-vocab``) so the atlas shows
    each neuron's promoted / suppressed tokens and families. Returns the extras name."""
    import json

    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for site, p in projections.items():
        for key in ("top_ids", "top_values", "bottom_ids", "bottom_values", "norm", "kurtosis", "skew",
                    "null_fraction", "freq_corr"):
            arrays[f"{site}|{key}"] = np.asarray(getattr(p, key))
        for fam, m in p.families.items():
            arrays[f"{site}|family.{fam}"] = m.astype(np.uint8)
        meta[site] = {"out_proj": p.out_proj, "params": p.params, "families": list(p.families)}
    run.write_extras(name, arrays, {"title": "what each neuron writes (vocabulary projection)",
                                    "vocab_projection": json.loads(json.dumps(meta))})
    return name


def load_vocab_projection(run: Any, name: str = "locate-vocab") -> dict[str, VocabProjection] | None:
    """The vocabulary projections stored in ``run`` (None when there are none)."""
    extra = run.extras(name)
    if extra is None or "vocab_projection" not in extra["attrs"]:
        return None
    a, meta = extra["arrays"], extra["attrs"]["vocab_projection"]
    out = {}
    for site, m in meta.items():
        fams = {f: np.asarray(a[f"{site}|family.{f}"]).astype(bool) for f in m["families"]}
        out[site] = VocabProjection(
            site, m["out_proj"], *(np.asarray(a[f"{site}|{k}"]) for k in
                                   ("top_ids", "top_values", "bottom_ids", "bottom_values", "norm", "kurtosis", "skew",
                                    "null_fraction", "freq_corr")), families=fams, params=dict(m["params"]))
    return out
