"""neuronscope: a workbench for the neurons of any network, artificial or biological.

The public API is plain functions over populations (``xarray.DataArray`` with dims
``sample`` × ``neuron``) and runs (Zarr v3 stores). Names are imported lazily so that
``import neuronscope`` stays fast and does not pull in torch until it is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # foundation
    "sites": "neuronscope.sources.torch_sites",
    "Site": "neuronscope.sources.torch_sites",
    "load_model": "neuronscope.specs",
    "TextSource": "neuronscope.sources.text",
    "TensorSource": "neuronscope.sources.tensors",
    "load_corpus": "neuronscope.sources.text",
    "default_corpus_path": "neuronscope.sources.text",
    "record": "neuronscope.recording",
    "open_run": "neuronscope.store",
    "Run": "neuronscope.store",
    # characterize
    "characterize": "neuronscope.analyses.characterize",
    "site_summary": "neuronscope.analyses.characterize",
    "top_examples": "neuronscope.analyses.characterize",
    "summarize_run": "neuronscope.distributed",
    "record_distributed": "neuronscope.distributed",
    # compare
    "compare": "neuronscope.analyses.compare",
    "compare_all": "neuronscope.analyses.compare",
    "linear_cka": "neuronscope.analyses.compare",
    "rsa": "neuronscope.analyses.compare",
    # match / sysid
    "record_lockstep": "neuronscope.lockstep",
    "Lockstep": "neuronscope.lockstep",
    "universal_neurons": "neuronscope.analyses.match",
    "match_one_to_one": "neuronscope.analyses.match",
    "rosetta_neurons": "neuronscope.analyses.match",
    "sysid": "neuronscope.analyses.sysid",
    # locate
    "locate": "neuronscope.analyses.locate",
    "lape": "neuronscope.analyses.locate",
    "label_statistics": "neuronscope.analyses.locate",
    "sparse_probe": "neuronscope.analyses.locate",
    "diffmeans": "neuronscope.analyses.locate",
    "vocab_projection": "neuronscope.analyses.locate",
    # atlas
    "build_atlas": "neuronscope.atlas.build",
    "NeuronscopeError": "neuronscope.errors",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'neuronscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
