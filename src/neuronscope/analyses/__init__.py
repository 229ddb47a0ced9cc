"""Plain functions on populations and runs, one module per question neuron research asks.

* :mod:`~neuronscope.analyses.characterize` — what each neuron does and how often it fires:
  dead, dormant, positional, token-detector and hot/cold neurons; top examples.
* :mod:`~neuronscope.analyses.compare` — do two networks (or a network and a brain)
  represent alike: one dispatcher (:func:`compare`, :func:`compare_all`) over the metrics of
  :mod:`~neuronscope.analyses.cka` (linear, debiased, RBF, deconfounded CKA),
  :mod:`~neuronscope.analyses.rsa` (RDMs, comparators, noise ceilings, topological RSA),
  :mod:`~neuronscope.analyses.cca` (CCA, SVCCA, PWCCA), :mod:`~neuronscope.analyses.shape`
  (Procrustes, angular and stochastic shape metrics) and
  :mod:`~neuronscope.analyses.encoding` (ridge encoding models, noise ceilings); the
  metrics share :mod:`~neuronscope.analyses._linalg` and declare themselves with
  :class:`~neuronscope.analyses._metric.Metric`.
* :mod:`~neuronscope.analyses.rsa_workflow` — the RSA model-comparison workflow: models ×
  subjects, bootstrap intervals, pairwise tests, noise ceiling, the bar figure.
* :mod:`~neuronscope.analyses.timecourse` — recordings with a ``time`` coordinate, window by
  window: RDMs, RSA / topological RSA over time, functional connectomes per window.
* :mod:`~neuronscope.analyses.spikes` — spike statistics of spiking networks and brain
  recordings (rate, ISI CV, Fano factor, synchrony) from a model pass, a run or a population.
* :mod:`~neuronscope.analyses.match` — neuron matching across models: universal neurons,
  one-to-one / one-to-many / many-to-many alignment, Rosetta neurons.
* :mod:`~neuronscope.analyses.sysid` — would a metric identify the true model of a
  simulated brain.
* :mod:`~neuronscope.analyses.targets`, :mod:`~neuronscope.analyses.attribute`,
  :mod:`~neuronscope.analyses.steer` — how important is a neuron and what happens when we
  change it: targets, conductance, ablation effects, influential neuron paths, steering.
* :mod:`~neuronscope.analyses.modules` — which neurons work together: co-firing graphs and
  Leiden communities with their stability, the dynamic functional connectome (NTF), Semi-NMF
  features.
* :mod:`~neuronscope.analyses.sparsity` — can the neurons that do not fire be skipped:
  MoEfication (experts + routers, quality kept vs fraction of neurons), activation predictors
  (hot/cold neurons), the sparse FFN module swap and its measured CPU speed-up.
* :mod:`~neuronscope.analyses.extras` — results stored in a run for the atlas.
"""
