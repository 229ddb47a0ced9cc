"""One pass: source → forward → per-site activations → summaries (+ store).

* :func:`record` runs a model over a source under ``torch.inference_mode()``, streams every
  batch of every site into a run store and into the site's streaming summaries, commits
  periodically (a resumed recording continues from the last commit), marks the run complete
  and returns the :class:`~neuronscope.store.Run`.
* :func:`summarize_model` is the same pass in memory: it writes nothing and returns
  ``{site: SiteSummaries}``.
* :class:`Recorder` is everything after the forward pass of a batch (the NaN policy,
  summaries, the ``on_batch`` hook, storage and commits); ``record``, ``summarize_model``
  and the shards of ``distributed.record_distributed`` all feed batches through it.
* :func:`recording_config` / :func:`summary_config_for` / :func:`check_record_options` build
  and check the configuration a run stores; :func:`finite_or_zero` is the one NaN policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch
from neuronscope.sources.torch_sites import Site, SiteCapture
from neuronscope.sources.torch_sites import sites as resolve_sites
from neuronscope.store import Run, RunWriter, open_run
from neuronscope.summaries.base import State
from neuronscope.summaries.fused import update_sites
from neuronscope.summaries.site import SiteSummaries, SummaryConfig

KEEP = ("both", "activations", "summaries")
DTYPES = ("float16", "float32")
BatchHook = Callable[[str, np.ndarray, Mapping[str, np.ndarray]], None]
#: receives the kept activation rows of a batch: ``(global sample ids, {site: rows})``
RowSink = Callable[[np.ndarray, Mapping[str, np.ndarray]], None]
#: A commit checkpoints the summaries; commits wait at least this many times the last
#: commit's cost, so checkpoints take at most 1/COMMIT_SPACING of the run (5%).
COMMIT_SPACING = 20


def _run_model(model: nn.Module, batch: Batch) -> None:
    if isinstance(batch.inputs, dict):
        model(**batch.inputs)
    else:
        model(batch.inputs)


def forward_batches(
    model: nn.Module,
    source: Any,
    site_list: list[Site] | str,
    *,
    start: int = 0,
    conv: str = "positions",
) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
    """Yield ``(batch, acts)`` for each batch of ``source`` from item ``start``: ``acts`` maps
    each site to its float32 ``(samples, units)`` activations (padding dropped; conv sites
    per spatial position or mean-pooled per ``conv``). ``batch.samples`` is expanded to match
    the sample count when conv sites give one sample per spatial position (coordinate ``pos``).
    """
    if isinstance(site_list, str):
        site_list = resolve_sites(model, site_list)
    _begin_pass(model, source)
    # the capture flattens (and so copies) each site's output when its module returns, so
    # in-place operations later in the forward pass (ReLU(inplace=True), ``x += …``) cannot
    # change what is recorded
    with SiteCapture(model, site_list, flatten=True, conv=conv) as cap:
        for batch in source.batches(start=start):
            yield batch, _forward(model, cap, batch, site_list)


def _begin_pass(model: nn.Module, source: Any) -> None:
    """Before the first forward pass over ``source``: eval mode, and no oneDNN primitive
    cache when the source's batches vary in shape (:func:`no_primitive_cache`)."""
    model.eval()
    if getattr(source, "varying_shapes", False):
        no_primitive_cache()


def _forward(model: nn.Module, cap: SiteCapture, batch: Batch, site_list: list[Site]) -> dict[str, np.ndarray]:
    """One batch through ``model`` under ``cap``: ``{site: float32 (samples, units)}``; expands
    ``batch.samples`` when conv sites give one sample per spatial position."""
    cap.clear()
    cap.mask = batch.mask
    # inference mode only around the forward pass: a generator that held it across
    # ``yield`` would leave the caller's code in inference mode too
    with torch.inference_mode():
        _run_model(model, batch)
        acts: dict[str, np.ndarray] = {}
        for s in site_list:
            if s.name not in cap.outputs:
                raise NeuronscopeError(f"site {s.name!r} did not run in the forward pass; choose modules the model calls")
            acts[s.name] = cap.outputs[s.name].numpy()
    cap.clear()
    counts = {a.shape[0] for a in acts.values()}
    if len(counts) > 1:
        desc = ", ".join(f"{k}: {v.shape[0]}" for k, v in acts.items())
        raise NeuronscopeError(
            f"sites give different sample counts per batch ({desc}); record them in separate runs "
            "(or use conv='mean' for conv sites of different sizes)"
        )
    n = counts.pop()
    n_base = len(next(iter(batch.samples.values())))
    if n != n_base:
        if n % n_base:
            raise NeuronscopeError(f"sites give {n} samples for {n_base} inputs; cannot align sample coordinates")
        per = n // n_base
        batch.samples = {k: np.repeat(v, per) for k, v in batch.samples.items()}
        batch.samples["pos"] = np.tile(np.arange(per, dtype=np.int64), n_base)
    return acts


def keep_mask(sample_ids: np.ndarray, rate: float) -> np.ndarray:
    """Deterministic subsample: keep sample ``i`` iff ``splitmix64(i) / 2^64 < rate``
    (the same samples are kept on resume and across shards)."""
    if rate >= 1.0:
        return np.ones(len(sample_ids), dtype=bool)
    z = sample_ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < rate


def model_fingerprint(model: nn.Module) -> str:
    """A hash of a model's parameters and buffers (identifies it in the run configuration)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        # reshape(-1): 0-d buffers (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _site_units(model: nn.Module, source: Any, site_list: list[Site], conv: str) -> dict[str, int]:
    if all(s.units is not None for s in site_list):
        return {s.name: int(s.units) for s in site_list}
    for _batch, acts in forward_batches(model, source, site_list, conv=conv):
        return {k: int(v.shape[1]) for k, v in acts.items()}
    raise NeuronscopeError("source yielded no batch; give a non-empty corpus")


def _site_list(model: nn.Module, sites: str | list[str] | list[Site]) -> list[Site]:
    if sites and isinstance(sites, list) and isinstance(sites[0], Site):
        return list(sites)
    return resolve_sites(model, sites)


# --------------------------------------------------------------------------- configuration


def check_record_options(keep: str, dtype: str, sample_rate: float) -> None:
    """Refuse a ``keep`` outside :data:`KEEP`, a storage ``dtype`` outside :data:`DTYPES` or a
    ``sample_rate`` outside ``(0, 1]`` with a one-line :class:`NeuronscopeError`."""
    if keep not in KEEP:
        raise NeuronscopeError(f"keep must be one of {', '.join(KEEP)}, not {keep!r}")
    if dtype not in DTYPES:
        raise NeuronscopeError(f"dtype must be float16 or float32, not {dtype!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise NeuronscopeError(f"sample_rate must be in (0, 1], not {sample_rate}")


def summary_config_for(source: Any, summary_config: SummaryConfig | Mapping[str, Any] | None = None) -> SummaryConfig:
    """The summaries' configuration for ``source``: ``summary_config`` (a ``SummaryConfig`` or
    a dict of its fields; default ``SummaryConfig()``) with ``label_fields`` set to the
    source's label categories (the caller's object is not modified)."""
    if isinstance(summary_config, SummaryConfig):
        cfg = summary_config
    else:
        cfg = SummaryConfig.from_dict(dict(summary_config or {}))
    return dataclasses.replace(cfg, label_fields=dict(getattr(source, "label_categories", {})))


def recording_config(
    model: nn.Module,
    source: Any,
    units: Mapping[str, int],
    *,
    model_id: str | None = None,
    keep: str = "both",
    dtype: str = "float16",
    sample_rate: float = 1.0,
    conv: str = "positions",
    chunk_rows: int = 4096,
    summary_config: SummaryConfig | None = None,
    interventions: Sequence[Any] = (),
) -> dict[str, Any]:
    """The configuration a run stores and a resumed recording must match: model name
    (``model_id``, else ``model.neuronscope_id``, else the class name) and parameter
    fingerprint, sites, the source's description, what is kept and how, the summaries'
    configuration (None when no summaries are kept) and the interventions active during the
    recording (their ``describe()``; a run recorded with other interventions is not resumed)."""
    return {
        "model": model_id or getattr(model, "neuronscope_id", None) or type(model).__name__,
        "model_fingerprint": model_fingerprint(model),
        "sites": list(units),
        "source": source.describe(),
        "keep": keep,
        "dtype": dtype,
        "sample_rate": sample_rate,
        "conv": conv,
        "chunk_rows": chunk_rows,
        "summary_config": summary_config.to_dict() if summary_config is not None else None,
        "interventions": [iv.describe() for iv in interventions],
    }


def finite_or_zero(a: np.ndarray) -> tuple[np.ndarray, int]:
    """The NaN policy of recording: non-finite activations (NaN, ±Inf) enter the summaries
    as 0 and are counted. Returns ``(clean, n_nonfinite)``; ``clean`` is ``a`` itself when
    every value is finite (checked by one cheap reduction first)."""
    if np.isfinite(a.sum()):
        return a, 0
    finite = np.isfinite(a)
    bad = int(a.size - np.count_nonzero(finite))
    return (np.where(finite, a, a.dtype.type(0)) if bad else a), bad


# --------------------------------------------------------------------------- the per-batch work


class Recorder:
    """Everything after the forward pass, batch by batch: the NaN policy
    (:func:`finite_or_zero`, counted per site in ``nonfinite``), the summaries, the
    ``on_batch`` hook, the store (activations of the ``sample_rate`` subsample) and commits.

    Global sample ids continue from ``first_sample`` (a resumed run's committed samples).
    Summaries resume from the writer's last checkpoint, else start from ``calibration``
    (``{site: (n, units)}``; default: the first batch) — None when ``summary_config`` is
    None. Without a writer, ``rows_out`` (if given) receives the activation rows to store
    instead (the ``sample_rate`` subsample, as recorded: non-finite values kept): a shard
    of a distributed recording writes them itself. Commits happen every ``commit_every`` batches, or every ``commit_seconds`` but
    never sooner than :data:`COMMIT_SPACING` times the last commit's cost. Feed it from one
    thread at a time; ``seen`` (samples consumed) may be read from another.
    """

    def __init__(
        self,
        units: Mapping[str, int],
        summary_config: SummaryConfig | None,
        *,
        writer: RunWriter | None = None,
        store_activations: bool = False,
        sample_rate: float = 1.0,
        on_batch: BatchHook | None = None,
        commit_every: int | None = None,
        commit_seconds: float = 10.0,
        calibration: Mapping[str, np.ndarray] | None = None,
        first_sample: int = 0,
        rows_out: RowSink | None = None,
    ) -> None:
        if writer is not None and rows_out is not None:
            raise NeuronscopeError("give a Recorder either a writer or rows_out, not both")
        self.units = dict(units)
        self.rows_out = rows_out
        self.cfg = summary_config
        self.writer = writer
        self.store_activations = store_activations
        self.sample_rate = sample_rate
        self.on_batch = on_batch
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.calibration = calibration
        self.n_done = writer.samples_committed if writer is not None else int(first_sample)
        self.nonfinite: dict[str, int] = dict(writer.meta["nonfinite"]) if writer is not None else dict.fromkeys(self.units, 0)
        self.summaries: dict[str, SiteSummaries] | None = None
        if summary_config is not None and writer is not None and writer.items_committed:
            state = writer.load_checkpoint()
            if state is not None:
                self.summaries = {s: SiteSummaries.from_state(*state[s]) for s in self.units}
        self.seen = 0
        self.batches_since_commit = 0
        self.items_since_commit = 0
        self.last_commit = time.monotonic()
        self.commit_cost = 0.0

    def consume(self, batch: Batch, acts: Mapping[str, np.ndarray], threads: int | None = None) -> None:
        """One batch after its forward pass: clean, summarize (on ``threads`` threads; default
        :func:`~neuronscope.summaries.fused.threads`), hook, store, maybe commit."""
        n = len(next(iter(acts.values())))
        sample_ids = np.arange(self.n_done, self.n_done + n, dtype=np.int64)
        samples = {"sample": sample_ids, **batch.samples}
        clean: dict[str, np.ndarray] = {}
        for s, a in acts.items():
            clean[s], bad = finite_or_zero(a)
            self.nonfinite[s] += bad
        if self.cfg is not None:
            if self.summaries is None:
                cal = self.calibration if self.calibration is not None else clean
                self.summaries = {s: SiteSummaries.create(self.units[s], self.cfg, cal[s]) for s in self.units}
            update_sites(self.summaries, clean, samples, threads, finite=True)  # clean: finite_or_zero
        if self.on_batch is not None:
            for s in self.units:
                self.on_batch(s, clean[s], samples)
        if self.writer is not None:
            mask = keep_mask(sample_ids, self.sample_rate)
            kept = {s: (a if mask.all() else a[mask]) for s, a in acts.items()} if self.store_activations else None
            self.writer.append(batch.samples, sample_ids[mask], kept, items=batch.items)
        elif self.rows_out is not None:
            mask = keep_mask(sample_ids, self.sample_rate)
            if mask.any():
                self.rows_out(sample_ids[mask], {s: (a if mask.all() else a[mask]) for s, a in acts.items()})
        self.n_done += n
        self.seen += n
        self.batches_since_commit += 1
        self.items_since_commit += batch.items
        if self._commit_due():
            self.commit()

    def _commit_due(self) -> bool:
        if self.writer is None:
            return False
        if self.commit_every is not None:
            return self.batches_since_commit >= self.commit_every
        wait = max(self.commit_seconds, COMMIT_SPACING * self.commit_cost)
        return time.monotonic() - self.last_commit >= wait

    def states(self) -> dict[str, State] | None:
        """The summaries' states (None without summaries)."""
        return None if self.summaries is None else {s: ss.state() for s, ss in self.summaries.items()}

    def commit(self) -> None:
        """Make everything consumed so far durable in the run (with a summary checkpoint)."""
        c0 = time.monotonic()
        self.writer.commit(self.items_since_commit, self.nonfinite, self.states())
        self.batches_since_commit = self.items_since_commit = 0
        self.last_commit = time.monotonic()
        self.commit_cost = self.last_commit - c0

    def finish(self, info: Mapping[str, Any]) -> None:
        """Commit the rest, store the final summaries and mark the run complete."""
        final = self.states()
        self.writer.commit(self.items_since_commit, self.nonfinite, final)
        self.batches_since_commit = self.items_since_commit = 0
        self.writer.finish(info)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]recording"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        TextColumn("{task.fields[rate]:>9.0f} samples/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def run_pass(
    model: nn.Module,
    source: Any,
    site_list: list[Site],
    recorder: Recorder,
    *,
    start: int = 0,
    conv: str = "positions",
    overlap: bool = True,
    lanes: int = 1,
    progress: bool = True,
) -> None:
    """Feed every batch of ``source`` from item ``start`` through ``recorder``.

    * ``lanes > 1``: that many threads each take the next batch, run its forward pass and
      then consume it (summaries on the lane's own thread), batches consumed strictly in
      source order — so the results are those of one lane. With one torch thread per lane
      the lanes keep every core busy without the OpenMP barriers of one multi-threaded
      forward pass, and the summaries of one batch run beside the forward pass of the next.
    * ``overlap`` (one lane): the recorder works on batch *i* on a worker thread while the
      forward pass of batch *i+1* runs (numpy and Zarr release the GIL); at most one batch
      in flight, and an error of the worker is raised here.

    A ``rich`` progress bar counts items.
    """
    t0 = time.perf_counter()

    def rate() -> float:
        return recorder.seen / max(time.perf_counter() - t0, 1e-9)

    with _progress(progress) as bar:
        task = bar.add_task("record", total=len(source), completed=start, rate=0.0)
        if lanes > 1:
            _run_lanes(model, source, site_list, recorder, start=start, conv=conv, lanes=lanes,
                       advance=lambda k: bar.update(task, advance=k, rate=rate()))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ns-consume") as pool:
            pending: Future[None] | None = None
            done_items = 0
            for batch, acts in forward_batches(model, source, site_list, start=start, conv=conv):
                if pending is not None:
                    pending.result()  # at most one batch in flight; re-raises its error here
                    bar.update(task, advance=done_items, rate=rate())
                done_items = batch.items
                if overlap:
                    pending = pool.submit(recorder.consume, batch, acts)
                else:
                    recorder.consume(batch, acts)
                    bar.update(task, advance=done_items, rate=rate())
            if pending is not None:
                pending.result()
                bar.update(task, advance=done_items, rate=rate())


def _run_lanes(model: nn.Module, source: Any, site_list: list[Site], recorder: Recorder, *, start: int,
               conv: str, lanes: int, advance: Callable[[int], None]) -> None:
    """:func:`run_pass` on ``lanes`` threads. A free lane consumes the next batch in source
    order when its forward pass is done and no lane is consuming; otherwise it takes the
    next batch and runs its forward pass, while at most ``lanes + 1`` batches are taken and
    not yet consumed (so memory holds at most that many batches' activations). The first
    error stops every lane and is raised here; so is a ``KeyboardInterrupt`` (the lanes stop
    after their current step)."""
    _begin_pass(model, source)
    batches = source.batches(start=start)
    take = threading.Lock()
    cond = threading.Condition()
    ready: dict[int, tuple[Batch, dict[str, np.ndarray]]] = {}
    st: dict[str, Any] = {"taken": 0, "next": 0, "forwarding": 0, "consuming": False, "exhausted": False,
                          "error": None}

    def job() -> tuple[str, Any]:
        with cond:
            while True:
                if st["error"] is not None:
                    return "stop", None
                if not st["consuming"] and st["next"] in ready:
                    st["consuming"] = True
                    return "consume", ready.pop(st["next"])
                if not st["exhausted"] and len(ready) + st["forwarding"] < lanes + 1:
                    st["forwarding"] += 1
                    return "forward", None
                if st["exhausted"] and not st["forwarding"] and not ready and not st["consuming"]:
                    return "stop", None
                cond.wait()

    def lane() -> None:
        try:
            while True:
                what, item = job()
                if what == "stop":
                    return
                if what == "consume":
                    batch, acts = item
                    recorder.consume(batch, acts, threads=1)
                    advance(batch.items)
                    with cond:
                        st["next"] += 1
                        st["consuming"] = False
                        cond.notify_all()
                    continue
                with take:
                    batch = next(batches, None)
                    i = st["taken"]
                    st["taken"] += batch is not None
                if batch is None:
                    with cond:
                        st["exhausted"] = True
                        st["forwarding"] -= 1
                        cond.notify_all()
                    continue
                acts = _forward(model, cap, batch, site_list)
                with cond:
                    ready[i] = (batch, acts)
                    st["forwarding"] -= 1
                    cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            with cond:
                if st["error"] is None:
                    st["error"] = e
                cond.notify_all()

    with SiteCapture(model, site_list, flatten=True, conv=conv) as cap:
        threads = [threading.Thread(target=lane, name=f"ns-lane-{k}", daemon=True) for k in range(lanes)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException as e:
            with cond:
                if st["error"] is None:
                    st["error"] = e
                cond.notify_all()
            for t in threads:
                t.join()
            raise
    if st["error"] is not None:
        raise st["error"]


# --------------------------------------------------------------------------- entry points


def record(
    model: nn.Module,
    source: Any,
    sites: str | list[str] | list[Site],
    out: str | Path,
    keep: str = "both",
    *,
    dtype: str = "float16",
    sample_rate: float = 1.0,
    overwrite: bool = False,
    summary_config: SummaryConfig | Mapping[str, Any] | None = None,
    conv: str = "positions",
    chunk_rows: int = 4096,
    commit_seconds: float = 10.0,
    commit_every: int | None = None,
    progress: bool = True,
    on_batch: BatchHook | None = None,
    model_id: str | None = None,
    overlap: bool = False,
    interventions: Sequence[Any] = (),
    threads: int | None = None,
    lanes: int | None = None,
) -> Run:
    """Record the neurons of ``model`` at ``sites`` over ``source`` into a run at ``out``.

    * ``keep``: ``both`` (activations and summaries), ``activations`` or ``summaries``
      (no activations stored; the run holds sample coordinates and summaries only). For
      summaries in memory without a run, use :func:`summarize_model`.
    * ``dtype``: ``float16`` or ``float32`` for stored activations (summaries always see float32).
    * ``sample_rate``: store activations of a deterministic subsample of samples
      (:func:`keep_mask`); summaries see every sample.
    * ``on_batch(site, acts, samples)``: called for every batch and site, in order (a hook
      for extra streaming computations; with ``overlap`` or ``lanes > 1`` it runs on a
      worker thread, still one batch at a time in source order).
    * ``lanes``: forward passes side by side: ``lanes`` threads each take the next batch,
      run its forward pass with ``threads`` torch threads, then summarize and store it on
      their own thread, batches consumed in source order (the run is the same as with one
      lane). Default (None): :func:`default_lanes` — for a Hugging Face model one lane per
      core with one torch thread each (one lane for other models: they may keep state
      between forward passes). On the 2-core development machine two lanes ran the bare
      MiniLM forward pass 1.05–1.11× faster than one 2-thread forward pass, and with one
      batch's summaries beside the next batch's forward pass recorded summaries-only 1.10×
      faster than one lane (``benchmarks/record.py``, RESULTS.md). One lane with
      ``overlap`` or ``interventions`` (an intervention's hooks hold per-forward state).
    * ``overlap`` (one lane): summarize and store batch *i* on a worker thread while the
      forward pass of batch *i+1* runs; one batch in flight at most. Slower than lanes: the
      OpenMP barriers of every torch operator wait on whichever thread the summary work has
      descheduled.
    * ``interventions``: :mod:`neuronscope.intervene` context managers (``ablate``, ``clamp``,
      ``scale``, ``add``, ``patch``) active for the whole recording, so an intervened model
      is recorded and characterized like any other; they are part of the run configuration.
    * Resume: running again into an unfinished run with the same configuration continues
      from its last commit (every ``commit_seconds`` or ``commit_every`` batches); a
      different configuration is refused unless ``overwrite``. A commit checkpoints the
      summaries, so commits are spaced to at least 20× their own cost (≤ 5% overhead).
    * ``threads``: torch intra-op threads of each forward pass during the recording
      (restored afterwards). Default (None): :func:`default_threads`.
    Non-finite activations are counted per site (``info()['nonfinite']``) and enter the
    summaries as 0 (:func:`finite_or_zero`); stored activations keep them as recorded.
    """
    check_record_options(keep, dtype, sample_rate)
    if out is None:
        raise NeuronscopeError("give out= (a run directory); for summaries in memory use summarize_model")
    lanes, threads = _lanes_threads(model, lanes, threads, overlap, interventions)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(threads))
        for iv in interventions:
            stack.enter_context(iv)
        return _record(model, source, sites, out, keep, dtype=dtype, sample_rate=sample_rate,
                       overwrite=overwrite, summary_config=summary_config, conv=conv, chunk_rows=chunk_rows,
                       commit_seconds=commit_seconds, commit_every=commit_every, progress=progress,
                       on_batch=on_batch, model_id=model_id, overlap=overlap, lanes=lanes,
                       interventions=interventions)


def _record(model: nn.Module, source: Any, sites: str | list[str] | list[Site], out: str | Path, keep: str, *,
            dtype: str, sample_rate: float, overwrite: bool, summary_config: Any, conv: str, chunk_rows: int,
            commit_seconds: float, commit_every: int | None, progress: bool, on_batch: BatchHook | None,
            model_id: str | None, overlap: bool, lanes: int, interventions: Sequence[Any]) -> Run:
    site_list = _site_list(model, sites)
    units = _site_units(model, source, site_list, conv)
    cfg = summary_config_for(source, summary_config) if keep in ("both", "summaries") else None
    if cfg is not None and dtype == "float16":
        cfg = dataclasses.replace(cfg, context_dtype="float16")  # as summarize_run: the run's own precision
    config = recording_config(model, source, units, model_id=model_id, keep=keep, dtype=dtype,
                              sample_rate=sample_rate, conv=conv, chunk_rows=chunk_rows, summary_config=cfg,
                              interventions=interventions)
    store_acts = keep in ("both", "activations")
    # The writer holds the run's lock until the run is complete (or this call fails).
    with RunWriter(
        out,
        config,
        units,
        vocab=source.vocab(),
        label_categories=getattr(source, "label_categories", {}),
        store_activations=store_acts,
        dtype=dtype,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        expected_items=len(source),
    ) as writer:
        if not writer.complete:
            if writer.resumed and writer.items_committed:
                print(resume_message(source, writer.samples_committed, writer.items_committed), file=sys.stderr,
                      flush=True)
            recorder = Recorder(units, cfg, writer=writer, store_activations=store_acts, sample_rate=sample_rate,
                                on_batch=on_batch, commit_every=commit_every, commit_seconds=commit_seconds)
            t0 = time.perf_counter()
            run_pass(model, source, site_list, recorder, start=writer.items_committed, conv=conv, overlap=overlap,
                     lanes=lanes, progress=progress)
            recorder.finish({"seconds": round(time.perf_counter() - t0, 3), "vocab_size": len(source.vocab() or []),
                             **batching_info(source)})
    return open_run(out)


#: oneDNN's setting for the number of primitives it caches per process (default 1,024)
PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def no_primitive_cache() -> bool:
    """Turn off oneDNN's primitive cache for this process (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``)
    unless the variable is already set (any value, e.g. oneDNN's default ``1024``, keeps
    the cache); True when this call set it. oneDNN reads the variable once, at the
    process's first oneDNN primitive: every forward pass of neuronscope over a source whose
    batches vary in shape (``source.varying_shapes``: bucketed or per-document text) calls
    this first, so it takes effect when that forward pass is the process's first.

    Why: torch runs MiniLM's GELU as a oneDNN primitive compiled per input shape and keeps
    up to 1,024 of them. Length-bucketed text batches have hundreds of shapes, so the cache
    grew a summaries-only recording's peak RSS 1.27-1.45× from 10⁵ to 10⁶ tokens (1.05-1.08×
    without it, two runs), and recording without it was as fast (benchmarks/scale.py). Not for sources of
    one shape (images, packed text): those reuse their cached primitives (a small CNN's
    forward pass measured 12-19% slower without the cache). The setting holds for the whole
    process, so a CNN forwarded later in the same process compiles its primitives per call.
    """
    if PRIMITIVE_CACHE_ENV in os.environ:
        return False
    os.environ[PRIMITIVE_CACHE_ENV] = "0"
    return True


def default_lanes(model: nn.Module | None = None, overlap: bool = False, interventions: Sequence[Any] = (),
                  threads: int | None = None) -> int:
    """Forward lanes of a recording (:func:`run_pass`): for a Hugging Face ``PreTrainedModel``
    (whose forward pass keeps no state between calls), one per ``threads`` torch threads of
    the cores torch uses (``torch.get_num_threads()``; one lane per core by default). One lane
    for any other ``model`` — a spiking network's membrane, a recurrent state kept in an
    attribute or a stateful hook would be shared by the lanes; give ``lanes`` to opt in — and
    with ``overlap`` or ``interventions`` (their hooks hold per-forward state). ``model=None``:
    the count a stateless model gets."""
    if overlap or interventions or (model is not None and not _stateless(model)):
        return 1
    return max(1, torch.get_num_threads() // (threads or 1))


def _stateless(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def default_threads(overlap: bool = False, lanes: int = 1) -> int:
    """Torch intra-op threads of each forward pass: with several ``lanes``, the cores torch
    uses (``torch.get_num_threads()``) shared out between them; with ``overlap`` (the
    summaries on a thread of their own) one fewer than torch's count, so the summary thread
    has a core of its own; otherwise torch's count."""
    n = torch.get_num_threads()
    if lanes > 1:
        return max(1, n // lanes)
    return max(1, n - 1) if overlap else n


def _lanes_threads(model: nn.Module, lanes: int | None, threads: int | None, overlap: bool,
                   interventions: Sequence[Any]) -> tuple[int, int]:
    if threads is not None and threads < 1:
        raise NeuronscopeError(f"threads must be a positive number of torch threads, not {threads}")
    if lanes is not None and lanes < 1:
        raise NeuronscopeError(f"lanes must be a positive number of forward lanes, not {lanes}")
    if lanes is not None and lanes > 1 and (overlap or interventions):
        why = "overlap" if overlap else "interventions (their hooks hold per-forward state)"
        raise NeuronscopeError(f"lanes > 1 cannot be combined with {why}; use lanes=1")
    lanes = lanes or default_lanes(model, overlap, interventions, threads)
    return lanes, threads or default_threads(overlap, lanes)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resume_message(source: Any, samples: int, items: int) -> str:
    """What ``record`` prints (on stderr) when it continues an unfinished run: ``resuming from
    sample N (document D)`` — D is the document id (its line in the corpus file) of the first
    document not yet recorded, in the source's batching order — or ``(item I)`` for sources
    without document ids."""
    nxt = getattr(source, "next_document", None)
    corpus = getattr(source, "corpus", None)
    if callable(nxt):
        doc = nxt(items)
    else:
        ids = corpus.ids() if callable(getattr(corpus, "ids", None)) else None
        doc = ids[items] if ids is not None and 0 <= items < len(ids) else None
    where = f"document {doc}" if doc is not None else f"item {items}"
    return f"resuming from sample {samples} ({where})"


def batching_info(source: Any) -> dict[str, Any]:
    """``{"batching": source.stats()}`` for sources that report batching statistics
    (:meth:`~neuronscope.sources.text.TextSource.stats`: padding fraction, batches, tokens),
    stored with a finished run and shown by ``neuronscope info``; else ``{}``."""
    stats = getattr(source, "stats", None)
    return {"batching": stats()} if callable(stats) else {}


def summarize_model(
    model: nn.Module,
    source: Any,
    sites: str | list[str] | list[Site],
    *,
    summary_config: SummaryConfig | Mapping[str, Any] | None = None,
    conv: str = "positions",
    progress: bool = True,
    on_batch: BatchHook | None = None,
    overlap: bool = False,
    interventions: Sequence[Any] = (),
    lanes: int | None = None,
) -> dict[str, SiteSummaries]:
    """The streaming summaries of ``model``'s ``sites`` over ``source``, in memory: the pass of
    :func:`record` (same NaN policy, hook, overlap, lanes and interventions) without a run;
    nothing is written. Returns ``{site: SiteSummaries}`` (empty if the source yields no
    batch). Forward passes use :func:`default_lanes` lanes of :func:`default_threads` torch
    threads, as in :func:`record`."""
    lanes, threads = _lanes_threads(model, lanes, None, overlap, interventions)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(threads))
        for iv in interventions:
            stack.enter_context(iv)
        site_list = _site_list(model, sites)
        units = _site_units(model, source, site_list, conv)
        recorder = Recorder(units, summary_config_for(source, summary_config), on_batch=on_batch)
        run_pass(model, source, site_list, recorder, conv=conv, overlap=overlap, lanes=lanes, progress=progress)
        return recorder.summaries or {}
