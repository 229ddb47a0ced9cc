"""Thumbnails of image inputs for the atlas: the items a neuron's top examples point at.

A run does not keep its inputs (a recording may see 10⁸ items; the atlas needs a few thousand
thumbnails at most), so :func:`resolve_inputs` takes them at build time — an array or a
``TensorSource`` (``build_atlas(run, out, inputs=...)``, ``neuronscope atlas --inputs``), or,
with ``"auto"``, the scikit-learn digits images when the run was recorded on them — and
checks them against the fingerprint the run recorded, so the pictures shown are the items that
were recorded. Only the items referenced by top examples are rendered (memory: those items'
thumbnails), each once, as a small PNG ``data:`` URI (grayscale, RGB or RGBA; at most
:data:`THUMB` pixels a side, block-averaged down; shown enlarged with pixelated scaling).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError

#: Largest thumbnail side in pixels (larger images are block-averaged down).
THUMB = 64


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG file of 8-bit ``pixels``: ``(H, W)`` grayscale, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    color = {1: 0, 3: 2, 4: 6}.get(c)
    if color is None or h < 1 or w < 1:
        raise NeuronscopeError(f"cannot encode a {a.shape} image as PNG")
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png_data_uri(pixels: np.ndarray) -> str:
    """``data:image/png;base64,…`` of :func:`png_bytes`."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def as_image(item: np.ndarray) -> np.ndarray:
    """One input item as ``(H, W)`` or ``(H, W, C)`` with C in 3, 4: ``(C, H, W)`` channels
    first (C = 1 squeezed, C = 3/4 moved last, other C averaged), ``(H, W, C)`` with C in 3, 4
    kept, ``(H, W)`` kept. Anything else is not an image (error)."""
    a = np.asarray(item, dtype=np.float64)
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        if a.shape[0] == 1:
            return a[0]
        if a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
            return np.moveaxis(a, 0, -1)
        if a.shape[-1] in (3, 4):
            return a
        return a.mean(axis=0)
    raise NeuronscopeError(
        f"an input item of shape {a.shape} is not an image; give (n, H, W), (n, C, H, W) or (n, H, W, C) inputs"
    )


def thumbnail(item: np.ndarray, lo: float, hi: float, size: int = THUMB) -> np.ndarray:
    """8-bit thumbnail of one item: :func:`as_image`, scaled linearly from ``[lo, hi]`` to
    ``[0, 255]``, block-averaged so no side exceeds ``size``."""
    a = as_image(item)
    f = int(np.ceil(max(a.shape[0], a.shape[1]) / size))
    if f > 1:
        h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
        a = a[:h, :w].reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((a - lo) / span * 255.0), 0, 255).astype(np.uint8)


def fingerprint(data: Any) -> str:
    """The fingerprint ``TensorSource.describe()`` records: blake2b-128 of the C-ordered bytes."""
    import torch

    t = data.data if hasattr(data, "batches") else data
    t = torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t
    return hashlib.blake2b(t.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


@dataclass
class Inputs:
    """Verified inputs of an image run: ``data`` (items first) and the item id of each row."""

    data: Any
    item_ids: np.ndarray

    def rows(self, items: Iterable[int]) -> dict[int, int]:
        """Row of each item id (ids not among the inputs are left out)."""
        pos = {int(v): i for i, v in enumerate(self.item_ids.tolist())}
        return {int(i): pos[int(i)] for i in items if int(i) in pos}

    def scale(self, sample: int = 512) -> tuple[float, float]:
        """One intensity range for every thumbnail of these inputs: the 0.5th and 99.5th
        percentiles of up to ``sample`` evenly spaced items (read once, then kept)."""
        if getattr(self, "_scale", None) is None:
            n = len(self.data)
            idx = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(int))
            values = np.concatenate([np.asarray(_row(self.data, int(i)), dtype=np.float64).ravel() for i in idx])
            values = values[np.isfinite(values)]
            lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
            self._scale = (float(lo), float(hi))
        return self._scale


def _load_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            for key in ("images", "inputs", "x", "X"):
                if key in z.files:
                    return z[key]
            if len(z.files) == 1:
                return z[z.files[0]]
            raise NeuronscopeError(
                f"{path} holds {', '.join(z.files)}; name the image array 'images' (or keep one array)"
            )
    raise NeuronscopeError(f"--inputs {path}: give the recorded inputs as .npy or .npz")


def resolve_inputs(source: Mapping[str, Any], inputs: Any) -> Inputs | None:
    """The run's inputs as :class:`Inputs`, verified against the recorded source description.

    ``inputs``: ``None`` (no thumbnails), ``"auto"`` (the scikit-learn digits images, shown as
    their raw 0–16 pixels, when the run was recorded on the standardized digits, else none), a ``TensorSource``, an array (or tensor) with the
    items first, or a ``.npy``/``.npz`` path. The bytes must hash to the run's recorded
    fingerprint (the same inputs, any shape — e.g. flat 64-vectors may be given as 8 × 8
    images); otherwise a one-line error, so thumbnails never show other items than the ones
    recorded.
    """
    if inputs is None:
        return None
    recorded = source.get("fingerprint")
    if isinstance(inputs, str) and inputs == "auto":
        if source.get("kind") != "tensor" or source.get("name") != "sklearn digits":
            return None
        from neuronscope.testing.digits import digits_data, digits_images

        x = digits_data("all", "cnn")[0]
        if recorded is None or fingerprint(x) != recorded:
            return None
        return Inputs(digits_images(), np.arange(len(x), dtype=np.int64))  # shown as raw pixels
    if isinstance(inputs, str | Path):
        inputs = _load_array(Path(inputs))
    item_ids = None
    if hasattr(inputs, "batches") and hasattr(inputs, "item_ids"):  # a TensorSource
        item_ids = np.asarray(inputs.item_ids, dtype=np.int64)
        inputs = inputs.data
    data = inputs
    if recorded is None:
        raise NeuronscopeError("this run recorded no input fingerprint (not a tensor source); it has no image inputs")
    if fingerprint(data) != recorded and not _matches_as_float32(data, recorded):
        n = source.get("items")
        raise NeuronscopeError(
            f"the inputs given ({len(data)} items) are not the ones this run recorded ({n} items, "
            f"fingerprint {recorded}); give the same array the run was recorded on"
        )
    if item_ids is None:
        item_ids = np.arange(len(data), dtype=np.int64)
    return Inputs(data, item_ids)


def _matches_as_float32(data: Any, recorded: str) -> bool:
    """The inputs match once cast to float32 (sources record float32 tensors of float64 arrays)."""
    a = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    return a.dtype.kind == "f" and a.dtype != np.float32 and fingerprint(a.astype(np.float32)) == recorded


def render_thumbnails(inputs: Inputs, items: Iterable[int]) -> dict[int, str]:
    """PNG data URIs of the given item ids (each once), all on the inputs' one intensity
    scale (:meth:`Inputs.scale`); only these items are read."""
    rows = inputs.rows(sorted({int(i) for i in items if i is not None and int(i) >= 0}))
    lo, hi = inputs.scale()
    return {i: png_data_uri(thumbnail(_row(inputs.data, r), lo, hi)) for i, r in rows.items()}


def _row(data: Any, i: int) -> np.ndarray:
    row = data[i]
    if hasattr(row, "detach"):
        row = row.detach().cpu().numpy()
    return np.asarray(row)
