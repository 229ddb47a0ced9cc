"""Every verb × every class of bad input (issue 10): output paths of the wrong kind or that
cannot be written, malformed / pickle-bearing / complex / constant data files, options out
of range, text that is not text, a pickled checkpoint, names that do not exist, and the
values a metric refuses. Each must end as exactly ONE line ``error: …`` on stderr with exit
code 2 (never a traceback, a usage box or ``Aborted``), and each case names the fragment of
the line that says what is wrong, so a different error passing by chance fails the test.

Every case fails before any model loads or any computing starts (that is part of what is
tested: `--workers -1` used to time out after 30–110 s; `summarize` on a read-only run used
to fail after the whole computation), so the matrix runs in seconds.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from neuronscope.cli import main

#: (verb, class of bad input, arguments, fragment the one error line must contain)
CASES: list[tuple[str, str, list[str], str]] = [
    # ------------------------------------------------------------------ record
    ("record", "path", ["record", "--out", "afile"], "--out afile is a file; give a directory path"),
    ("record", "path", ["record", "--out", "afile/run"], "is a file, not a directory"),
    ("record", "option", ["record", "--out", "r", "--workers", "-1"], "'--workers'"),
    ("record", "option", ["record", "--out", "r", "--batch-size", "0"], "'--batch-size'"),
    ("record", "option", ["record", "--out", "r", "--max-tokens", "-3"], "'--max-tokens'"),
    ("record", "option", ["record", "--out", "r", "--sample-rate", "0"], "0 is not in (0, 1]"),
    ("record", "option", ["record", "--out", "r", "--sample-rate", "1.5"], "1.5 is not in (0, 1]"),
    ("record", "option", ["record", "--out", "r", "--keep", "bogus"], "keep must be one of"),
    ("record", "option", ["record", "--out", "r", "--dtype", "int8"], "dtype must be float16 or float32"),
    ("record", "option", ["record", "--out", "r", "--batch-size", "abc"], "'--batch-size'"),
    ("record", "option", ["record", "--out", "r", "--bogus", "1"], "No such option: --bogus"),
    ("record", "option", ["record"], "Missing option '--out'"),
    ("record", "option", ["record", "--out", "r", "--pack", "0"], "--pack must be a positive number of tokens"),
    ("record", "option", ["record", "--out", "r", "--max-batch-tokens", "16"],
     "smaller than the longest allowed document (--max-tokens 128); pass --max-batch-tokens 128 or more"),
    ("record", "option", ["record", "--out", "r", "--pack", "512", "--max-batch-tokens", "256"],
     "cannot hold one packed context of 512 tokens"),
    ("record", "option", ["record", "--out", "r", "--batching", "sorted"], "batching must be one of bucket, docs, pack"),
    ("record", "option", ["record", "--out", "r", "--pack", "64", "--workers", "2"], "drop --workers or drop --pack"),
    ("record", "option", ["record", "--out", "r", "--pack", "64", "--workers", "2", "--keep", "both"],
     "drop --workers or drop --pack"),
    ("record", "option", ["record", "--out", "r", "--workers", "2", "--keep", "summaries", "--sample-rate", "0.5"],
     "no activations to subsample; drop --sample-rate"),
    ("record", "option", ["record", "--out", "r", "--workers", "2", "--keep", "everything"], "keep must be one of"),
    ("record", "path", ["record", "--out", "afile", "--workers", "2", "--keep", "activations"],
     "--out afile is a file; give a directory path"),
    ("record", "encoding", ["record", "--out", "r", "--corpus", "surrogate.jsonl"], "lone surrogate"),
    ("record", "encoding", ["record", "--out", "r", "--corpus", "latin1.txt"], "pass a readable UTF-8"),
    ("record", "file", ["record", "--out", "r", "--corpus", "missing.txt"], "does not exist"),
    ("record", "file", ["record", "--out", "r", "--corpus", "notjson.jsonl"], "is not valid JSON"),
    ("record", "model", ["record", "--out", "r", "--model", "picklemodel"], "holds a pickled checkpoint"),
    ("record", "model", ["record", "--out", "r", "--model", "nowhere"], "unknown model 'nowhere'"),
    # ------------------------------------------------------------------ info
    ("info", "path", ["info", "nowhere"], "no run at nowhere"),
    ("info", "path", ["info", "afile"], "afile is a file, not a run directory"),
    ("info", "path", ["info", "adir"], "adir"),
    ("info", "option", ["info"], "Missing argument"),
    # ------------------------------------------------------------------ summarize
    ("summarize", "option", ["summarize", "run", "--chunk-rows", "-5"], "'--chunk-rows'"),
    ("summarize", "option", ["summarize", "run", "--workers", "-1"], "'--workers'"),
    ("summarize", "option", ["summarize", "run", "--workers", "0"], "allowed: >= 1"),
    ("summarize", "path", ["summarize", "nowhere"], "RUN nowhere does not exist"),
    ("summarize", "path", ["summarize", "afile"], "afile is a file, not a run directory"),
    ("summarize", "unwritable", ["summarize", "run"], "RUN run is not writable"),
    ("summarize", "name", ["summarize", "run", "--sites", "nosuchsite"], "matched no site"),
    # ------------------------------------------------------------------ demo
    ("demo", "path", ["demo", "--out", "afile"], "--out afile is a file"),
    ("demo", "path", ["demo", "--out", "afile/demo"], "is a file, not a directory"),
    ("demo", "unwritable", ["demo", "--out", "adir"], "--out adir is not writable"),
    ("demo", "option", ["demo", "--docs", "-1"], "'--docs'"),
    ("demo", "option", ["demo", "--sample-rate", "2"], "2 is not in (0, 1]"),
    # ------------------------------------------------------------------ characterize
    ("characterize", "path", ["characterize", "run", "--out", "afile/x.csv"], "is a file, not a directory"),
    ("characterize", "path", ["characterize", "run", "--out", "dir.csv"], "--out dir.csv is a directory"),
    ("characterize", "path", ["characterize", "run", "--out", "x.txt"], "--out must end in .parquet or .csv"),
    ("characterize", "unwritable", ["characterize", "run", "--out", "adir/x.csv"], "is not writable"),
    ("characterize", "path", ["characterize", "nowhere"], "run nowhere does not exist"),
    ("characterize", "option", ["characterize", "run", "--threshold", "0.123"], "0.123"),
    # ------------------------------------------------------------------ atlas
    ("atlas", "path", ["atlas", "run", "--out", "afile"], "--out afile is a file"),
    ("atlas", "path", ["atlas", "run", "--out", "afile/atlas"], "is a file, not a directory"),
    ("atlas", "unwritable", ["atlas", "run", "--out", "adir"], "--out adir is not writable"),
    ("atlas", "option", ["atlas", "run", "--out", "x", "--examples", "0"], "'--examples'"),
    ("atlas", "path", ["atlas", "nowhere", "--out", "x"], "nowhere"),
    ("atlas", "option", ["atlas", "run"], "Missing option '--out'"),
    # ------------------------------------------------------------------ serve
    ("serve", "option", ["serve", "atlas", "--port", "-1"], "allowed: 0..65535"),
    ("serve", "option", ["serve", "atlas", "--port", "70000"], "allowed: 0..65535"),
    ("serve", "path", ["serve", "adir"], "holds no index.html"),
    ("serve", "path", ["serve", "nowhere"], "holds no index.html"),
    # ------------------------------------------------------------------ compare: files
    ("compare", "file", ["compare", "garbage.npy", "a.npy"], "has no NPY header"),
    ("compare", "file", ["compare", "empty.npy", "a.npy"], "empty.npy is empty"),
    ("compare", "file", ["compare", "trunc.npy", "a.npy"], "cannot read response file trunc.npy"),
    ("compare", "pickle", ["compare", "objects.npy", "a.npy"], "holds pickled (object) data"),
    ("compare", "file", ["compare", "strings.npy", "a.npy"], "not numbers"),
    ("compare", "complex", ["compare", "complex.npy", "a.npy"], "complex-valued"),
    ("compare", "file", ["compare", "garbage.npz", "a.npy"], "cannot read response file garbage.npz"),
    ("compare", "file", ["compare", "trunc.npz", "a.npy"], "cannot read response file trunc.npz"),
    ("compare", "pickle", ["compare", "objects.npz", "a.npy"], "holds pickled (object) data"),
    ("compare", "complex", ["compare", "complex.npz", "a.npy"], "complex-valued"),
    ("compare", "file", ["compare", "garbage.h5", "a.npy"], "cannot read response file garbage.h5"),
    ("compare", "file", ["compare", "trunc.h5", "a.npy"], "cannot read response file trunc.h5"),
    ("compare", "complex", ["compare", "complex.h5", "a.npy"], "complex-valued"),
    ("compare", "file", ["compare", "a.npy", "garbage.mat", "-m", "rsa"], "garbage.mat is not a MATLAB file"),
    ("compare", "file", ["compare", "a.npy", "trunc.mat", "-m", "rsa"], "cannot read RDM file trunc.mat"),
    ("compare", "complex", ["compare", "a.npy", "complex.mat", "-m", "rsa"], "complex-valued"),
    ("compare", "file", ["compare", "bad.csv", "a.npy"], "hold non-numbers"),
    ("compare", "file", ["compare", "empty.csv", "a.npy"], "cannot read response file empty.csv"),
    ("compare", "encoding", ["compare", "latin1.csv", "a.npy"], "latin1.csv is not UTF-8 text"),
    ("compare", "file", ["compare", "nostim.csv", "a.npy"], "has no `stimulus` column"),
    ("compare", "file", ["compare", "a.npy", "short.npy"], "different stimulus ids"),
    ("compare", "file", ["compare", "a.npy", "missing.npy"], "is neither a file nor RUN:SITE_GLOB"),
    ("compare", "path", ["compare", "a.npy", "nowhere/run:layer*"], "run 'nowhere/run' does not exist"),
    ("compare", "name", ["compare", "run:nosuch*", "run:*"], "matched no site"),
    ("compare", "degenerate", ["compare", "const.npy", "a.npy"], "zero variance"),
    ("compare", "degenerate", ["compare", "a.npy", "const.npy", "-m", "encoding"], "zero variance"),
    ("compare", "degenerate", ["compare", "const.npy", "a.npy", "-m", "cca"], "zero variance"),
    ("compare", "degenerate", ["compare", "const.npy", "a.npy", "-m", "shape"], "zero variance"),
    ("compare", "degenerate", ["compare", "const.npy", "a.npy", "-m", "rsa"], "zero variance"),
    # ------------------------------------------------------------------ compare: options
    ("compare", "value", ["compare", "a.npy", "b.npy", "-m", "procrustes", "--alpha", "-1"], "alpha must be in [0, 1]"),
    ("compare", "value", ["compare", "a.npy", "b.npy", "-m", "shape", "--alpha", "5"], "alpha must be in [0, 1]"),
    ("compare", "value", ["compare", "run:*", "run:*", "-m", "procrustes", "--alpha", "-1"], "alpha must be in [0, 1]"),
    ("compare", "value", ["compare", "run:*", "run:*", "-m", "shape", "--alpha", "5"], "alpha must be in [0, 1]"),
    ("compare", "value", ["compare", "a.npy", "b.npy", "-m", "cka", "--alpha", "0.5"], "takes debiased; drop alpha"),
    ("compare", "option", ["compare", "a.npy", "b.npy", "-m", "svcca", "--keep", "0"], "0 is not in (0, 1]"),
    ("compare", "option", ["compare", "a.npy", "b.npy", "-m", "svcca", "--keep", "2"], "2 is not in (0, 1]"),
    ("compare", "option", ["compare", "a.npy", "b.npy", "-m", "encoding", "--cv", "1"], "allowed: >= 2"),
    ("compare", "option", ["compare", "a.npy", "b.npy", "-m", "bogus"], "unknown metric 'bogus'"),
    ("compare", "file", ["compare", "a.npy", "rdms.npz", "-m", "cka"], "precomputed RDMs only support"),
    ("compare", "path", ["compare", "a.npy", "b.npy", "--save", "afile"], "afile is a file, not a run directory"),
    ("compare", "path", ["compare", "a.npy", "b.npy", "--save", "nowhere"], "--save nowhere does not exist"),
    ("compare", "unwritable", ["compare", "a.npy", "b.npy", "--save", "run"], "--save run is not writable"),
    # ------------------------------------------------------------------ rsa
    ("rsa", "path", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--plot", "dir.png"], "--plot dir.png is a directory"),
    ("rsa", "path", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--plot", "afile/fig.svg"], "is a file, not a directory"),
    ("rsa", "path", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--plot", "fig.pdf"], "--plot must end in .png or .svg"),
    ("rsa", "path", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--save", "nowhere"], "--save nowhere does not exist"),
    ("rsa", "unwritable", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--save", "run"], "--save run is not writable"),
    ("rsa", "option", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--n-boot", "0"], "--n-boot must be at least 1"),
    ("rsa", "option", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--ci", "1"], "1 is not in (0, 1)"),
    ("rsa", "option", ["rsa", "--models", "ok.mat", "--data", "ok.mat", "--bootstrap", "trials"], "unknown --bootstrap 'trials'"),
    ("rsa", "option", ["rsa", "--data", "ok.mat"], "Missing option '--models'"),
    ("rsa", "file", ["rsa", "--models", "garbage.mat", "--data", "ok.mat"], "garbage.mat is not a MATLAB file"),
    ("rsa", "file", ["rsa", "--models", "ok.mat", "--data", "a.npy"], "holds responses, not RDMs"),
    ("rsa", "file", ["rsa", "--models", "a.npy", "--data", "missing.mat"], "is neither a file nor RUN:SITE_GLOB"),
    ("rsa", "complex", ["rsa", "--models", "ok.mat", "--data", "complex.mat"], "complex-valued"),
    ("rsa", "name", ["rsa", "--models", "run:nosuch*", "--data", "ok.mat"], "matched no site"),
    # ------------------------------------------------------------------ match
    ("match", "name", ["match", "--models", "digits-foo:0", "digits-mlp:1"], "unknown digits architecture 'foo'"),
    ("match", "name", ["match", "--models", "digits-mlp:0", "digits-mlp:x"], "bad digits model name 'digits-mlp:x'"),
    ("match", "name", ["match", "--models", "digits-mlp:0", "digits-cnn:1"], "list one input shape"),
    ("match", "name", ["match", "--models", "digits-mlp:0", "digits-mlp:0"], "a model is listed twice"),
    ("match", "name", ["match", "--models", "digits-mlp:0"], "match needs at least two models"),
    ("match", "option", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--threshold", "2"], "allowed: -1.0..1.0"),
    ("match", "option", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--batch-size", "0"], "'--batch-size'"),
    ("match", "option", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--max-samples", "-1"], "'--max-samples'"),
    ("match", "option", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--seed", "-1"], "'--seed'"),
    ("match", "path", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--out", "afile"], "--out afile is a file"),
    ("match", "unwritable", ["match", "--models", "digits-mlp:0", "digits-mlp:1", "--out", "adir/m"], "is not writable"),
    ("match", "encoding", ["match", "--models", "minilm", "e5-small", "--corpus", "surrogate.jsonl"], "lone surrogate"),
    # ------------------------------------------------------------------ sysid
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--n-neurons", "-1"], "'--n-neurons'"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--draws", "0"], "'--draws'"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--snr", "0"], "0 is not in (0, inf)"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--snr", "1", "--snr", "-2"], "-2 is not in (0, inf)"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--n-stimuli", "2"], "'--n-stimuli'"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--pool", "1"], "'--pool'"),
    ("sysid", "option", ["sysid", "--models", "digits-mlp:0", "--metrics", "bogus"], "unknown metric(s) bogus"),
    ("sysid", "path", ["sysid", "--models", "digits-mlp:0", "--plot", "afile/x.png"], "is a file, not a directory"),
    ("sysid", "path", ["sysid", "--models", "digits-mlp:0", "--plot", "dir.png"], "--plot dir.png is a directory"),
    ("sysid", "path", ["sysid", "--models", "digits-mlp:0", "--plot", "x.gif"], "--plot must end in .png or .pdf or .svg"),
    ("sysid", "unwritable", ["sysid", "--models", "digits-mlp:0", "--plot", "adir/x.png"], "is not writable"),
    ("sysid", "name", ["sysid", "--models", "digits-foo:0"], "unknown digits architecture 'foo'"),
    ("sysid", "encoding", ["sysid", "--models", "minilm", "--corpus", "surrogate.jsonl"], "lone surrogate"),
    # ------------------------------------------------------------------ verify
    ("verify", "path", ["verify", "afile"], "afile is a file, not a run directory"),
    ("verify", "path", ["verify", "nowhere"], "no run at nowhere"),
    # ------------------------------------------------------------------ locate
    ("locate", "path", ["locate", "afile"], "afile is a file, not a run directory"),
    ("locate", "name", ["locate", "run", "--by", "foo"], "unknown method 'foo'"),
    ("locate", "value", ["locate", "run", "--label", "lang"], "record the run again with `neuronscope record --labels"),
    ("locate", "option", ["locate", "run", "--top-rate", "2"], "top_rate must be in (0, 1]"),
    # ------------------------------------------------------------------ modules / moefy
    ("modules", "path", ["modules", "afile"], "afile is a file, not a run directory"),
    ("modules", "option", ["modules", "run", "--resolution", "0"], "--resolution must be a positive number"),
    ("modules", "option", ["modules", "run", "--seeds", "0"], "--seeds must be at least 1"),
    ("modules", "name", ["modules", "run", "--normalize", "foo"], "normalize must be one of"),
    ("modules", "name", ["modules", "run", "--site", "nope"], "site pattern 'nope' matched no site"),
    ("moefy", "option", ["moefy", "--model", "digits-mlp:0", "--experts", "0"], "--experts must be a positive integer"),
    ("moefy", "option", ["moefy", "--top-k", "a,b"], "--top-k must be comma-separated integers"),
    ("moefy", "option", ["moefy", "--quality", "foo"], "--quality must be retrieval or cosine"),
    ("moefy", "name", ["moefy", "--model", "nonexist"], "unknown model 'nonexist'"),
    ("moefy", "value", ["moefy", "--experts", "100000"], "choose at most 1536 experts"),
    # ------------------------------------------------------------------ attribute
    ("attribute", "option", ["attribute", "digits-mlp:0", "--docs", "0"], "'--docs'"),
    ("attribute", "option", ["attribute", "digits-mlp:0", "--steps", "0"], "'--steps'"),
    ("attribute", "option", ["attribute", "digits-mlp:0", "--batch-size", "0"], "'--batch-size'"),
    ("attribute", "option", ["attribute", "digits-mlp:0", "--top", "0"], "'--top'"),
    ("attribute", "option", ["attribute", "digits-mlp:0", "--internal-batch-size", "-1"], "'--internal-batch-size'"),
    ("attribute", "path", ["attribute", "digits-mlp:0", "--save", "afile"], "afile is a file, not a run directory"),
    ("attribute", "path", ["attribute", "digits-mlp:0", "--save", "nowhere"], "--save nowhere does not exist"),
    ("attribute", "unwritable", ["attribute", "digits-mlp:0", "--save", "run"], "--save run is not writable"),
    ("attribute", "model", ["attribute", "picklemodel"], "holds a pickled checkpoint"),
    ("attribute", "name", ["attribute", "digits-foo:0"], "unknown digits architecture 'foo'"),
    ("attribute", "encoding", ["attribute", "minilm", "--corpus", "surrogate.jsonl"], "lone surrogate"),
    # ------------------------------------------------------------------ ablate
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "1", "--max-batch", "0"], "'--max-batch'"),
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act1", "--top", "-1"], "'--top'"),
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "1", "--docs", "0"], "'--docs'"),
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act1"], "give --units LIST or --top K"),
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "a,b"], "--units must be comma-separated integers"),
    ("ablate", "path", ["ablate", "digits-mlp:0", "--site", "act1", "--top", "2", "--importance", "nowhere"],
     "--importance nowhere does not exist"),
    ("ablate", "path", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "1", "--how", "mean",
                        "--means-run", "afile"], "afile is a file, not a run directory"),
    ("ablate", "model", ["ablate", "picklemodel", "--site", "x", "--units", "1"], "holds a pickled checkpoint"),
    ("ablate", "option", ["ablate", "digits-mlp:0", "--site", "act*", "--path", "--units", "1"],
     "--path searches every unit"),
    ("ablate", "path", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "1", "--save", "nowhere"],
     "--save nowhere does not exist"),
    ("ablate", "unwritable", ["ablate", "digits-mlp:0", "--site", "act1", "--units", "1", "--save", "run"],
     "--save run is not writable"),
    ("ablate", "path", ["ablate", "digits-mlp:0", "--site", "act*", "--path", "--save", "afile"], "afile is a file, not a run directory"),
    # ------------------------------------------------------------------ steer
    ("steer", "path", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt", "--plot", "x.gif"],
     "--plot must end in .png or .pdf or .svg"),
    ("steer", "path", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt", "--plot",
                       "afile/x.png"], "is a file, not a directory"),
    ("steer", "option", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt", "--docs", "0"],
     "'--docs'"),
    ("steer", "option", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt",
                         "--positions", "middle"], "--positions must be all or last"),
    ("steer", "option", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt",
                         "--coefficients", "a,b"], "--coefficients must be comma-separated numbers"),
    ("steer", "file", ["steer", "minilm", "--site", "s", "--positive", "nope.txt", "--negative", "n.txt"], "nope.txt is not a file"),
    ("steer", "encoding", ["steer", "minilm", "--site", "s", "--positive", "surrogate.jsonl", "--negative", "n.txt"],
     "lone surrogate"),
    ("steer", "option", ["steer", "minilm"], "CAA steering needs --site, --positive, --negative"),
    ("steer", "unwritable", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt",
                             "--save", "run"], "--save run is not writable"),
    ("steer", "option", ["steer", "minilm", "--site", "s", "--positive", "p.txt", "--negative", "n.txt",
                         "--lape-run", "run"], "--lape-run goes with --deactivate or --activate"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko"], "--deactivate needs --lape-run RUN"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", ",", "--lape-run", "run"], "--deactivate is empty"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko", "--activate", "tr", "--lape-run", "run"],
     "give --deactivate or --activate, not both"),
    ("steer", "option", ["steer", "tinylm:0", "--activate", "ko", "--lape-run", "run", "--site", "s"],
     "--site belong to CAA steering"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--top-rate", "0"],
     "0 is not in (0, 1]"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--prompts", "-1"],
     "'--prompts'"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--new-tokens", "0"],
     "'--new-tokens'"),
    ("steer", "option", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--prompt-chars", "0"],
     "'--prompt-chars'"),
    ("steer", "path", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "nowhere"],
     "--lape-run nowhere does not exist"),
    ("steer", "path", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "afile"], "afile is a file, not a run directory"),
    ("steer", "unwritable", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--save", "run"],
     "--save run is not writable"),
    ("steer", "file", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run", "--heldout", "nope.jsonl"],
     "--heldout nope.jsonl is not a file"),
    ("steer", "name", ["steer", "tinylm:0", "--deactivate", "ko", "--lape-run", "run"], "'lang'"),
]

#: Directories the "unwritable" cases see as read-only (the tests run as root, for whom
#: permission bits do not stop a write; the check itself is os.access).
READ_ONLY = ("adir", "run")


class _Evil:
    """Unpickling this would print PWNED: the checkpoint must be refused, never run."""

    def __reduce__(self):
        return (print, ("PWNED",))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a recorded run, its atlas and every bad input the cases name."""
    import torch

    import neuronscope
    from neuronscope.atlas.build import build_atlas

    d = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6), torch.nn.ReLU())
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    run = neuronscope.record(model, neuronscope.TensorSource(x, batch_size=40), "1,3", out=d / "run",
                             keep="both", dtype="float32", progress=False, summary_config={"k": 4})
    build_atlas(run, d / "atlas", examples=4)

    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 5))
    np.save(d / "a.npy", a)
    np.save(d / "b.npy", a @ rng.normal(size=(5, 4)) + rng.normal(size=(30, 4)))
    np.save(d / "short.npy", a[:10])
    np.save(d / "const.npy", np.tile(rng.normal(size=(1, 5)), (30, 1)))
    (d / "garbage.npy").write_bytes(b"not a numpy file at all\x00\x01")
    (d / "empty.npy").write_bytes(b"")
    raw = (d / "a.npy").read_bytes()
    (d / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"], ["e", "f"]]))
    np.save(d / "complex.npy", a + 1j * a)
    (d / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(d / "ok.npz", responses=a)
    raw = (d / "ok.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(d / "objects.npz", responses=np.array([{"a": 1}], dtype=object))
    np.savez(d / "complex.npz", responses=a + 1j)
    np.savez(d / "rdms.npz", rdms=np.ones((1, 435)))
    (d / "garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\ngarbage")
    with h5py.File(d / "ok.h5", "w") as f:
        f["responses"] = a
    raw = (d / "ok.h5").read_bytes()
    (d / "trunc.h5").write_bytes(raw[: len(raw) // 2])
    with h5py.File(d / "complex.h5", "w") as f:
        f["responses"] = a + 1j * a
    (d / "garbage.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" + b"\x00" * 200)
    scipy.io.savemat(d / "ok.mat", {"rdms": np.ones((2, 435))})
    raw = (d / "ok.mat").read_bytes()
    (d / "trunc.mat").write_bytes(raw[: len(raw) - 100])
    scipy.io.savemat(d / "complex.mat", {"rdms": np.ones((2, 435)) * (1 + 1j)})
    (d / "bad.csv").write_text("stimulus,u1,u2\n1,a,b\n2,c,d\n3,e,f\n")
    (d / "empty.csv").write_text("")
    (d / "nostim.csv").write_text("u1,u2\n1,2\n3,4\n5,6\n")
    (d / "latin1.csv").write_bytes("stimulus,r\u00e9ponse\n1,2\n2,3\n3,4\n".encode("latin-1"))
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (d / "surrogate.jsonl").write_text('{"text": "fine"}\n{"text": "ok \\ud800 bad"}\n', encoding="utf-8")
    (d / "notjson.jsonl").write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    (d / "p.txt").write_text("a positive example\n")
    (d / "n.txt").write_text("a negative example\n")
    (d / "afile").write_text("a plain file")
    (d / "adir").mkdir()
    (d / "dir.csv").mkdir()
    (d / "dir.png").mkdir()
    m = d / "picklemodel"
    m.mkdir()
    (m / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "vocab_size": 50}))
    with open(m / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    return d


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for verb, kind, _, _ in CASES:
        key = f"{verb}-{kind}"
        seen[key] = seen.get(key, 0) + 1
        out.append(f"{key}-{seen[key]}")
    return out


@pytest.mark.filterwarnings("error")  # a warning would be a second line on a real terminal
@pytest.mark.parametrize("verb, kind, args, fragment", CASES, ids=_ids())
def test_bad_input_is_one_error_line_exit_2(verb: str, kind: str, args: list[str], fragment: str, workdir: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(workdir)
    if kind == "unwritable":
        from neuronscope.cli import checks

        real = checks._writable_dir
        monkeypatch.setattr(checks, "_writable_dir",
                            lambda p: False if Path(p).resolve().name in READ_ONLY else real(p))
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (exc.value.code, err)
    assert "Traceback" not in err and "Aborted" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert fragment in lines[0], (fragment, lines[0])
    assert "PWNED" not in out  # nothing was unpickled
    assert not (workdir / "r").exists()  # nothing was recorded


def test_matrix_covers_every_verb_and_class() -> None:
    """The matrix holds every verb of the app and every class of bad input the issue names."""
    import typer

    from neuronscope.cli import app

    verbs = set(typer.main.get_command(app).commands)
    covered = {verb for verb, _, _, _ in CASES}
    assert verbs <= covered, verbs - covered
    kinds = {kind for _, kind, _, _ in CASES}
    assert {"path", "unwritable", "file", "pickle", "complex", "option", "value", "encoding", "model",
            "name", "degenerate"} <= kinds
    # every verb that writes an output path has a wrong-kind and an unwritable case
    for verb in ("record", "demo", "characterize", "atlas", "compare", "match", "sysid", "attribute", "summarize"):
        assert any(v == verb and k in ("path", "unwritable") for v, k, _, _ in CASES), verb
