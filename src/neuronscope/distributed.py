"""Scale-out with Dask: summarize a stored run chunk by chunk, or shard a recording.

Both paths compute per-part :class:`~neuronscope.summaries.site.SiteSummaries` on workers
and tree-merge them (``merge`` is associative and exact to float rounding), so the result
equals the single-process one. Workers exchange summary *states* (dicts of numpy arrays
and JSON attrs); activations hardly travel: workers read their rows from the store, or
compute them from their own shard of the corpus and (a recording that keeps activations)
write them into the run themselves — only the rows of the at most one chunk two
neighbouring shards share go to the driver, which writes that chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuronscope.errors import NeuronscopeError
from neuronscope.summaries.base import State, tree_reduce

if TYPE_CHECKING:
    from neuronscope.store import Run
    from neuronscope.summaries.site import SiteSummaries, SummaryConfig


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` if given, else a ``LocalCluster`` of
    ``workers`` single-threaded worker processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as e:
            raise NeuronscopeError(f"cannot reach Dask scheduler {scheduler} ({e}); check the address") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or 2
    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)
    # Everything on localhost; no dashboard, and the scheduler's health/metrics HTTP server
    # (which Dask starts even without one) on a free local port instead of 8787.
    with (LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster,
          Client(cluster) as client):
        yield client


def _merge_states(a: State, b: State) -> State:
    from neuronscope.summaries.site import SiteSummaries

    return SiteSummaries.from_state(*a).merge(SiteSummaries.from_state(*b)).state()


def tree_future(client: Any, futures: list[Any]) -> Any:
    """Submit a balanced tree of pairwise merges of summary-state futures on the cluster
    (:func:`~neuronscope.summaries.base.tree_reduce` with a merge task per pair); return the
    root future (nothing waits here, so several trees run side by side)."""
    return tree_reduce(futures, lambda a, b: client.submit(_merge_states, a, b, pure=False))


# -- summarize a stored run -------------------------------------------------------------
def _doc_aligned_chunks(doc: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Row ranges of about ``target`` rows that never split a document."""
    n = len(doc)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    bounds = [0]
    for s in starts[1:]:
        if s - bounds[-1] >= target:
            bounds.append(int(s))
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


#: at most this many rows per summarizing task by default (a lost worker repeats one task)
_TASK_ROWS = 1 << 20
#: rows a summarizing task reads per step: whole chunk rows of the store, at least this many
_READ_ROWS = 8192


def _doc_aligned_reads(z: Any, doc: np.ndarray, start: int, stop: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(a, b, acts)``: rows ``[a, b)`` of stored array ``z`` as float32, in steps that
    read whole chunk rows of the store (about :data:`_READ_ROWS` rows) and end on a
    document boundary (``doc``: the document of rows ``start:stop``), so top-k context
    stays whole; a step's unfinished last document carries over to the next. One float32
    buffer is reused throughout: reading a range of a run costs the buffer, not the range
    (a fresh array per read would also pay a page fault per 4 KiB of it)."""
    c = int(z.chunks[0])
    step = c * max(1, -(-_READ_ROWS // c))
    buf = np.empty((step + c, z.shape[1]), dtype=np.float32)
    lo = pos = start  # the buffer holds rows [lo, pos)
    while pos < stop:
        hi = min(stop, (pos // c) * c + step)
        held, need = pos - lo, hi - lo
        if need > len(buf):  # a document longer than the buffer: grow it
            grown = np.empty((max(need, 2 * len(buf)), buf.shape[1]), dtype=np.float32)
            grown[:held] = buf[:held]
            buf = grown
        np.copyto(buf[held:need], z[pos:hi], casting="unsafe")
        pos = hi
        if pos < stop:
            d = doc[lo - start : pos - start]
            starts = np.flatnonzero(d[1:] != d[:-1]) + 1
            if not len(starts):
                continue  # one document so far: read on
            cut = int(starts[-1])
        else:
            cut = pos - lo
        yield lo, lo + cut, buf[:cut]
        rest = pos - lo - cut
        buf[:rest] = buf[cut : cut + rest]
        lo += cut


def _summarize_rows(path: str, site: str, start: int, stop: int, cfg: dict[str, Any], calib_rows: int) -> State:
    """The summary state of rows ``[start, stop)`` of ``site``, read in document-aligned
    steps into one reused buffer (:func:`_doc_aligned_reads`); histogram bins from the
    site's first ``calib_rows`` rows (read here, in parallel with the other tasks)."""
    from neuronscope.recording import finite_or_zero
    from neuronscope.store import open_run
    from neuronscope.summaries.site import SiteSummaries, SummaryConfig

    run = open_run(path)
    z = run.activations(site)
    rows = run.rows(start, stop)
    samples = {"sample": rows}  # label coordinates as stored (category codes), not decoded
    for k in run.attrs.get("sample_coords", []):
        with run._reading(f"samples/{k}"):
            samples[k] = np.asarray(run.group["samples"][k].get_orthogonal_selection(rows))
    doc = samples["doc"] if "doc" in samples else samples.get("item", rows)
    with run._reading(f"sites/{site}/activations"):
        calibration, _ = finite_or_zero(np.asarray(z[:calib_rows], dtype=np.float32))
        ss = SiteSummaries.create(z.shape[1], SummaryConfig.from_dict(cfg), calibration)
        del calibration
        for a, b, acts in _doc_aligned_reads(z, doc, start, stop):
            acts, _ = finite_or_zero(acts)
            ss.update(acts, {k: v[a - start : b - start] for k, v in samples.items()}, finite=True)
    return ss.state()


def summarize_run(
    run: Any,
    sites: str | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    summary_config: Mapping[str, Any] | None = None,
    chunk_rows: int | None = None,
    client: Any = None,
) -> dict[str, SiteSummaries]:
    """Streaming summaries of a stored run's activations, chunk by chunk on a Dask
    cluster, tree-merged: ``{site: SiteSummaries}``.

    Chunks never split a document (top-k context needs whole documents). ``chunk_rows``
    defaults to an even share of the rows per ``lcm(workers, sites) / sites`` chunks of
    each site (so every worker gets the same number of equal tasks), at least
    :data:`_READ_ROWS` and at most :data:`_TASK_ROWS` rows: a task reads its chunk in steps into one reused buffer
    (:func:`_doc_aligned_reads`), so its memory does not grow with the chunk, while every
    task ships a full summary state (~7 MB per MiniLM site with float16 storage, whose
    top-k context is then kept in float16) to the merge tree, so fewer, larger tasks
    scale better. Histogram bins come from the same
    calibration rows as ``record`` (the first batch of the source), so with float32
    storage the result equals the summaries computed while recording.
    """
    from neuronscope.store import Run, open_run
    from neuronscope.summaries.site import SiteSummaries, SummaryConfig

    run = run if isinstance(run, Run) else open_run(run)
    if not run.has_activations:
        raise NeuronscopeError(f"run {run.path} has no stored activations to summarize; record with --keep both or activations")
    names = run._site_names(sites)
    cfg = dict(run.config.get("summary_config") or summary_config or SummaryConfig().to_dict())
    cfg["label_fields"] = run.label_categories
    if run.config.get("dtype") == "float16":
        cfg["context_dtype"] = "float16"  # the stored activations are float16: no loss
    rows = run.rows()
    src = run.config.get("source", {})
    key = "doc" if "doc" in run.samples else "item"
    ids = run.samples[key][rows]
    first = (run.attrs.get("batching") or {}).get("first_batch_samples")
    if first is not None:  # the first batch of a bucketed or packed recording
        calib_rows = int(first)
    else:
        calib_rows = int(np.searchsorted(ids, ids[0] + int(src.get("batch_size", 1)), side="left")) if len(ids) else 0
    def go(c: Any) -> dict[str, SiteSummaries]:
        n_workers = max(len(c.scheduler_info().get("workers", {})), 1)
        # as many equal tasks per worker, counting every site's chunks: each task has a
        # fixed cost (open the run, read its sample coordinates, ship a state) and merges
        per_site = math.lcm(n_workers, max(len(names), 1)) // max(len(names), 1)
        rows_per = chunk_rows or min(_TASK_ROWS, max(_READ_ROWS, -(-len(ids) // per_site)))
        chunks = _doc_aligned_chunks(ids, rows_per)
        roots = {}
        for s in names:  # every site's chunks and merge tree are submitted before any wait
            futs = [c.submit(_summarize_rows, str(run.path), s, a, b, cfg, max(calib_rows, 1), pure=False)
                    for a, b in chunks]
            roots[s] = tree_future(c, futs)
        return {s: SiteSummaries.from_state(*f.result()) for s, f in roots.items()}

    if client is not None:
        return go(client)
    with dask_client(workers, scheduler) as c:
        return go(c)


# -- sharded recording ----------------------------------------------------------------
class _ModelBlob:
    """A (model, tokenizer) pair serialized by cloudpickle between our own processes."""

    def __init__(self, model: Any, tok: Any):
        import cloudpickle

        self.blob = cloudpickle.dumps((model, tok))

    def load(self) -> tuple[Any, Any]:
        import cloudpickle

        return cloudpickle.loads(self.blob)


def _record_shard(model: Any, texts: list[str], labels: dict[str, list[Any]], doc_ids: list[int], sample0: int,
                  sites: str, options: dict[str, Any], sizes: list[int], cfg: dict[str, Any] | None,
                  calibration: dict[str, np.ndarray], label_categories: dict[str, list[str]],
                  rows: dict[str, Any] | None) -> tuple[dict[str, State], dict[str, int], list[Any]]:
    """One shard through a :class:`~neuronscope.recording.Recorder`:
    ``({site: summary state}, {site: non-finite count}, shared-chunk rows)``. ``texts`` are
    the shard's documents in batching order and ``sizes`` its batches' document counts, so
    the shard runs exactly the batches of the single-process recording (``options``:
    :meth:`TextSource.options` of the source); its samples are numbered from ``sample0``.
    ``cfg`` None: no summaries. ``rows`` (activations kept): the keyword arguments of a
    :class:`~neuronscope.store.RowRangeWriter` (the run's path, the shard's row range, chunk
    rows, token, dtype) and ``sample_rate``; the shard writes its own chunks into the run and
    returns the rows of the chunks it shares with its neighbours
    (:meth:`~neuronscope.store.RowRangeWriter.close`)."""
    import torch

    from neuronscope.recording import Recorder, forward_batches
    from neuronscope.sources.text import Corpus, TextSource
    from neuronscope.specs import load_model
    from neuronscope.store import RowRangeWriter
    from neuronscope.summaries.site import SummaryConfig

    torch.set_num_threads(1)
    if isinstance(model, str):
        model, tok = load_model(model)
    else:
        model, tok = model.load()
    conf = SummaryConfig.from_dict(cfg) if cfg is not None else None
    src = TextSource(Corpus(texts, labels, doc_ids=doc_ids), tok, label_categories=label_categories, **options)
    bounds = np.r_[0, np.cumsum(sizes)]
    src = src.with_plan([np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    units = {s: int(a.shape[1]) for s, a in calibration.items()}
    writer, rate, sample_stop = None, 1.0, 0
    if rows is not None:
        rows = dict(rows)
        rate = float(rows.pop("sample_rate"))
        sample_stop = int(rows.pop("sample_stop"))
        writer = RowRangeWriter(sites=units, **rows)
    rec = Recorder(units, conf, calibration=calibration, first_sample=sample0, sample_rate=rate,
                   rows_out=(lambda _ids, acts: writer.add(acts)) if writer is not None else None)
    for batch, acts in forward_batches(model, src, sites):
        rec.consume(batch, acts)
    edges: list[Any] = []
    if writer is not None:
        if rec.n_done != sample_stop:
            raise NeuronscopeError(f"a shard recorded samples {sample0}:{rec.n_done}, the driver's plan says "
                                   f"{sample0}:{sample_stop}; re-run the recording")
        edges = writer.close()
    return rec.states() or {}, rec.nonfinite, edges


def _site_state(shard: tuple[dict[str, State], dict[str, int], list[Any]], site: str) -> State:
    return shard[0][site]


def _nonfinite(shard: tuple[dict[str, State], dict[str, int], list[Any]]) -> dict[str, int]:
    return shard[1]


def _edges(shard: tuple[dict[str, State], dict[str, int], list[Any]]) -> list[Any]:
    return shard[2]


def _sees_run(path: str, site: str, token: str) -> bool:
    """Whether this worker sees the run at ``path`` with the arrays of attempt ``token``."""
    from neuronscope.store import shard_token

    return shard_token(path, site) == token


class _SharedChunks:
    """The driver's side of the chunks that two shards' row ranges share: pieces arrive in
    any order; a chunk is written (:meth:`RunWriter.write_placed`) as soon as its pieces
    cover it, and dropped from memory."""

    def __init__(self, writer: Any, chunk_rows: int, total: int):
        self.writer, self.c, self.total = writer, int(chunk_rows), int(total)
        self.pending: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = {}

    def add(self, start: int, acts: dict[str, np.ndarray]) -> None:
        """One piece: rows ``start…`` of every site (within one chunk)."""
        ci = start // self.c
        parts = self.pending.setdefault(ci, [])
        parts.append((start, acts))
        lo, hi = ci * self.c, min(ci * self.c + self.c, self.total)
        if sum(len(next(iter(a.values()))) for _, a in parts) < hi - lo:
            return
        parts.sort(key=lambda t: t[0])
        at = lo
        for s0, a in parts:
            if s0 != at:
                raise NeuronscopeError(f"the shards' rows of chunk {ci} overlap or leave a gap at row {at}; re-run")
            at += len(next(iter(a.values())))
        self.writer.write_placed(lo, {s: np.concatenate([a[s] for _, a in parts]) for s in parts[0][1]})
        del self.pending[ci]

    def check_done(self) -> None:
        """Refuse to commit while a shared chunk misses rows."""
        if self.pending:
            raise NeuronscopeError(f"rows of chunk(s) {sorted(self.pending)[:5]} were not recorded by any shard; re-run")


def record_distributed(
    model: str | Any,
    source: Any,
    sites: str,
    out: str | Path,
    *,
    keep: str = "summaries",
    dtype: str = "float16",
    sample_rate: float = 1.0,
    workers: int | None = None,
    scheduler: str | None = None,
    shards: int | None = None,
    overwrite: bool = False,
    summary_config: SummaryConfig | Mapping[str, Any] | None = None,
    chunk_rows: int = 4096,
    progress: bool = True,
    client: Any = None,
) -> Run:
    """Shard a text recording over a Dask cluster: each worker records a contiguous range of
    the source's batches (its batching plan, :meth:`~neuronscope.sources.text.TextSource.plan`:
    the same length-bucketed batches, sample ids and calibration as a single-process
    ``record``; packed sources are refused). The result is one run that reads like a
    single-process ``record`` of the same source and options (same configuration, so either
    can resume the other's fresh run):

    * summaries (``keep`` ``both`` or ``summaries``): per-site states tree-merged on the
      cluster, equal to the single-process ones (to float rounding);
    * activations (``keep`` ``both`` or ``activations``, in ``dtype``, of the ``sample_rate``
      subsample :func:`~neuronscope.recording.keep_mask` — a function of the global sample id,
      so the same rows): the driver numbers every sample first (a tokenizing pass, no
      forward), sizes the run's activation arrays to all kept rows
      (:meth:`~neuronscope.store.RunWriter.place_rows`; chunk rows as ``record`` sizes them)
      and each worker writes the chunks wholly inside its shard's rows straight into them
      (:class:`~neuronscope.store.RowRangeWriter`, durable and checksummed like every chunk);
      the rows of the at most one chunk two neighbouring shards share travel to the driver,
      which writes that chunk. The driver holds the run's lock throughout and commits once,
      at the end: ``verify`` covers every chunk, and an interrupted run holds no committed
      row — re-running the same call starts it over (a run partly recorded by ``record`` in
      one process is refused: resume it there). Workers must see ``out`` at the same path
      (with ``scheduler`` on other machines: a shared filesystem; checked before any work).

    ``model`` is a model name/path that each worker loads (``minilm``), or a
    ``(model, tokenizer)`` pair shipped to the workers. ``sample_rate`` below 1 needs stored
    activations (``keep='summaries'`` refuses it, naming the fix). ``shards``: number of
    shards (default two per worker).
    """
    from neuronscope.recording import (
        check_record_options,
        finite_or_zero,
        forward_batches,
        recording_config,
        summary_config_for,
    )
    from neuronscope.sources.text import TextSource
    from neuronscope.specs import load_model
    from neuronscope.store import RunWriter, open_run

    check_record_options(keep, dtype, sample_rate)
    if sample_rate != 1.0 and keep == "summaries":
        raise NeuronscopeError(
            "record --workers stores no activations to subsample; drop --sample-rate or drop --workers"
        )
    if not isinstance(source, TextSource):
        raise NeuronscopeError("distributed recording shards text corpora; record tensor sources in one process")
    if source.batching == "pack":
        raise NeuronscopeError("record --workers shards documents and --pack splits them across contexts; "
                               "drop --workers or drop --pack")
    import time

    t0 = time.perf_counter()
    local_model, tok = load_model(model) if isinstance(model, str) else model
    cfg = summary_config_for(source, summary_config) if keep in ("both", "summaries") else None
    if cfg is not None and dtype == "float16":
        cfg = dataclasses.replace(cfg, context_dtype="float16")  # as record and summarize_run
    # calibration and sample offsets: the same first batch as a single-process record
    calibration = {}
    for _b, acts in forward_batches(local_model, source, sites):
        calibration = {s: finite_or_zero(a)[0] for s, a in acts.items()}
        break
    units = {s: int(a.shape[1]) for s, a in calibration.items()}
    config = recording_config(local_model, source, units, model_id=model if isinstance(model, str) else None,
                              keep=keep, dtype=dtype, sample_rate=sample_rate, chunk_rows=chunk_rows,
                              summary_config=cfg)
    store_acts = keep in ("both", "activations")
    with RunWriter(out, config, units, vocab=source.vocab(), label_categories=source.label_categories,
                   store_activations=store_acts, dtype=dtype, chunk_rows=chunk_rows, overwrite=overwrite,
                   expected_items=len(source)) as writer:
        if not writer.complete:
            _record_shards(writer, model, local_model, tok, source, sites, units, calibration, cfg, workers, scheduler,
                           shards, progress, client, t0, sample_rate)
    return open_run(out)


def _record_shards(writer: Any, model: Any, local_model: Any, tok: Any, source: Any, sites: str, units: dict[str, int],
                   calibration: dict[str, np.ndarray], cfg: Any, workers: int | None, scheduler: str | None,
                   shards: int | None, progress: bool, client: Any, t0: float, sample_rate: float) -> None:
    """The body of :func:`record_distributed` while it holds the run's writer. The run
    commits once, with every item: a run interrupted after that commit only finishes; one
    interrupted before it has committed nothing and starts over."""
    import time

    from neuronscope.recording import batching_info, keep_mask

    n_docs = len(source)
    info = {"workers": workers or 0}
    if writer.items_committed == n_docs:
        writer.finish({**info, "seconds": round(time.perf_counter() - t0, 3), **batching_info(source)})
        return
    if writer.items_committed:
        raise NeuronscopeError(
            f"run {writer.path} was partly recorded in one process ({writer.items_committed} of {n_docs} documents "
            "committed); resume it without --workers (the same `neuronscope record` command), or pass --overwrite"
        )
    # sample coordinates of the whole corpus (tokenizing is cheap; no forward pass)
    plan = source.plan()
    batch_samples, batch_items = [], []
    for b in source.batches():
        writer.append(b.samples, np.zeros(0, dtype=np.int64), None)
        batch_samples.append(len(b.samples["doc"]))
        batch_items.append(b.items)
    offsets = np.r_[0, np.cumsum(batch_samples)].astype(np.int64)
    store_acts = writer.store_activations
    placed: dict[str, Any] = {}
    if store_acts:
        # the rows to keep, numbered as a single-process record numbers them
        kept = np.flatnonzero(keep_mask(np.arange(int(offsets[-1]), dtype=np.int64), sample_rate)).astype(np.int64)
        row_off = np.searchsorted(kept, offsets, side="left")
        per_batch = np.diff(row_off)
        first = int(np.argmax(per_batch > 0)) if len(kept) else 0
        chunk, token = writer.place_rows(kept, int(per_batch[first]) if len(kept) else 0,
                                         batch_items[first] if batch_items else 0)
        if len(kept):
            placed = {"path": str(writer.path.resolve()), "token": token, "chunk_rows": chunk, "total": len(kept),
                      "dtype": str(writer.dtype), "sample_rate": sample_rate}
    options = type(source).options(source.describe())

    def go(c: Any) -> tuple[dict[str, SiteSummaries], dict[str, int], list[list[int]]]:
        from distributed import as_completed

        from neuronscope.summaries.site import SiteSummaries

        nw = len(c.scheduler_info().get("workers", {})) or 1
        if placed:
            sees = c.run(_sees_run, placed["path"], next(iter(units)), placed["token"])
            blind = sorted(w for w, ok in sees.items() if not ok)
            if blind:
                raise NeuronscopeError(
                    f"Dask worker(s) {', '.join(blind)} cannot see the run directory {placed['path']}; storing "
                    "activations with --workers/--scheduler needs --out on a filesystem every worker shares, at the "
                    "same path (or use --keep summaries)"
                )
        k = shards or 2 * nw
        # shard boundaries on batch boundaries of the plan, so batches match the single-process run
        n_batches = len(plan)
        cuts = sorted({round(i * n_batches / k) for i in range(k + 1)})
        # Ship a Python model as one opaque blob: Dask's own torch serializer rebuilds modules
        # with plain-dict hook tables that no longer accept forward hooks.
        payload = model if isinstance(model, str) else c.scatter([_ModelBlob(local_model, tok)], broadcast=True)[0]
        calib = c.scatter([calibration], broadcast=True)[0]  # sent once, not with every task
        ids = source.corpus.ids()
        futs, shard_rows = [], []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if b <= a:
                continue
            docs = [int(i) for i in np.concatenate(plan[a:b])]
            labels = {f: [v[i] for i in docs] for f, v in source.corpus.labels.items()}
            rows = None
            if placed:
                rows = {**placed, "start": int(row_off[a]), "stop": int(row_off[b]), "sample_stop": int(offsets[b])}
                shard_rows.append([int(row_off[a]), int(row_off[b])])
            futs.append(c.submit(_record_shard, payload, [source.corpus.texts[i] for i in docs], labels,
                                 [ids[i] for i in docs], int(offsets[a]), sites, options,
                                 [len(x) for x in plan[a:b]], cfg.to_dict() if cfg is not None else None, calib,
                                 source.label_categories, rows, pure=False))
        if progress:
            from distributed import progress as dask_progress

            dask_progress(futs)
        roots = {}
        if cfg is not None:
            roots = {s: tree_future(c, [c.submit(_site_state, f, s, pure=False) for f in futs]) for s in units}
        if placed:
            shared = _SharedChunks(writer, placed["chunk_rows"], placed["total"])
            for _f, pieces in as_completed([c.submit(_edges, f, pure=False) for f in futs], with_results=True):
                for start, acts in pieces:
                    shared.add(start, acts)
            shared.check_done()
        counts = c.gather([c.submit(_nonfinite, f, pure=False) for f in futs])
        nonfinite = {s: int(sum(cnt.get(s, 0) for cnt in counts)) for s in units}
        return {s: SiteSummaries.from_state(*f.result()) for s, f in roots.items()}, nonfinite, shard_rows

    if client is not None:
        merged, nonfinite, shard_rows = go(client)
    else:
        with dask_client(workers, scheduler) as c:
            merged, nonfinite, shard_rows = go(c)
    states = {s: merged[s].state() for s in units} if cfg is not None else None
    writer.commit(n_docs, nonfinite, states)
    if shard_rows:
        info["shard_rows"] = shard_rows
    writer.finish({**info, "seconds": round(time.perf_counter() - t0, 3), **batching_info(source)})
