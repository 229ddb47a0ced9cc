"""What every source yields: batches of model inputs with their sample coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """One forward pass worth of input.

    ``inputs`` is a dict of keyword tensors (``model(**inputs)``) or one tensor
    (``model(inputs)``). ``mask`` (``[batch, seq]``, bool) marks real positions of sequence
    outputs; padding is dropped. ``samples`` holds one 1-D int64 array per sample coordinate
    for the kept samples in order (for text: ``doc``, ``pos``, ``token_id`` and label codes;
    for tensors: ``item`` and label codes). ``items`` counts the documents/items consumed.
    """

    inputs: dict[str, torch.Tensor] | torch.Tensor
    mask: torch.Tensor | None
    samples: dict[str, np.ndarray]
    items: int
    meta: dict[str, Any] = field(default_factory=dict)


def encode_labels(values: list[Any], categories: list[str]) -> np.ndarray:
    """Map label values to int64 codes of ``categories`` (-1 for a missing label)."""
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(str(v), -1) if v is not None else -1 for v in values], dtype=np.int64)
