"""One pass: source → forward → per-site activations → summaries (+ store).

``record`` runs a model over a source under ``torch.inference_mode()``, streams every
batch of every site into the run store and into the site's streaming summaries, commits
periodically (resume after a crash continues from the last commit), and marks the run
complete at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.base import Batch
from neuronscope.sources.torch_sites import Site, SiteCapture, to_samples
from neuronscope.sources.torch_sites import sites as resolve_sites
from neuronscope.store import Run, RunWriter, open_run

KEEP = ("both", "activations", "summaries")
BatchHook = Callable[[str, np.ndarray, Mapping[str, np.ndarray]], None]


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
    model.eval()
    with SiteCapture(model, site_list) as cap:
        for batch in source.batches(start=start):
            cap.clear()
            # inference mode only around the forward pass: a generator that held it across
            # ``yield`` would leave the caller's code in inference mode too
            with torch.inference_mode():
                _run_model(model, batch)
                acts: dict[str, np.ndarray] = {}
                for s in site_list:
                    if s.name not in cap.outputs:
                        raise NeuronscopeError(f"site {s.name!r} did not run in the forward pass; choose modules the model calls")
                    acts[s.name] = to_samples(cap.outputs[s.name], batch.mask, conv).numpy()
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
            yield batch, acts


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
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _site_units(model: nn.Module, source: Any, site_list: list[Site], conv: str) -> dict[str, int]:
    if all(s.units is not None for s in site_list):
        return {s.name: int(s.units) for s in site_list}
    for _batch, acts in forward_batches(model, source, site_list, conv=conv):
        return {k: int(v.shape[1]) for k, v in acts.items()}
    raise NeuronscopeError("source yielded no batch; give a non-empty corpus")


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


def record(
    model: nn.Module,
    source: Any,
    sites: str | list[str] | list[Site],
    out: str | Path | None = None,
    keep: str = "both",
    *,
    dtype: str = "float16",
    sample_rate: float = 1.0,
    overwrite: bool = False,
    summary_config: Any = None,
    conv: str = "positions",
    chunk_rows: int = 4096,
    commit_seconds: float = 10.0,
    commit_every: int | None = None,
    progress: bool = True,
    on_batch: BatchHook | None = None,
    model_id: str | None = None,
    overlap: bool = True,
) -> Run | dict[str, Any]:
    """Record the neurons of ``model`` at ``sites`` over ``source`` into a run at ``out``.

    * ``keep``: ``both`` (activations and summaries), ``activations`` or ``summaries``
      (no activations stored; the run holds sample coordinates and summaries only). With
      ``out=None`` and ``keep='summaries'`` nothing is written and the per-site summaries
      are returned.
    * ``dtype``: ``float16`` or ``float32`` for stored activations (summaries always see float32).
    * ``sample_rate``: store activations of a deterministic subsample of samples; summaries
      see every sample.
    * ``on_batch(site, acts, samples)``: called for every batch and site, in order (a hook
      for extra streaming computations; with ``overlap`` it runs on the worker thread).
    * ``overlap``: summarize and store batch *i* on a worker thread while the forward pass
      of batch *i+1* runs (numpy and Zarr release the GIL); one batch in flight at most.
    * Resume: running again into an unfinished run with the same configuration continues
      from its last commit (every ``commit_seconds`` or ``commit_every`` batches); a
      different configuration is refused unless ``overwrite``. A commit checkpoints the
      summaries, so commits are spaced to at least 20× their own cost (≤ 5% overhead).
    Non-finite activations are counted per site (``info()['nonfinite']``) and enter the
    summaries as 0; stored activations keep them as recorded.
    """
    if keep not in KEEP:
        raise NeuronscopeError(f"keep must be one of {', '.join(KEEP)}, not {keep!r}")
    if dtype not in ("float16", "float32"):
        raise NeuronscopeError(f"dtype must be float16 or float32, not {dtype!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise NeuronscopeError(f"sample_rate must be in (0, 1], not {sample_rate}")
    if out is None and keep != "summaries":
        raise NeuronscopeError("give out= (a run directory) to store activations, or keep='summaries'")
    site_list = sites if sites and isinstance(sites, list) and isinstance(sites[0], Site) else resolve_sites(model, sites)
    units = _site_units(model, source, site_list, conv)
    want_summaries = keep in ("both", "summaries")
    store_acts = keep in ("both", "activations")

    cfg = None
    if want_summaries:
        from neuronscope.summaries.site import SummaryConfig

        cfg = summary_config if isinstance(summary_config, SummaryConfig) else SummaryConfig(**(summary_config or {}))
        cfg.label_fields = dict(getattr(source, "label_categories", {}))

    config = {
        "model": model_id or getattr(model, "neuronscope_id", None) or type(model).__name__,
        "model_fingerprint": model_fingerprint(model),
        "sites": list(units),
        "source": source.describe(),
        "keep": keep,
        "dtype": dtype,
        "sample_rate": sample_rate,
        "conv": conv,
        "chunk_rows": chunk_rows,
        "summary_config": cfg.to_dict() if cfg is not None else None,
    }
    writer = None
    if out is not None:
        writer = RunWriter(
            out,
            config,
            units,
            vocab=source.vocab(),
            label_categories=getattr(source, "label_categories", {}),
            store_activations=store_acts,
            dtype=dtype,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
        )
        if writer.complete:
            return open_run(out)

    summaries: dict[str, Any] | None = None
    start_item = writer.items_committed if writer else 0
    n_done = writer.samples_committed if writer else 0
    nonfinite = dict(writer.meta["nonfinite"]) if writer else dict.fromkeys(units, 0)
    if want_summaries:
        from neuronscope.summaries.site import SiteSummaries

        state = writer.load_checkpoint() if writer and start_item else None
        if state is not None:
            summaries = {s: SiteSummaries.from_state(*state[s]) for s in units}

    t0 = time.perf_counter()
    st = {"n_done": n_done, "seen": 0, "batches": 0, "items": 0, "last_commit": time.monotonic(),
          "commit_cost": 0.0, "summaries": summaries}

    def consume(batch: Batch, acts: dict[str, np.ndarray]) -> None:
        """Everything after the forward pass of one batch: finite check, summaries, hook,
        store, commit. Runs on a worker thread while the next forward pass runs."""
        n = len(next(iter(acts.values())))
        sample_ids = np.arange(st["n_done"], st["n_done"] + n, dtype=np.int64)
        samples = {"sample": sample_ids, **batch.samples}
        clean: dict[str, np.ndarray] = {}
        for s, a in acts.items():
            # one cheap reduction first: a NaN/Inf anywhere makes the sum non-finite
            if np.isfinite(a.sum()):
                clean[s] = a
                continue
            finite = np.isfinite(a)
            bad = int(a.size - np.count_nonzero(finite))
            nonfinite[s] += bad
            clean[s] = np.where(finite, a, np.float32(0)) if bad else a
        if want_summaries:
            if st["summaries"] is None:
                st["summaries"] = {s: SiteSummaries.create(units[s], cfg, clean[s]) for s in units}
            for s in units:
                st["summaries"][s].update(clean[s], samples)
        if on_batch is not None:
            for s in units:
                on_batch(s, clean[s], samples)
        if writer is not None:
            mask = keep_mask(sample_ids, sample_rate)
            rows = sample_ids[mask]
            kept = {s: (a if mask.all() else a[mask]) for s, a in acts.items()} if store_acts else None
            writer.append(batch.samples, rows, kept)
        st["n_done"] += n
        st["seen"] += n
        st["batches"] += 1
        st["items"] += batch.items
        if writer is not None and (
            (commit_every is not None and st["batches"] >= commit_every)
            or (commit_every is None and time.monotonic() - st["last_commit"] >= max(commit_seconds, 20 * st["commit_cost"]))
        ):
            c0 = time.monotonic()
            writer.commit(st["items"], nonfinite, _states(st["summaries"]))
            st["batches"] = st["items"] = 0
            st["last_commit"] = time.monotonic()
            # keep checkpoints to ≤ 5% of the run: wait 20× the last commit's cost
            st["commit_cost"] = st["last_commit"] - c0

    with _progress(progress) as bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ns-consume") as pool:
        task = bar.add_task("record", total=len(source), completed=start_item, rate=0.0)
        pending = None
        done_items = 0
        for batch, acts in forward_batches(model, source, site_list, start=start_item, conv=conv):
            if pending is not None:
                pending.result()  # at most one batch in flight; re-raises its error here
                bar.update(task, advance=done_items, rate=st["seen"] / max(time.perf_counter() - t0, 1e-9))
            done_items = batch.items
            if overlap:
                pending = pool.submit(consume, batch, acts)
            else:
                consume(batch, acts)
                bar.update(task, advance=done_items, rate=st["seen"] / max(time.perf_counter() - t0, 1e-9))
        if pending is not None:
            pending.result()
            bar.update(task, advance=done_items, rate=st["seen"] / max(time.perf_counter() - t0, 1e-9))
    summaries = st["summaries"]
    items_since = st["items"]

    if writer is None:
        return summaries or {}
    final = _states(summaries)
    writer.commit(items_since, nonfinite, final)
    writer.finish(
        final,
        {"seconds": round(time.perf_counter() - t0, 3), "vocab_size": len(source.vocab() or [])},
    )
    return open_run(out)


def _states(summaries: Mapping[str, Any] | None) -> dict[str, tuple[dict, dict]] | None:
    if summaries is None:
        return None
    return {s: summaries[s].state() for s in summaries}
