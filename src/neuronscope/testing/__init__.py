"""Small real models for tests, benchmarks and examples — trained, not mocked.

* :mod:`~neuronscope.testing.digits` — MLPs and CNNs trained deterministically on
  scikit-learn's digits in about a second (several seeds; untrained twins; permuted copies).
* :mod:`~neuronscope.testing.tinylm` — a GPT-2 style byte-level causal LM trained on the
  bundled multilingual corpus in about a minute, cached on disk (``tinylm:SEED``), with its
  ``ByteTokenizer``.
"""
