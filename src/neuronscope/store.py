"""The run store: a Zarr v3 group holding one recording.

Layout (see DESIGN.md)::

    run.zarr/
      attributes["neuronscope"]: format_version, status, config, sites, source,
                                 samples_committed, items_committed, rows_committed, ...
      samples/<coord>              1-D int64 per sample coordinate (doc, pos, token_id, labels)
      rows                         1-D int64: global sample index of each stored activation row
      vocab                        token strings by id (text runs)
      sites/<site>/activations     (rows, units), chunked (chunk_rows, 64): a batch or a column
                                   of one neuron are both a few chunks
      checkpoints/<0|1>/<site>/…   summary state at the last commit (A/B slots)
      summaries/<site>/…           final summary state of a complete run
      extras/<name>/…              results written by analyses (comparison, matching)

Commit protocol: rows past ``rows_committed`` and a checkpoint slot that is not the
committed one may hold anything; the commit record (the group attributes, written
atomically by Zarr's local store) moves only after the data it covers is written.
A killed recording therefore resumes from the last commit and never holds half a batch.
Nothing is ever unpickled: arrays are numeric or UTF-8 strings, attributes are JSON.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from neuronscope.errors import ConfigMismatchError, FormatVersionError, NeuronscopeError
from neuronscope.population import select_sites

if TYPE_CHECKING:
    from neuronscope.summaries.base import State
    from neuronscope.summaries.site import SiteSummaries

FORMAT_VERSION = 2
ATTR = "neuronscope"
UNIT_CHUNK = 64


def _write_error(path: Path, e: OSError) -> NeuronscopeError:
    return NeuronscopeError(
        f"writing run {path} failed ({e.strerror or e}); free disk space or fix the path, "
        "then re-run the same command to resume"
    )


def _open_group(path: Path, mode: str = "r") -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise NeuronscopeError(f"no run at {path}; record one with `neuronscope record --out {path}`") from None
    except (ValueError, KeyError) as e:
        raise NeuronscopeError(f"{path} is not a neuronscope run ({e}); pass the directory `neuronscope record` wrote") from None


def _meta(group: zarr.Group, path: Path) -> dict[str, Any]:
    meta = group.attrs.get(ATTR)
    if not isinstance(meta, dict):
        raise NeuronscopeError(f"{path} is a Zarr group but not a neuronscope run; pass a run directory")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"run {path} has store format version {version}, this neuronscope reads version "
            f"{FORMAT_VERSION}; re-record it with this version (or --overwrite)"
        )
    return meta


def _save_state(group: zarr.Group, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Store a state (named arrays + JSON attrs) in a group.

    Numeric arrays are packed into one flat, uncompressed array per dtype
    (``packed.<dtype>``) with a JSON layout ``{name: [dtype, offset, shape]}``: summary
    states hold ~60 arrays per site and are rewritten at every checkpoint, and one Zarr
    array costs ~10 ms to create whatever its size. Strings get one array each.
    """
    layout: dict[str, list[Any]] = {}
    parts: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    strings: list[str] = []
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":
            z = group.create_array(f"str.{key}", shape=value.shape, dtype=str, overwrite=True)
            if value.size:
                z[...] = value.astype(object)
            strings.append(key)
            continue
        dt = value.dtype.str
        layout[key] = [dt, sizes.get(dt, 0), list(value.shape)]
        parts.setdefault(dt, []).append(value.ravel())
        sizes[dt] = sizes.get(dt, 0) + value.size
    for dt, chunks in parts.items():
        flat = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        z = group.create_array(f"packed.{np.dtype(dt).name}", shape=flat.shape, dtype=flat.dtype, overwrite=True,
                               compressors=None, chunks=(max(flat.size, 1),))
        if flat.size:
            z[...] = flat
    group.attrs.update({"state": dict(attrs), "layout": layout, "strings": strings})


def _load_state(group: zarr.Group) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`_save_state` (no pickle: numbers and UTF-8 strings only)."""
    layout = group.attrs.get("layout", {})
    flats: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for key, (dt, offset, shape) in layout.items():
        dtype = np.dtype(dt)
        if dtype.name not in flats:
            flats[dtype.name] = np.asarray(group[f"packed.{dtype.name}"][...])
        size = int(np.prod(shape)) if shape else 1
        out[key] = flats[dtype.name][offset : offset + size].reshape(shape)
    for key in group.attrs.get("strings", []):
        out[key] = np.asarray(group[f"str.{key}"][...])
    return out, dict(group.attrs.get("state", {}))


class RunWriter:
    """Append-only writer of a run with commits and resume (used by ``record``)."""

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        sites: Mapping[str, int],
        *,
        vocab: list[str] | None,
        label_categories: Mapping[str, list[str]],
        store_activations: bool,
        dtype: str,
        chunk_rows: int = 4096,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.config = config
        self.sites = dict(sites)
        self.store_activations = store_activations
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.resumed = False
        try:
            self._open_or_create(vocab, label_categories, overwrite)
        except OSError as e:
            raise _write_error(self.path, e) from None

    # -- opening ---------------------------------------------------------------------
    def _open_or_create(self, vocab, label_categories, overwrite: bool) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            if overwrite:
                shutil.rmtree(self.path)
            else:
                group = _open_group(self.path, "r+")
                meta = _meta(group, self.path)
                if meta.get("config") != self.config:
                    diff = sorted(
                        k for k in set(meta.get("config", {})) | set(self.config)
                        if meta.get("config", {}).get(k) != self.config.get(k)
                    )
                    raise ConfigMismatchError(
                        f"a run with a different configuration ({', '.join(diff)}) exists at {self.path}; "
                        "pass --overwrite (overwrite=True) to replace it or choose another --out"
                    )
                self.group = group
                self.meta = meta
                self.resumed = True
                self._reload_buffers()
                return
        # Build the empty store beside the target and rename it into place, so a crash or a
        # write error during creation never leaves a half-made run at ``path``.
        partial = self.path.with_name(self.path.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        if self.path.exists():
            self.path.rmdir()
        self.group = zarr.open_group(str(partial), mode="w", zarr_format=3)
        self.meta = {
            "format_version": FORMAT_VERSION,
            "status": "recording",
            "config": self.config,
            "sites": self.sites,
            "label_categories": dict(label_categories),
            "samples_committed": 0,
            "items_committed": 0,
            "rows_committed": 0,
            "nonfinite": dict.fromkeys(self.sites, 0),
            "checkpoint": None,
            "sample_coords": [],
        }
        if vocab is not None:
            z = self.group.create_array("vocab", shape=(len(vocab),), dtype=str, chunks=(max(len(vocab), 1),))
            z[:] = np.array(vocab, dtype=object)
        self.group.require_group("samples")
        self.group.create_array("rows", shape=(0,), chunks=(1 << 16,), dtype="int64")
        if self.store_activations:
            sg = self.group.require_group("sites")
            for name, units in self.sites.items():
                sg.require_group(name).create_array(
                    "activations",
                    shape=(0, units),
                    chunks=(self.chunk_rows, min(units, UNIT_CHUNK)),
                    dtype=self.dtype,
                    compressors=None,
                    fill_value=0,
                )
        self.group.attrs[ATTR] = self.meta
        partial.rename(self.path)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self._reset_buffers(0)

    def _reset_buffers(self, aligned: int) -> None:
        self.aligned = aligned  # first row of the buffer; a multiple of chunk_rows
        c = self.chunk_rows
        self.buf_rows = np.empty(c, dtype=np.int64)
        # one preallocated chunk per site: rows are copied in once (with the dtype cast)
        self.buf_acts = {s: np.empty((c, u), dtype=self.dtype) for s, u in self.sites.items()} if self.store_activations else {}
        self.buf_n = 0
        self.pending_samples: dict[str, list[np.ndarray]] = {}

    def _reload_buffers(self) -> None:
        rows = self.meta["rows_committed"]
        aligned = rows - rows % self.chunk_rows
        self._reset_buffers(aligned)
        # Cut arrays back to the commit: rows past it are not part of the run.
        self.group["rows"].resize((rows,))
        for name in self.meta["sample_coords"]:
            self.group["samples"][name].resize((self.meta["samples_committed"],))
        if rows > aligned:
            self.buf_n = rows - aligned
            self.buf_rows[: self.buf_n] = self.group["rows"][aligned:rows]
            if self.store_activations:
                for s in self.sites:
                    self.buf_acts[s][: self.buf_n] = self.acts_array(s)[aligned:rows]
        if self.store_activations:
            for s in self.sites:
                self.acts_array(s).resize((rows, self.sites[s]))

    def acts_array(self, site: str) -> zarr.Array:
        return self.group["sites"][site]["activations"]

    # -- state ------------------------------------------------------------------------
    @property
    def samples_committed(self) -> int:
        return int(self.meta["samples_committed"])

    @property
    def items_committed(self) -> int:
        return int(self.meta["items_committed"])

    @property
    def complete(self) -> bool:
        return self.meta["status"] == "complete"

    def load_checkpoint(self) -> dict[str, State] | None:
        """Summary states at the last commit, per site (None if never checkpointed)."""
        slot = self.meta.get("checkpoint")
        if slot is None:
            return None
        g = self.group["checkpoints"][str(slot)]
        return {s: _load_state(g[s]) for s in self.sites}

    # -- appending --------------------------------------------------------------------
    def append(self, samples: Mapping[str, np.ndarray], rows: np.ndarray, acts: Mapping[str, np.ndarray] | None) -> None:
        """Buffer one batch: all its sample coords, and the activation rows to keep
        (``rows`` = global sample ids of the kept rows, ``acts[site]`` = their values)."""
        for k, v in samples.items():
            self.pending_samples.setdefault(k, []).append(np.asarray(v, dtype=np.int64))
        if self.store_activations and len(rows):
            c, done = self.chunk_rows, 0
            while done < len(rows):
                take = min(c - self.buf_n, len(rows) - done)
                sl = slice(self.buf_n, self.buf_n + take)
                self.buf_rows[sl] = rows[done : done + take]
                for s in self.sites:
                    self.buf_acts[s][sl] = acts[s][done : done + take]
                self.buf_n += take
                done += take
                if self.buf_n == c:
                    self._flush_full_chunk()

    def _flush_full_chunk(self) -> None:
        try:
            self._write_rows(self.aligned, self.buf_rows, self.buf_acts)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self.aligned += self.chunk_rows
        self.buf_n = 0

    def _write_rows(self, start: int, rows: np.ndarray, acts: Mapping[str, np.ndarray]) -> None:
        end = start + len(rows)
        arr = self.group["rows"]
        if arr.shape[0] < end:
            arr.resize((end,))
        arr[start:end] = rows
        for s, a in acts.items():
            z = self.acts_array(s)
            if z.shape[0] < end:
                z.resize((end, z.shape[1]))
            z[start:end] = a

    def commit(
        self,
        items: int,
        nonfinite: Mapping[str, int],
        summary_states: Mapping[str, State] | None,
    ) -> None:
        """Make everything appended so far durable, then move the commit record."""
        try:
            samples_added = 0
            if self.pending_samples:
                sg = self.group["samples"]
                start = self.samples_committed
                for k, parts in self.pending_samples.items():
                    v = np.concatenate(parts)
                    samples_added = len(v)
                    if k not in sg:
                        sg.create_array(k, shape=(0,), chunks=(1 << 16,), dtype="int64")
                        if k not in self.meta["sample_coords"]:
                            self.meta["sample_coords"].append(k)
                    z = sg[k]
                    z.resize((start + len(v),))
                    z[start:] = v
                self.pending_samples = {}
            if self.store_activations and self.buf_n:
                n = self.buf_n
                self._write_rows(self.aligned, self.buf_rows[:n], {s: b[:n] for s, b in self.buf_acts.items()})
            slot = self.meta.get("checkpoint")
            if summary_states is not None:
                slot = 1 - slot if slot in (0, 1) else 0
                cg = self.group.require_group("checkpoints").require_group(str(slot))
                for s, (arrays, attrs) in summary_states.items():
                    _save_state(cg.require_group(s), arrays, attrs)
            meta = dict(self.meta)
            meta["samples_committed"] = self.samples_committed + samples_added
            meta["items_committed"] = self.items_committed + items
            meta["rows_committed"] = self.aligned + self.buf_n
            meta["nonfinite"] = {s: int(nonfinite.get(s, 0)) for s in self.sites}
            meta["checkpoint"] = slot
            self.group.attrs[ATTR] = meta
            self.meta = meta
        except OSError as e:
            raise _write_error(self.path, e) from None

    def finish(self, summary_states: Mapping[str, State] | None, info: Mapping[str, Any]) -> None:
        """Write the final summaries and mark the run complete."""
        try:
            if summary_states is not None:
                sg = self.group.require_group("summaries")
                slot = self.meta.get("checkpoint")
                for s, (arrays, attrs) in summary_states.items():
                    if s in sg:
                        del sg[s]
                    ckpt = self.path / "checkpoints" / str(slot) / s
                    if slot is not None and ckpt.is_dir():
                        # the last commit wrote exactly this state: move it instead of rewriting it
                        os.replace(ckpt, self.path / "summaries" / s)
                    else:
                        _save_state(sg.require_group(s), arrays, attrs)
            meta = dict(self.meta)
            meta["status"] = "complete"
            meta.update(info)
            self.group.attrs[ATTR] = meta
            self.meta = meta
            if "checkpoints" in self.group:
                del self.group["checkpoints"]
        except OSError as e:
            raise _write_error(self.path, e) from None


class Run:
    """A recorded run, read-only (``open_run``). Populations are dask-backed DataArrays."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise NeuronscopeError(f"no run at {self.path}; record one with `neuronscope record --out {self.path}`")
        self.group = _open_group(self.path, "r")
        self.attrs = _meta(self.group, self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, sites={len(self.sites)}, samples={self.n_samples})"

    @property
    def status(self) -> str:
        return str(self.attrs["status"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs["config"])

    @property
    def sites(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.attrs["sites"].items()}

    @property
    def n_samples(self) -> int:
        return int(self.attrs["samples_committed"])

    @property
    def n_rows(self) -> int:
        return int(self.attrs["rows_committed"])

    @property
    def label_categories(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.attrs.get("label_categories", {}).items()}

    @property
    def has_activations(self) -> bool:
        return "sites" in self.group and self.n_rows > 0

    @cached_property
    def vocab(self) -> list[str] | None:
        return [str(t) for t in self.group["vocab"][...]] if "vocab" in self.group else None

    @cached_property
    def samples(self) -> dict[str, np.ndarray]:
        """Sample coordinates of all committed samples; labels decoded to strings."""
        n = self.n_samples
        out: dict[str, np.ndarray] = {"sample": np.arange(n, dtype=np.int64)}
        cats = self.label_categories
        for k in self.attrs.get("sample_coords", []):
            v = np.asarray(self.group["samples"][k][:n])
            if k in cats:
                labels = np.array([*cats[k], ""], dtype=object)
                v = labels[np.where(v < 0, len(cats[k]), v)]
            out[k] = v
        return out

    def _site_names(self, pattern: str | None) -> list[str]:
        """The run's sites matched by ``pattern`` (:func:`~neuronscope.population.select_sites`)."""
        return select_sites(self.sites, pattern, where=f"of run {self.path}")

    def population(self, sites: str | None = None):
        """Stored activations as a dask-backed ``xarray.DataArray`` (dims ``sample``,
        ``neuron``; neuron coords ``site``, ``unit``; sample coords as recorded)."""
        import dask.array as da
        import xarray as xr

        if "sites" not in self.group:
            raise NeuronscopeError(f"run {self.path} kept no activations (keep=summaries); re-record with --keep both")
        names = self._site_names(sites)
        n = self.n_rows
        parts = [da.from_zarr(self.group["sites"][s]["activations"])[:n] for s in names]
        data = da.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        rows = np.asarray(self.group["rows"][:n])
        coords: dict[str, Any] = {
            "site": ("neuron", np.repeat(np.array(names, dtype=object), [self.sites[s] for s in names])),
            "unit": ("neuron", np.concatenate([np.arange(self.sites[s]) for s in names])),
        }
        for k, v in self.samples.items():
            coords[k] = ("sample", v[rows])
        if self.vocab is not None and "token_id" in coords:
            coords["token"] = ("sample", np.array(self.vocab, dtype=object)[coords["token_id"][1]])
        return xr.DataArray(data, dims=("sample", "neuron"), coords=coords, name="activation")

    # -- read side: grouped reductions straight from the store --------------------------
    POOLINGS = ("mean", "sum", "max", "min", "first", "last")

    def pooled(self, sites: str | None = None, by: str = "doc", how: str = "mean", block_rows: int = 8192):
        """Stored activations reduced per group of samples (per document by default), read
        chunk by chunk: ``pop.groupby(by).mean()`` without building a task graph.

        ``by`` is a sample coordinate (``doc``, ``item``, a label such as ``lang``); ``how``
        is ``mean``, ``sum``, ``max``, ``min``, ``first`` or ``last`` (the first/last stored
        sample of the group in recording order — e.g. a document's last token). Each block of
        ``block_rows`` rows of every selected site is read once and reduced in one step (sums:
        a sparse group-indicator product, float32 within a block and float64 across blocks;
        max/min/first/last: ``reduceat`` over the block's rows sorted by group); memory is the
        result plus one block. Returns an in-memory
        ``xarray.DataArray`` with dims ``("sample", "neuron")``: one sample per group, in
        ascending order of ``by`` (as ``groupby``), coordinates ``by``, ``count`` (stored
        samples in the group) and every other sample coordinate that is constant within each
        group (e.g. a document's ``lang``); neuron coordinates ``site`` and ``unit``. float32
        for float16/float32 runs.
        """
        import scipy.sparse
        import xarray as xr

        if how not in self.POOLINGS:
            raise NeuronscopeError(f"unknown pooling {how!r}; use one of {', '.join(self.POOLINGS)}")
        if "sites" not in self.group:
            raise NeuronscopeError(f"run {self.path} kept no activations (keep=summaries); re-record with --keep both")
        samples = self.samples
        if by not in samples:
            raise NeuronscopeError(
                f"run {self.path} has no sample coordinate {by!r}; use one of {', '.join(samples)}"
            )
        names = self._site_names(sites)
        n = self.n_rows
        stored = np.asarray(self.group["rows"][:n])
        keys, codes = np.unique(samples[by][stored], return_inverse=True)
        codes = codes.reshape(-1)
        g = len(keys)
        count = np.bincount(codes, minlength=g)
        width = sum(self.sites[s] for s in names)
        first_dtype = np.dtype(self.group["sites"][names[0]]["activations"].dtype)
        out_dtype = np.float32 if first_dtype.itemsize <= 4 and first_dtype.kind == "f" else np.float64
        acc_dtype = np.float64 if how in ("mean", "sum") else out_dtype
        fill = {"max": -np.inf, "min": np.inf}.get(how, 0.0)
        out = np.full((g, width), fill, dtype=acc_dtype)
        seen = np.zeros(g, dtype=bool)
        if block_rows < 1:
            raise NeuronscopeError("block_rows must be a positive integer")
        for r0 in range(0, n, block_rows):
            r1 = min(n, r0 + block_rows)
            c = codes[r0:r1]
            if how in ("mean", "sum"):
                # one sparse indicator product per block: group sums without sorting the rows
                groups, inv = np.unique(c, return_inverse=True)
                indicator = scipy.sparse.csr_matrix(
                    (np.ones(len(c), np.float32), (inv.reshape(-1), np.arange(len(c)))),
                    shape=(len(groups), len(c)))
            else:
                order = None if np.all(c[1:] >= c[:-1]) else np.argsort(c, kind="stable")
                cs = c if order is None else c[order]
                starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
                groups = cs[starts]
            col = 0
            for s in names:
                block = np.asarray(self.group["sites"][s]["activations"][r0:r1])
                if block.dtype == np.float16:
                    block = block.astype(np.float32)
                dest = out[:, col : col + block.shape[1]]
                col += block.shape[1]
                if how in ("mean", "sum"):
                    dest[groups] += indicator @ block
                    continue
                if order is not None:
                    block = block[order]
                if how == "max":
                    dest[groups] = np.maximum(dest[groups], np.maximum.reduceat(block, starts, axis=0))
                elif how == "min":
                    dest[groups] = np.minimum(dest[groups], np.minimum.reduceat(block, starts, axis=0))
                elif how == "first":
                    new = ~seen[groups]
                    dest[groups[new]] = block[starts[new]]
                else:  # last
                    dest[groups] = block[np.r_[starts[1:], len(cs)] - 1]
            seen[groups] = True
        if how == "mean":
            out /= count[:, None]
        coords: dict[str, Any] = {
            by: ("sample", keys),
            "count": ("sample", count),
            "site": ("neuron", np.repeat(np.array(names, dtype=object), [self.sites[s] for s in names])),
            "unit": ("neuron", np.concatenate([np.arange(self.sites[s]) for s in names])),
        }
        first_row = np.zeros(g, dtype=np.int64)
        first_row[codes[::-1]] = np.arange(n - 1, -1, -1)  # the first stored row of each group
        for k, v in samples.items():
            if k in (by, "sample"):
                continue
            v = np.asarray(v)[stored]
            head = v[first_row]
            if np.array_equal(v, head[codes]):
                coords[k] = ("sample", head)
        return xr.DataArray(out.astype(out_dtype, copy=False), dims=("sample", "neuron"), coords=coords,
                            name="activation", attrs={"pooled_by": by, "pooling": how})

    def summaries(self, site: str) -> SiteSummaries | None:
        """The site's streaming summaries (a ``SiteSummaries``), or None if none were kept."""
        from neuronscope.summaries.site import SiteSummaries

        if site not in self.sites:
            raise NeuronscopeError(f"run {self.path} has no site {site!r}; its sites: {', '.join(self.sites)}")
        if "summaries" not in self.group or site not in self.group["summaries"]:
            return None
        arrays, attrs = _load_state(self.group["summaries"][site])
        return SiteSummaries.from_state(arrays, attrs)

    def extras(self, name: str) -> dict[str, Any] | None:
        """A result an analysis stored in the run (arrays and attrs), or None."""
        if "extras" not in self.group or name not in self.group["extras"]:
            return None
        arrays, attrs = _load_state(self.group["extras"][name])
        return {"arrays": arrays, "attrs": attrs}

    def extra_names(self) -> list[str]:
        return sorted(self.group["extras"].group_keys()) if "extras" in self.group else []

    def write_extras(self, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        """Store an analysis result (e.g. a comparison heatmap) inside the run."""
        g = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        _save_state(g.require_group("extras").require_group(name), arrays, attrs)

    def write_summaries(self, summaries: Mapping[str, SiteSummaries]) -> None:
        """Store per-site summaries (e.g. from ``summarize_run``) as the run's summaries."""
        g = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        sg = g.require_group("summaries")
        for site, ss in summaries.items():
            if site not in self.sites:
                raise NeuronscopeError(f"run {self.path} has no site {site!r}")
            if site in sg:
                del sg[site]
            _save_state(sg.require_group(site), *ss.state())
        self.group = _open_group(self.path, "r")

    def info(self) -> dict[str, Any]:
        """What ``neuronscope info`` prints: sites, units, samples, status, configuration."""
        return {
            "path": str(self.path),
            "status": self.status,
            "format_version": self.attrs["format_version"],
            "model": self.config.get("model"),
            "source": self.config.get("source"),
            "sites": self.sites,
            "neurons": sum(self.sites.values()),
            "samples": self.n_samples,
            "items": int(self.attrs["items_committed"]),
            "activation_rows": self.n_rows,
            "keep": self.config.get("keep"),
            "dtype": self.config.get("dtype"),
            "sample_rate": self.config.get("sample_rate"),
            "nonfinite": self.attrs.get("nonfinite", {}),
            "summaries": "summaries" in self.group,
            "extras": self.extra_names(),
            "seconds": self.attrs.get("seconds"),
        }


def open_run(path: str | Path) -> Run:
    """Open a run store read-only. Raises a clear error for a missing path, a non-run
    directory, or a store written by another format version."""
    return Run(path)
