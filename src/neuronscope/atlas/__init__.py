"""The static neuron atlas: ``build_atlas(run, out)`` writes HTML + JS/CSS + data scripts that
open from the file system (no server, no network) — see :mod:`neuronscope.atlas.build`."""

from neuronscope.atlas.build import build_atlas, collect_atlas_data, site_examples, write_site

__all__ = ["build_atlas", "collect_atlas_data", "site_examples", "write_site"]
