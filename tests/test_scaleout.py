"""Summaries during recording, over a stored run with Dask, and sharded over a
LocalCluster: all give the same result; summaries-only memory does not grow with the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinymodels import TinyText

import neuronscope as ns
from neuronscope.distributed import dask_client, record_distributed, summarize_run

HERE = Path(__file__).parent
# subprocesses import the same neuronscope as this test process
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(Path(ns.__file__).resolve().parents[1])])}


def _corpus(path: Path, n: int, seed: int = 0, blank_every: int = 0) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(words, size=int(rng.integers(2, 30))))
            fh.write(json.dumps({"text": text, "lang": ["en", "de", "fr"][i % 3]}) + "\n")
            if blank_every and i % blank_every == 0:
                fh.write("\n")  # blank lines: document ids are line numbers, not indices
    return path


def assert_same_summaries(a, b, rtol=1e-6):
    ra, rb = a.result(), b.result()
    assert ra.keys() == rb.keys()
    for k in ra:
        x, y = np.asarray(ra[k]), np.asarray(rb[k])
        assert x.shape == y.shape, k
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6, equal_nan=True, err_msg=k)  # float32 batch sums
        else:
            np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.fixture(scope="module")
def tok():
    return ns.load_model("minilm")[1]


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as c:
        yield c


def test_summaries_in_record_equal_dask_over_stored_run(tmp_path, tok, client):
    corpus = _corpus(tmp_path / "c.jsonl", 90)
    src = ns.TextSource(corpus, tok, batch_size=8, max_tokens=32)
    run = ns.record(TinyText(), src, "ff,act", out=tmp_path / "r.zarr", keep="both", dtype="float32", progress=False)
    assert run.summaries("act") is not None
    again = summarize_run(run, chunk_rows=200, client=client)
    for s in ("ff", "act"):
        assert_same_summaries(run.summaries(s), again[s])
    # and counted summaries agree with the stored activations they summarize
    acts = run.population("act").values
    res = run.summaries("act").result()
    np.testing.assert_array_equal(res["firing.pos_count"], (acts > 0).sum(0))
    np.testing.assert_allclose(res["moments.mean"], acts.astype(np.float64).mean(0), rtol=1e-6, atol=1e-9)


def test_sharded_recording_on_localcluster_equals_single_process(tmp_path, tok, client):
    corpus = _corpus(tmp_path / "c.jsonl", 70, seed=1, blank_every=4)
    model = TinyText(seed=3)
    src = ns.TextSource(corpus, tok, batch_size=6, max_tokens=32)
    single = ns.record(model, src, "ff,act", out=tmp_path / "one.zarr", keep="summaries", dtype="float32",
                       progress=False)
    sharded = record_distributed((model, tok), src, "ff,act", tmp_path / "many.zarr", client=client, progress=False,
                                 keep="summaries", dtype="float32")
    assert sharded.status == "complete" and sharded.n_samples == single.n_samples
    assert sharded.config == single.config  # one configuration builder
    assert sharded.info()["nonfinite"] == {"ff": 0, "act": 0}
    for k, v in single.samples.items():
        np.testing.assert_array_equal(sharded.samples[k], v)
    assert sorted(set(single.samples["doc"].tolist())) == src.corpus.ids() != list(range(70))
    for s in ("ff", "act"):
        assert_same_summaries(single.summaries(s), sharded.summaries(s))


def test_resume_with_summaries_equals_uninterrupted(tmp_path, tok):
    """A recording with summaries killed mid-way and resumed ends with the same summaries."""
    corpus = _corpus(tmp_path / "c.jsonl", 120, seed=2)
    env = ENV
    script = str(HERE / "record_script.py")
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, script, str(ref), str(corpus), "0", "0", "both"], env=env, check=True)
    out = tmp_path / "k.zarr"
    p = subprocess.Popen([sys.executable, script, str(out), str(corpus), "0.03", "0", "both"], env=env)
    import time

    t0 = time.time()
    while time.time() - t0 < 60:
        if (out / "zarr.json").exists():
            meta = json.loads((out / "zarr.json").read_text())["attributes"]["neuronscope"]
            if meta["samples_committed"] > 300:
                break
        time.sleep(0.05)
    p.kill()
    p.wait()
    assert ns.open_run(out).status == "recording"
    subprocess.run([sys.executable, script, str(out), str(corpus), "0", "0", "both"], env=env, check=True)
    a, b = ns.open_run(ref), ns.open_run(out)
    for s in ("ff", "act"):
        assert_same_summaries(a.summaries(s), b.summaries(s), rtol=1e-12)
    np.testing.assert_array_equal(a.population().values, b.population().values)


MEM_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[3])
from tinymodels import TinyText
import neuronscope as ns
_, tok = ns.load_model("minilm")
src = ns.TextSource(sys.argv[1], tok, batch_size=16, max_tokens=32)
ns.record(TinyText(), src, "ff,act", out=sys.argv[2], keep="summaries", progress=False)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "samples": ns.open_run(sys.argv[2]).n_samples}))
"""


def test_summaries_only_memory_does_not_grow_with_corpus(tmp_path):
    env = ENV
    res = {}
    for n in (300, 3000):
        corpus = _corpus(tmp_path / f"c{n}.jsonl", n, seed=n)
        p = subprocess.run([sys.executable, "-c", MEM_SCRIPT, str(corpus), str(tmp_path / f"r{n}.zarr"), str(HERE)],
                           env=env, capture_output=True, text=True, check=True)
        res[n] = json.loads(p.stdout.strip().splitlines()[-1])
    assert res[3000]["samples"] > 9 * res[300]["samples"]
    assert res[3000]["maxrss_kb"] <= 1.10 * res[300]["maxrss_kb"], res


def test_write_summaries_into_activation_only_run(tmp_path, tok, client):
    corpus = _corpus(tmp_path / "c.jsonl", 40, seed=5)
    src = ns.TextSource(corpus, tok, batch_size=8, max_tokens=32)
    both = ns.record(TinyText(), src, "act", out=tmp_path / "both.zarr", keep="both", dtype="float32", progress=False)
    acts_only = ns.record(TinyText(), src, "act", out=tmp_path / "acts.zarr", keep="activations", dtype="float32", progress=False)
    assert acts_only.summaries("act") is None
    acts_only.write_summaries(summarize_run(acts_only, client=client, chunk_rows=100))
    assert_same_summaries(both.summaries("act"), ns.open_run(tmp_path / "acts.zarr").summaries("act"))


# -- sharded recording that keeps activations -----------------------------------------
def _worker_chunks(run):
    """Chunk indices of the activation arrays that a worker wrote: those wholly inside one
    shard's row range (the rows of a chunk two shards share are written by the driver)."""
    c, n = run.info()["chunk_rows"], run.n_rows
    return [i for a, b in run.attrs["shard_rows"] for i in range(-(-a // c), -(-n // c))
            if i * c >= a and min(i * c + c, n) <= b]


def _assert_same_run(single, sharded, sites=("ff", "act")):
    """The sharded run reads like the single-process one: configuration, samples, stored rows
    and activations (exactly, in the stored dtype), chunking."""
    assert sharded.status == "complete"
    assert sharded.config == single.config
    assert sharded.n_samples == single.n_samples and sharded.n_rows == single.n_rows
    assert sharded.info()["chunk_rows"] == single.info()["chunk_rows"]
    assert sharded.info()["nonfinite"] == single.info()["nonfinite"]
    for k, v in single.samples.items():
        np.testing.assert_array_equal(sharded.samples[k], v, err_msg=k)
    np.testing.assert_array_equal(sharded.rows(), single.rows())
    for s in sites:
        a, b = single.population(s), sharded.population(s)
        assert a.dtype == b.dtype == np.dtype(single.config["dtype"])
        np.testing.assert_array_equal(b.values, a.values, err_msg=s)
        assert list(a.coords) == list(b.coords)
        for c in a.coords:
            np.testing.assert_array_equal(b[c].values, a[c].values, err_msg=c)
    assert sharded.verify()["healthy"], sharded.verify()


@pytest.mark.parametrize(("keep", "dtype", "rate"), [("both", "float32", 1.0), ("activations", "float16", 1.0),
                                                     ("both", "float16", 0.4)])
def test_sharded_recording_keeps_activations_like_single_process(tmp_path, tok, client, keep, dtype, rate):
    corpus = _corpus(tmp_path / "c.jsonl", 70, seed=1, blank_every=4)
    model = TinyText(seed=3)
    src = ns.TextSource(corpus, tok, batch_size=6, max_tokens=32)
    kw = {"keep": keep, "dtype": dtype, "sample_rate": rate, "chunk_rows": 64}
    single = ns.record(model, src, "ff,act", out=tmp_path / "one.zarr", progress=False, **kw)
    sharded = record_distributed((model, tok), src, "ff,act", tmp_path / "many.zarr", client=client, progress=False,
                                 **kw)
    _assert_same_run(single, sharded)
    shard_rows = sharded.attrs["shard_rows"]
    assert len(shard_rows) == 4 and shard_rows[0][0] == 0 and shard_rows[-1][1] == sharded.n_rows
    assert len(_worker_chunks(sharded)) >= sharded.n_rows // 64 - 4  # workers wrote all but the shared chunks
    if keep == "both":
        for s in ("ff", "act"):
            assert_same_summaries(single.summaries(s), sharded.summaries(s))
    else:
        assert sharded.summaries("act") is None and single.summaries("act") is None


def test_verify_detects_a_flipped_byte_in_a_chunk_a_worker_wrote(tmp_path, tok, client):
    from neuronscope.cli import main

    corpus = _corpus(tmp_path / "c.jsonl", 50, seed=4)
    src = ns.TextSource(corpus, tok, batch_size=6, max_tokens=32)
    run = record_distributed((TinyText(seed=1), tok), src, "ff,act", tmp_path / "r.zarr", client=client,
                             progress=False, keep="activations", dtype="float16", chunk_rows=64)
    assert run.verify()["healthy"]
    mine = _worker_chunks(run)
    assert mine
    chunk = run.path / "sites" / "act" / "activations" / "c" / str(mine[len(mine) // 2]) / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    chunk.write_bytes(bytes(raw))
    report = ns.open_run(run.path).verify()
    assert not report["healthy"]
    assert any("sites/act/activations" in p and "crc32c" in p for p in report["problems"]), report
    with pytest.raises(ns.NeuronscopeError, match="crc32c"):
        ns.open_run(run.path).population("act").values  # noqa: B018 - reading is the test
    with pytest.raises(SystemExit) as e:
        main(["verify", str(run.path)])
    assert e.value.code == 2


def test_a_stale_worker_never_writes_into_a_later_attempt(tmp_path, tok, client):
    from neuronscope.store import RowRangeWriter

    corpus = _corpus(tmp_path / "c.jsonl", 30, seed=6)
    src = ns.TextSource(corpus, tok, batch_size=6, max_tokens=32)
    run = record_distributed((TinyText(), tok), src, "act", tmp_path / "r.zarr", client=client, progress=False,
                             keep="activations", dtype="float32", chunk_rows=64)
    before = run.population("act").values
    w = RowRangeWriter(run.path, {"act": 48}, "float32", 0, 128, run.n_rows, 64, token="an-earlier-attempt")
    with pytest.raises(ns.NeuronscopeError, match="no longer holds the activation arrays"):
        w.add({"act": np.ones((128, 48), np.float32)})
    np.testing.assert_array_equal(ns.open_run(run.path).population("act").values, before)


class Flaky(TinyText):
    """TinyText whose forward fails after ``fail_after`` calls of one copy (not a parameter:
    the same fingerprint, so the same run configuration, as a copy that never fails)."""

    def __init__(self, fail_after=None, **kw):
        super().__init__(**kw)
        self.fail_after, self.calls = fail_after, 0

    def forward(self, *a, **kw):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("flaky model failed")
        return super().forward(*a, **kw)


def test_interrupted_sharded_recording_starts_over_and_never_mixes(tmp_path, tok, client):
    corpus = _corpus(tmp_path / "c.jsonl", 150, seed=7)
    src = ns.TextSource(corpus, tok, batch_size=6, max_tokens=32)
    kw = {"keep": "both", "dtype": "float16", "chunk_rows": 64, "progress": False}
    single = ns.record(Flaky(seed=2), src, "ff,act", out=tmp_path / "one.zarr", **kw)
    out = tmp_path / "many.zarr"
    # every shard fails after its second batch (the driver's calibration pass is the first call)
    with pytest.raises(RuntimeError, match="flaky model failed"):
        record_distributed((Flaky(fail_after=3, seed=2), tok), src, "ff,act", out, client=client, **kw)
    stopped = ns.open_run(out)
    assert stopped.status == "recording" and stopped.n_samples == stopped.n_rows == 0
    assert any((out / "sites" / "act" / "activations" / "c").iterdir())  # workers had written chunks
    assert stopped.verify()["healthy"]
    again = record_distributed((Flaky(seed=2), tok), src, "ff,act", out, client=client, **kw)
    _assert_same_run(single, again)
    for s in ("ff", "act"):
        assert_same_summaries(single.summaries(s), again.summaries(s))
    # a run partly recorded in one process is refused, not continued over the whole corpus
    part = tmp_path / "part.zarr"
    with pytest.raises(RuntimeError, match="flaky model failed"):
        ns.record(Flaky(fail_after=4, seed=2), src, "ff,act", out=part, commit_every=1, overlap=False, **kw)
    committed = ns.open_run(part).attrs["items_committed"]
    assert 0 < committed < len(src)
    with pytest.raises(ns.NeuronscopeError, match=r"partly recorded in one process .* resume it without --workers"):
        record_distributed((Flaky(seed=2), tok), src, "ff,act", part, client=client, **kw)
    assert ns.open_run(part).attrs["items_committed"] == committed
    resumed = ns.record(Flaky(seed=2), src, "ff,act", out=part, **kw)
    _assert_same_run(single, resumed)


def test_cli_record_workers_keeps_activations(tmp_path):
    from neuronscope.cli import main

    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"document {i} says {'hello ' * (i % 7)}world\n" for i in range(40)))
    base = ["record", "--model", "tinylm:0", "--corpus", str(docs), "--sites", "blocks.*.mlp.act", "--keep", "both",
            "--max-tokens", "48", "--no-progress", "--json"]
    main([*base, "--out", str(tmp_path / "one.zarr")])
    main([*base, "--out", str(tmp_path / "many.zarr"), "--workers", "2"])
    single, sharded = ns.open_run(tmp_path / "one.zarr"), ns.open_run(tmp_path / "many.zarr")
    assert sharded.attrs["workers"] == 2
    _assert_same_run(single, sharded, sites=list(single.sites))
    for s in single.sites:
        assert_same_summaries(single.summaries(s), sharded.summaries(s))


# -- summarizing a stored run: document-aligned steps through one buffer --------------
def test_doc_aligned_reads_cover_every_row_once_on_document_bounds(tmp_path, monkeypatch):
    import zarr

    from neuronscope import distributed

    monkeypatch.setattr(distributed, "_READ_ROWS", 10)
    rng = np.random.default_rng(0)
    lengths = [*rng.integers(1, 9, size=30), 41, *rng.integers(1, 9, size=10)]  # one longer than a step
    doc = np.repeat(np.arange(len(lengths)), lengths)
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(len(doc), 5), chunks=(7, 5), dtype="float16")
    data = rng.normal(size=(len(doc), 5)).astype(np.float16)
    z[:] = data
    for start in (0, int(np.searchsorted(doc, 3))):  # also from a document start inside a chunk
        pieces = [(a, b, acts.copy()) for a, b, acts in distributed._doc_aligned_reads(z, doc[start:], start, len(doc))]
        bounds = [(a, b) for a, b, _ in pieces]
        assert [a for a, _ in bounds] == [start] + [b for _, b in bounds[:-1]]  # contiguous
        assert bounds[-1][1] == len(doc)
        for a, b, acts in pieces:
            assert b == len(doc) or doc[b] != doc[b - 1]  # never splits a document
            assert acts.dtype == np.float32
            np.testing.assert_array_equal(acts, data[a:b].astype(np.float32))
        assert any(b - a >= 41 for a, b in bounds)  # the long document arrived whole


def test_summarizing_a_stored_range_holds_a_buffer_not_the_range(tmp_path, tok):
    """Peak traced memory of one summarizing task: 8x the rows, (almost) the same peak."""
    import tracemalloc

    from neuronscope.distributed import _summarize_rows

    corpus = _corpus(tmp_path / "c.jsonl", 800, seed=2)
    src = ns.TextSource(corpus, tok, batch_size=16, max_tokens=32)
    run = ns.record(TinyText(), src, "ff", out=tmp_path / "r.zarr", keep="activations", dtype="float32",
                    chunk_rows=64, progress=False)
    from neuronscope.summaries.site import SummaryConfig

    cfg = SummaryConfig().to_dict()
    cfg["label_fields"] = run.label_categories
    doc = run.samples["doc"][run.rows()]
    full = len(doc)
    eighth = int(np.searchsorted(doc, doc[full // 8]))  # a document boundary near 1/8
    peaks = {}
    for stop in (eighth, full):
        _summarize_rows(str(run.path), "ff", 0, stop, cfg, 64)  # warm caches and imports
        tracemalloc.start()
        _summarize_rows(str(run.path), "ff", 0, stop, cfg, 64)
        peaks[stop] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    grown = peaks[full] - peaks[eighth]
    acts_grown = (full - eighth) * run.sites["ff"] * 4  # what holding the rows as float32 would add
    assert full > 8000
    assert grown < 0.5 * acts_grown, (peaks, acts_grown)
