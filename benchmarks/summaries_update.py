"""Cost of the per-site streaming summaries (``SiteSummaries.update``, the fused kernel).

(A) In memory: 65,536 tokens x 1536 float32 units (MiniLM's FFN width) in batches of 4096,
GELU-shaped activations with Zipf token ids, 128-token documents and a 3-value label.
Reference: one numpy read pass over the same bytes (``batch.sum()``), measured in the same
run, interleaved, best of several repeats. Timed in process CPU time (all threads: the
fused kernel runs on the machine's cores, so CPU time is its whole cost) because this
machine is shared by several jobs; wall time too. Also the numpy reference path
(``update_numpy``) and its cost per part, the numba compile / cache-load time of the
kernel, and the size of one site's summary state (compact vs the earlier wide dtypes).

(B) In context: the bare MiniLM forward pass over the first ``--docs`` documents of the
bundled corpus (batches of 32 documents, as ``record`` runs it) vs ``SiteSummaries.update``
of its 6 FFN sites on the captured activations of the same batches. This is the summaries'
share of issue 3's recording budget (target: <= 15% of the forward).

    cd benchmarks && ../.venv/bin/python summaries_update.py [--docs 600] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _results import write_section  # noqa: E402

from neuronscope.summaries.kernels import Batch  # noqa: E402
from neuronscope.summaries.site import SiteSummaries, SummaryConfig  # noqa: E402

UNITS = 1536
BATCH = 4096
TOKENS = 16 * BATCH
LABELS = {"lang": ["en", "de", "fr"]}


def synthetic(seed: int = 0) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    shift = rng.normal(-1.0, 0.7, UNITS).astype(np.float32)  # per-neuron bias: some sparse
    batches = []
    for i in range(TOKENS // BATCH):
        x = rng.standard_normal((BATCH, UNITS), dtype=np.float32) + shift
        acts = (0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))).astype(np.float32)
        s = np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.int64)
        samples = {
            "sample": s, "doc": s // 128, "pos": s % 128,
            "token_id": np.minimum(rng.zipf(1.2, BATCH), 30521).astype(np.int64),
            "lang": (s // 128) % 3,
        }
        batches.append((acts, samples))
    return batches


def run_updates(batches, cfg: SummaryConfig, numpy_path: bool = False, warm: int = 0) -> tuple[float, float]:
    """(CPU s, wall s) of updating one site's summaries with every batch after the first
    ``warm`` (those are folded in untimed: the top-k is then full, as in a long run)."""
    ss = SiteSummaries.create(UNITS, cfg, batches[0][0])
    update = ss.update_numpy if numpy_path else ss.update
    for acts, samples in batches[:warm]:
        update(acts, samples)
    t, w = time.process_time(), time.perf_counter()
    for acts, samples in batches[warm:]:
        update(acts, samples)
    return time.process_time() - t, time.perf_counter() - w


def read_pass(batches) -> tuple[float, float]:
    t, w = time.process_time(), time.perf_counter()
    for acts, _ in batches:
        acts.sum()
    return time.process_time() - t, time.perf_counter() - w


_COMPILE = """
import time, numpy as np
t = time.perf_counter()
from neuronscope.summaries.site import SiteSummaries, SummaryConfig
ss = SiteSummaries.create(4, SummaryConfig(hist_range=(-1.0, 1.0)))
ss.update(np.ones((3, 4), np.float32), {"sample": np.arange(3), "pos": np.arange(3), "token_id": np.arange(3)})
print(time.perf_counter() - t)
"""


def compile_times() -> tuple[float, float]:
    """Seconds to the first update in a fresh process: with an empty numba cache (compile)
    and again with the cache it wrote (load)."""
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "NUMBA_CACHE_DIR": d}
        out = [float(subprocess.run([sys.executable, "-c", _COMPILE], env=env, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
               for _ in range(2)]
    return out[0], out[1]


def state_mb(batches) -> str:
    """One site's state after the synthetic stream: compact (float32 / float16 context) and
    the same state in the dtypes used before compaction (int64 counts and ids, float64
    token sums, float32 context)."""
    rows = ["| state of one 1536-unit site | MB |", "|---|---|"]
    for ctx in ("float32", "float16"):
        ss = SiteSummaries.create(UNITS, SummaryConfig(label_fields=LABELS, context_dtype=ctx), batches[0][0])
        for acts, samples in batches:
            ss.update(acts, samples)
        arrays, _ = ss.state()
        if ctx == "float32":
            wide = sum(v.size * (8 if v.dtype.kind == "i" or k == "tokens.sums" else v.dtype.itemsize)
                       for k, v in arrays.items())
            rows.append(f"| before (int64 counts/ids, float64 token sums, float32 context) | {wide / 1e6:.2f} |")
        big = ", ".join(f"{k.split('.')[0]} {sum(v.nbytes for kk, v in arrays.items() if kk.startswith(k.split('.')[0] + '.')) / 1e6:.2f}"
                        for k in ("topk.", "tokens.", "position.", "histogram."))
        rows.append(f"| compact, context {ctx} ({big}) | {sum(v.nbytes for v in arrays.values()) / 1e6:.2f} |")
    return "\n".join(rows)


def part_times(batches, cfg: SummaryConfig) -> dict[str, float]:
    ss = SiteSummaries.create(UNITS, cfg, batches[0][0])
    out = {"shared masks (a>0, float mask, abs, row counts)": 0.0, **dict.fromkeys(ss.parts, 0.0)}
    for acts, samples in batches:
        b = Batch(acts, samples)
        t = time.process_time()
        b.pos_mask, b.pos_mask_f32, b.abs, b.pos_row_count  # noqa: B018
        out["shared masks (a>0, float mask, abs, row counts)"] += time.process_time() - t
        for name, part in ss.parts.items():
            t = time.process_time()
            part.update(b)
            out[name] += time.process_time() - t
    return out


def in_memory(repeats: int) -> str:
    from neuronscope.summaries.fused import threads

    compiled, loaded = compile_times()
    batches = synthetic()
    configs = {
        "default (hist_stride=1)": SummaryConfig(label_fields=LABELS),
        "hist_stride=8": SummaryConfig(label_fields=LABELS, hist_stride=8),
    }
    ss = SiteSummaries.create(UNITS, configs["default (hist_stride=1)"], batches[0][0])
    ss.update(*batches[0])  # the kernel is loaded before timing
    warm = 4
    steady = f"steady state (batches {warm + 1}-{len(batches)}, top-k full)"
    names = ["numpy read pass", *[f"fused update, {n}" for n in configs], *[f"numpy reference path, {n}" for n in configs],
             f"numpy read pass, {steady}", f"fused update, default, {steady}", f"numpy reference path, default, {steady}"]
    best = {name: (float("inf"), float("inf")) for name in names}
    load0 = os.getloadavg()[0]
    for _ in range(repeats):
        best["numpy read pass"] = min(best["numpy read pass"], read_pass(batches))
        for name, cfg in configs.items():
            best[f"fused update, {name}"] = min(best[f"fused update, {name}"], run_updates(batches, cfg))
            key = f"numpy reference path, {name}"
            best[key] = min(best[key], run_updates(batches, cfg, numpy_path=True))
        key = f"numpy read pass, {steady}"
        best[key] = min(best[key], read_pass(batches[warm:]))
        cfg = configs["default (hist_stride=1)"]
        for path in ("fused update", "numpy reference path"):
            key = f"{path}, default, {steady}"
            best[key] = min(best[key], run_updates(batches, cfg, numpy_path=path != "fused update", warm=warm))
    load1 = os.getloadavg()[0]
    rows = ["| what | CPU s | ns / value (CPU) | ratio to read pass (CPU) | wall s | ratio (wall) |",
            "|---|---|---|---|---|---|"]
    for name, (t, w) in best.items():
        ref_cpu, ref_wall = best[f"numpy read pass, {steady}" if "steady" in name else "numpy read pass"]
        values = UNITS * BATCH * (len(batches) - warm if "steady" in name else len(batches))
        rows.append(f"| {name} | {t:.3f} | {t / values * 1e9:.2f} | **{t / ref_cpu:.1f}x** | {w:.3f} | {w / ref_wall:.1f}x |")
    values = TOKENS * UNITS
    parts = part_times(batches, configs["default (hist_stride=1)"])
    prow = ["| part of the numpy reference path (default config) | ns / value |", "|---|---|"]
    prow += [f"| {k} | {v / values * 1e9:.2f} |" for k, v in parts.items()]
    return (
        f"(A) {TOKENS} tokens x {UNITS} float32 units, batches of {BATCH}, best of {repeats}, "
        f"process CPU time (all threads) and wall time; fused kernel on {threads()} threads; "
        f"load average {load0:.1f} before, {load1:.1f} after "
        "(2 cores, shared):\n\n" + "\n".join(rows) + "\n\n" + "\n".join(prow)
        + f"\n\nnumba kernel: first update in a fresh process {compiled:.1f} s with an empty cache "
        f"(compile, once per machine: `cache=True`), {loaded:.1f} s with the cache (load).\n\n"
        + state_mb(batches)
    )


def in_context(docs: int, configs: dict[str, SummaryConfig]) -> str:
    import torch

    import neuronscope as ns
    from neuronscope.recording import forward_batches
    from neuronscope.sources.text import load_corpus

    model, tok = ns.load_model("minilm")
    corpus = load_corpus("default")
    corpus.texts = corpus.texts[:docs]
    corpus.labels = {k: v[:docs] for k, v in corpus.labels.items()}
    source = ns.TextSource(corpus, tok, batch_size=32, max_tokens=128)
    sites = "encoder.layer.*.intermediate"

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for batch in source.batches():
                model(**batch.inputs)
        return time.perf_counter() - t

    with torch.inference_mode():  # warm-up
        model(**next(iter(source.batches())).inputs)
    fwd = bare()
    captured = []
    done = 0
    for batch, acts in forward_batches(model, source, sites):
        n = len(next(iter(acts.values())))
        captured.append((acts, {"sample": np.arange(done, done + n, dtype=np.int64), **batch.samples}))
        done += n
    rows = [
        "| what | s | share of bare forward |",
        "|---|---|---|",
        f"| bare forward pass | {fwd:.2f} | 100% |",
    ]
    for name, cfg in configs.items():
        cfg.label_fields = dict(getattr(source, "label_categories", {}))
        summaries: dict[str, SiteSummaries] = {}
        t = time.perf_counter()
        for acts, samples in captured:
            for s, a in acts.items():
                if s not in summaries:
                    summaries[s] = SiteSummaries.create(a.shape[1], cfg, a)
                summaries[s].update(a, samples)
        dt = time.perf_counter() - t
        rows.append(f"| SiteSummaries.update, 6 sites, {name} | {dt:.2f} | {100 * dt / fwd:.1f}% |")
    return (
        f"(B) MiniLM, {docs} documents of the bundled corpus, {done} tokens, batches of 32 "
        f"documents, {torch.get_num_threads()} torch threads, 6 FFN sites x 1536 units; "
        "summaries timed on the captured activations of the same batches, wall time "
        "(target: <= 15% of the bare forward):\n\n" + "\n".join(rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    a = in_memory(args.repeats)
    b = in_context(
        args.docs,
        {"default config": SummaryConfig(), "hist_stride=4": SummaryConfig(hist_stride=4)},
    )
    write_section("summaries_update", a + "\n\n" + b)


if __name__ == "__main__":
    main()
