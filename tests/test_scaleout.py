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
