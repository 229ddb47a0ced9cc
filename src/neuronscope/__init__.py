"""neuronscope: a workbench for the neurons of any network, artificial or biological.

The public API is plain functions over populations (``xarray.DataArray`` with dims
``sample`` × ``neuron``) and runs (Zarr v3 stores). Every public name is listed, with the
module it comes from, in ``__init__.pyi`` (what IDEs and type checkers read); the names are
attached lazily (``lazy_loader``), so ``import neuronscope`` stays fast and pulls in torch
only when a name that needs it is used.

The package, by layer (each imports only from the layers below it; import-linter
contracts in ``pyproject.toml`` enforce it):

* ``population``, ``rdms``, ``errors`` — the data model: populations, RDM stacks, errors.
* ``sources`` — where neurons come from (torch sites, text / tensor sources, packaged and
  local models, brain files); ``summaries`` — mergeable streaming summaries;
  ``testing`` — small real models trained deterministically (digits nets, a tiny causal LM).
* ``store`` — the run format; ``specs`` — names users type (models, ``RUN:GLOB``).
* ``recording`` — one pass: source → summaries (+ store); ``distributed`` and ``lockstep``
  — the same pass sharded over Dask / over several models.
* ``intervene`` — ablate / clamp / scale / add / patch neurons while a model runs.
* ``analyses`` — one module per question: characterize, compare (CKA, RSA, CCA, shape,
  encoding), match, sysid, attribute, steer, modules (co-activation communities, dynamic
  connectome, Semi-NMF), sparsity (MoEfication, activation predictors, the sparse FFN).
* ``atlas`` — the static HTML atlas; ``cli`` — the ``neuronscope`` verbs.
"""

from __future__ import annotations

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
