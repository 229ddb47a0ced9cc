"""Tensor sources: images or feature vectors fed to any ``torch.nn.Module``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch, encode_labels


class TensorSource:
    """Batches of a tensor (items × …), one sample per item (or per spatial position of
    conv sites), sample coordinate ``item`` plus optional per-item labels."""

    kind = "tensor"

    def __init__(
        self,
        data: torch.Tensor | np.ndarray,
        batch_size: int = 64,
        labels: dict[str, Sequence[Any]] | None = None,
        item_ids: Sequence[int] | None = None,
        name: str = "<tensor>",
    ):
        t = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        if t.ndim < 1 or t.shape[0] == 0:
            raise NeuronscopeError("tensor source is empty; give an array with at least one item")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NeuronscopeError("tensor source holds NaN or Inf inputs; clean the inputs first")
        if batch_size < 1:
            raise NeuronscopeError("batch_size must be a positive integer")
        self.data = t
        self.batch_size = batch_size
        self.name = name
        self.item_ids = np.arange(len(t), dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if len(self.item_ids) != len(t):
            raise NeuronscopeError("item_ids must have one id per item")
        labels = labels or {}
        for k, v in labels.items():
            if len(v) != len(t):
                raise NeuronscopeError(f"label {k!r} has {len(v)} values for {len(t)} items")
        self.label_categories = {k: sorted({str(x) for x in v}) for k, v in labels.items()}
        self._codes = {k: encode_labels(list(v), self.label_categories[k]) for k, v in labels.items()}

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def describe(self) -> dict[str, Any]:
        h = hashlib.blake2b(self.data.detach().cpu().contiguous().numpy().tobytes(), digest_size=16)
        return {
            "kind": self.kind,
            "name": self.name,
            "items": len(self),
            "shape": list(self.data.shape),
            "fingerprint": h.hexdigest(),
            "labels": self.label_categories,
            "batch_size": self.batch_size,
        }

    def vocab(self) -> None:
        return None

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for b0 in range(start, len(self), self.batch_size):
            x = self.data[b0 : b0 + self.batch_size]
            samples = {"item": self.item_ids[b0 : b0 + len(x)]}
            for k, codes in self._codes.items():
                samples[k] = codes[b0 : b0 + len(x)]
            yield Batch(inputs=x, mask=None, samples=samples, items=len(x))
