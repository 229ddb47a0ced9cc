# The public API of neuronscope. ``neuronscope/__init__.py`` attaches these names lazily
# (lazy_loader.attach_stub reads this file), so ``import neuronscope`` stays fast, while IDEs
# and type checkers see every name and its module here.

from .analyses.attribute import (
    ablation_effects,
    conductance,
    conductance_over,
    influential_path,
    save_ablation,
    save_path,
)
from .analyses.characterize import characterize, site_summary, top_examples
from .analyses.compare import (
    METRICS,
    CrossStats,
    compare,
    compare_all,
    debiased_cka,
    encoding_score,
    linear_cka,
    procrustes_distance,
    svcca,
)
from .analyses.encoding import RidgeEncoder
from .analyses.extras import save_comparison
from .analyses.langid import train_langid
from .analyses.langsteer import language_steering, save_language_steering
from .analyses.locate import (
    LocateResult,
    diffmeans,
    label_statistics,
    lape,
    locate,
    sparse_probe,
    vocab_projection,
)
from .analyses.match import (
    match_one_to_one,
    match_report,
    rosetta_neurons,
    universal_fractions,
    universal_neurons,
)
from .analyses.modules import (
    cofiring,
    dynamic_connectome,
    find_modules,
    semi_nmf,
)
from .analyses.rsa import compare_rdms, noise_ceiling, rdm, rsa, trsa
from .analyses.rsa_workflow import RSAResult, rsa_models
from .analyses.sparsity import find_ffns, moefy, sparsify
from .analyses.steer import (
    save_steering_curve,
    steering_sweep,
    steering_vector,
    steering_vector_from_run,
)
from .analyses.sysid import sysid
from .atlas.build import build_atlas
from .distributed import record_distributed, summarize_run
from .errors import NeuronscopeError
from .intervene import ablate, add, clamp, patch, scale
from .lockstep import Lockstep, record_lockstep
from .population import (
    align,
    align_all,
    average_repeats,
    paired,
    select_sites,
    to_matrix,
)
from .rdms import RDMs
from .recording import forward_batches, record, summarize_model
from .sources.brain import load_rdms, load_responses, nwb_population, responses_population
from .sources.e5 import e5_embed
from .sources.tensors import TensorSource
from .sources.text import TextSource, default_corpus_path, load_corpus
from .sources.torch_sites import Site, sites
from .specs import load_model, load_population_pair, load_populations, load_zoo
from .store import Run, open_run
from .summaries import CrossProducts, SiteSummaries, SummaryConfig

__version__: str

__all__ = [
    "CrossProducts",
    "CrossStats",
    "LocateResult",
    "Lockstep",
    "METRICS",
    "NeuronscopeError",
    "RDMs",
    "RSAResult",
    "RidgeEncoder",
    "Run",
    "Site",
    "SiteSummaries",
    "SummaryConfig",
    "TensorSource",
    "TextSource",
    "ablate",
    "ablation_effects",
    "add",
    "align",
    "align_all",
    "average_repeats",
    "build_atlas",
    "characterize",
    "clamp",
    "cofiring",
    "compare",
    "compare_all",
    "compare_rdms",
    "conductance",
    "conductance_over",
    "debiased_cka",
    "default_corpus_path",
    "diffmeans",
    "dynamic_connectome",
    "e5_embed",
    "encoding_score",
    "find_ffns",
    "find_modules",
    "forward_batches",
    "influential_path",
    "label_statistics",
    "language_steering",
    "lape",
    "linear_cka",
    "load_corpus",
    "load_model",
    "load_population_pair",
    "load_populations",
    "load_rdms",
    "load_responses",
    "load_zoo",
    "locate",
    "match_one_to_one",
    "match_report",
    "moefy",
    "noise_ceiling",
    "nwb_population",
    "open_run",
    "paired",
    "patch",
    "procrustes_distance",
    "rdm",
    "record",
    "record_distributed",
    "record_lockstep",
    "responses_population",
    "rosetta_neurons",
    "rsa",
    "rsa_models",
    "save_ablation",
    "save_comparison",
    "save_language_steering",
    "save_path",
    "save_steering_curve",
    "scale",
    "select_sites",
    "semi_nmf",
    "site_summary",
    "sites",
    "sparse_probe",
    "sparsify",
    "steering_sweep",
    "steering_vector",
    "steering_vector_from_run",
    "summarize_model",
    "summarize_run",
    "svcca",
    "sysid",
    "to_matrix",
    "top_examples",
    "train_langid",
    "trsa",
    "universal_fractions",
    "universal_neurons",
    "vocab_projection",
]
