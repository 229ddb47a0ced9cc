"""Label fields from outside the corpus: a per-document labels file, or a function of the token.

Per-label summaries (LAPE's firing per label, per-label moments) are computed for every
label field a source declares in ``label_categories`` and carries as an int64 sample
coordinate. A ``.jsonl`` corpus brings its own fields; :class:`LabeledSource` adds more to
any source:

* per-document values (one per document or item, in corpus order) — a list, or a file read
  by :func:`read_doc_labels` (``.jsonl``: one object per line, every scalar field a label;
  ``.csv``: a header row of field names; ``.txt``: one value per line, the field named by
  the file's stem); an empty / null value means the label is missing for that document;
* per-token values — a function ``token string → value`` (None = no label) applied once to
  the source's vocabulary, e.g. ``{"is_digit": lambda t: "digit" if t.strip().isdigit() else "other"}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch, encode_labels


def read_doc_labels(path: str | Path) -> dict[str, list[Any]]:
    """Per-document label values from a file (see the module docstring): ``{field: values}``,
    one value per line / row in document order, None where missing."""
    p = Path(path)
    if not p.is_file():
        raise NeuronscopeError(f"labels file {p} does not exist; pass a .jsonl, .csv or .txt file with one line per document")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NeuronscopeError(f"cannot read labels file {p} ({e}); pass a UTF-8 text file") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out: dict[str, list[Any]] = {}
    if p.suffix == ".jsonl":
        for i, ln in enumerate(lines):
            try:
                obj = json.loads(ln) if ln.strip() else {}
            except json.JSONDecodeError:
                raise NeuronscopeError(f"{p}:{i + 1} is not valid JSON; each line must be an object of labels") from None
            if not isinstance(obj, dict):
                raise NeuronscopeError(f"{p}:{i + 1} is not a JSON object; each line must be an object of labels")
            for k, v in obj.items():
                if v is None or isinstance(v, str | int | float | bool):
                    out.setdefault(str(k), [None] * i)
            for k in out:
                v = obj.get(k)
                out[k].append(None if v is None or v == "" else v)
    elif p.suffix == ".csv":
        rows = list(csv.reader(lines))
        if not rows or not rows[0]:
            raise NeuronscopeError(f"{p} has no header row; the first row names the label fields")
        header = [h.strip() for h in rows[0]]
        for k in header:
            out[k] = []
        for i, row in enumerate(rows[1:]):
            if len(row) > len(header):
                raise NeuronscopeError(f"{p}:{i + 2} has {len(row)} columns, the header {len(header)}")
            for j, k in enumerate(header):
                v = row[j].strip() if j < len(row) else ""
                out[k].append(v or None)
    else:
        out[p.stem] = [ln.strip() or None for ln in lines]
    if not out or not any(out.values()):
        raise NeuronscopeError(f"labels file {p} holds no labels")
    return out


def _fingerprint(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, default=str).encode(), digest_size=16).hexdigest()


class LabeledSource:
    """``source`` with extra label fields: ``doc_labels`` (``{field: values}`` with one value
    per document / item, or a labels file for :func:`read_doc_labels`) and ``token_labels``
    (``{field: function(token string) → value or None}``, applied to ``source.vocab()``).

    It is a source like any other (``batches``, ``describe``, ``vocab``,
    ``label_categories``): :func:`neuronscope.record` computes per-label firing and moments
    for the added fields. A field the source already has is refused.
    """

    def __init__(
        self,
        source: Any,
        doc_labels: Mapping[str, Sequence[Any]] | str | Path | None = None,
        token_labels: Mapping[str, Callable[[str], Any]] | None = None,
    ) -> None:
        self.source = source
        self.kind = getattr(source, "kind", "source")
        self.label_file = None
        if isinstance(doc_labels, str | Path):
            self.label_file = str(Path(doc_labels).resolve())
            doc_labels = read_doc_labels(doc_labels)
        doc_labels = dict(doc_labels or {})
        token_labels = dict(token_labels or {})
        base = dict(getattr(source, "label_categories", {}) or {})
        clash = (set(doc_labels) | set(token_labels)) & set(base) or set(doc_labels) & set(token_labels)
        if clash:
            raise NeuronscopeError(f"label field {sorted(clash)[0]!r} is given twice; rename one of them")
        n = len(source)
        self._doc_codes: dict[str, np.ndarray] = {}
        self._token_codes: dict[str, np.ndarray] = {}
        self._describe: dict[str, Any] = {}
        cats = dict(base)
        for k, values in doc_labels.items():
            values = list(values)
            if len(values) != n:
                raise NeuronscopeError(f"label {k!r} has {len(values)} values for {n} documents; give one per document")
            cats[k] = sorted({str(v) for v in values if v is not None})
            self._doc_codes[k] = encode_labels(values, cats[k])
            self._describe[k] = {"per": "document", "fingerprint": _fingerprint(values)}
        if token_labels:
            vocab = source.vocab()
            if vocab is None:
                raise NeuronscopeError("token labels need a text source (a vocabulary of token strings)")
            for k, fn in token_labels.items():
                values = [fn(str(t)) for t in vocab]
                cats[k] = sorted({str(v) for v in values if v is not None})
                self._token_codes[k] = encode_labels(values, cats[k])
                self._describe[k] = {"per": "token", "function": getattr(fn, "__qualname__", repr(fn)),
                                     "fingerprint": _fingerprint(values)}
        self.label_categories = cats

    def __len__(self) -> int:
        return len(self.source)

    def vocab(self) -> list[str] | None:
        return self.source.vocab()

    @property
    def varying_shapes(self) -> bool:
        """The wrapped source's (see :attr:`TextSource.varying_shapes`)."""
        return bool(getattr(self.source, "varying_shapes", False))

    def stats(self) -> dict[str, Any] | None:
        """The wrapped source's batching statistics (None if it has none)."""
        f = getattr(self.source, "stats", None)
        return f() if callable(f) else None

    def next_document(self, items: int) -> int | None:
        """The wrapped source's first document after ``items`` items (None if unknown)."""
        f = getattr(self.source, "next_document", None)
        return f(items) if callable(f) else None

    def describe(self) -> dict[str, Any]:
        """The wrapped source's description with the added label fields (their categories,
        per-document or per-token, and a fingerprint of their values; the labels file)."""
        d = dict(self.source.describe())
        d["labels"] = self.label_categories
        d["added_labels"] = self._describe
        if self.label_file:
            d["label_file"] = self.label_file
        return d

    def batches(self, start: int = 0) -> Iterator[Batch]:
        item = start
        for batch in self.source.batches(start=start):
            s = batch.samples
            if self._doc_codes:
                if "doc" in s:
                    idx = np.asarray(s["doc"], dtype=np.int64)
                else:
                    per = len(next(iter(s.values()))) // max(batch.items, 1)
                    idx = np.repeat(np.arange(item, item + batch.items, dtype=np.int64), per)
                for k, codes in self._doc_codes.items():
                    s[k] = codes[idx]
            if self._token_codes:
                if "token_id" not in s:
                    raise NeuronscopeError("token labels need samples with token_id (a text source)")
                tid = np.asarray(s["token_id"], dtype=np.int64)
                for k, codes in self._token_codes.items():
                    s[k] = np.where((tid >= 0) & (tid < len(codes)), codes[np.clip(tid, 0, len(codes) - 1)], -1)
            item += batch.items
            yield batch
