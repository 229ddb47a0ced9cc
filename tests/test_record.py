"""Recording: exact values, sites, sources, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from tinymodels import HandSet, TinyConv, TinyText, Wrapper

import neuronscope as ns
from neuronscope.errors import ConfigMismatchError, FormatVersionError, NeuronscopeError
from neuronscope.recording import keep_mask
from neuronscope.sources.base import Batch
from neuronscope.sources.torch_sites import capture

HERE = Path(__file__).parent
# subprocesses import the same neuronscope as this test process (a worktree's src, not the
# editable install's)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(Path(ns.__file__).resolve().parents[1])])}


def _direct_ffn(model, tok, texts, batch_size, max_tokens, site_names):
    """Our own hooks, the same batches: site -> (samples, units) float32."""
    mods = dict(model.named_modules())
    out = {s: [] for s in site_names}
    store = {}
    handles = [mods[s].register_forward_hook(lambda m, i, o, s=s: store.__setitem__(s, o)) for s in site_names]
    try:
        with torch.no_grad():
            for b in range(0, len(texts), batch_size):
                enc = tok(texts[b : b + batch_size], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
                model(**enc)
                m = enc["attention_mask"].bool()
                for s in site_names:
                    out[s].append(store[s][m].float().numpy())
    finally:
        for h in handles:
            h.remove()
    return {s: np.concatenate(v) for s, v in out.items()}


def test_minilm_ffn_sites_equal_direct_forward(minilm, small_corpus, tmp_path):
    model, tok = minilm
    src = ns.TextSource(small_corpus, tok, batch_size=16, max_tokens=64, batching="docs")  # the same batches
    run32 = ns.record(model, src, "encoder.layer.*.intermediate", out=tmp_path / "f32.zarr", keep="activations", dtype="float32", progress=False)
    run16 = ns.record(model, src, "encoder.layer.*.intermediate", out=tmp_path / "f16.zarr", keep="activations", dtype="float16", progress=False)
    names = [f"encoder.layer.{i}.intermediate" for i in range(6)]
    assert list(run32.sites) == names and all(u == 1536 for u in run32.sites.values())
    direct = _direct_ffn(model, tok, src.corpus.texts, 16, 64, names)
    for s in names:
        got32 = run32.population(s).values
        np.testing.assert_array_equal(got32, direct[s])  # exact in float32
        got16 = run16.population(s).values
        np.testing.assert_array_equal(got16, direct[s].astype(np.float16))  # fp16 rounding only
    # token by token: the coordinates say which token each row is
    pop = run32.population("encoder.layer.0.*")
    enc = tok(src.corpus.texts[5], truncation=True, max_length=64)
    rows = pop.where(pop.doc == 5, drop=True)
    assert rows["token_id"].values.tolist() == enc["input_ids"]
    assert rows["pos"].values.tolist() == list(range(len(enc["input_ids"])))
    assert rows["token"].values[0] == "[CLS]"
    assert set(np.unique(pop["lang"].values)) <= set(src.label_categories["lang"])


def test_handset_model_closed_form(tmp_path):
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, 3.0], [0.0, 0.0], [2.0, -2.0]], dtype=np.float32)
    run = ns.record(HandSet(), ns.TensorSource(x, batch_size=2, labels={"cls": ["a", "b", "a", "b", "a"]}),
                    "hidden,act", out=tmp_path / "r.zarr", keep="activations", dtype="float32", progress=False)
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    b = np.array([0.0, -1.0, 0.5])
    pre = x @ w.T + b
    np.testing.assert_allclose(run.population("hidden").values, pre, rtol=0, atol=1e-6)
    np.testing.assert_allclose(run.population("act").values, np.maximum(pre, 0), rtol=0, atol=1e-6)
    pop = run.population()
    assert pop.dims == ("sample", "neuron") and pop.shape == (5, 6)
    assert list(pop["site"].values) == ["hidden"] * 3 + ["act"] * 3
    assert list(pop["item"].values) == [0, 1, 2, 3, 4]
    assert list(pop["cls"].values) == ["a", "b", "a", "b", "a"]


def test_tuple_outputs_and_2d_outputs(tmp_path):
    model = Wrapper()
    x = torch.randn(7, 2)
    run = ns.record(model, ns.TensorSource(x, batch_size=3), "block", out=tmp_path / "r.zarr", keep="activations", dtype="float32", progress=False)
    with torch.no_grad():
        want = model.block.lin(x).numpy()
    np.testing.assert_allclose(run.population().values, want, atol=1e-6)
    assert ns.sites(model, "block")[0].units == 4


def test_conv_sites_positions_and_mean(tmp_path):
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    run = ns.record(TinyConv(), ns.TensorSource(x, batch_size=2), "conv", out=tmp_path / "p.zarr", keep="activations", dtype="float32", progress=False)
    pop = run.population()
    flat = x.reshape(2, 6).numpy().reshape(-1)
    np.testing.assert_allclose(pop.values, np.stack([2 * flat, -flat], axis=1))
    assert list(pop["item"].values) == [0] * 6 + [1] * 6
    assert list(pop["pos"].values) == list(range(6)) * 2
    runm = ns.record(TinyConv(), ns.TensorSource(x, batch_size=2), "conv", out=tmp_path / "m.zarr", keep="activations",
                     dtype="float32", conv="mean", progress=False)
    means = x.reshape(2, 6).mean(1).numpy()
    np.testing.assert_allclose(runm.population().values, np.stack([2 * means, -means], axis=1), atol=1e-6)


def test_sites_glob_and_close_names(minilm):
    model, _ = minilm
    found = ns.sites(model, "encoder.layer.*.intermediate")
    assert [s.name for s in found] == [f"encoder.layer.{i}.intermediate" for i in range(6)]
    assert all(s.units == 1536 for s in found)
    with pytest.raises(NeuronscopeError, match="among the model's modules; closest names: .*encoder.layer.0.intermediate"):
        ns.sites(model, "encoder.layer.0.intermediat")


def test_sample_rate_subsample_is_deterministic(tmp_path, minilm, small_corpus):
    model, tok = minilm
    src = ns.TextSource(small_corpus, tok, batch_size=16, max_tokens=32)
    run = ns.record(model, src, "encoder.layer.0.intermediate", out=tmp_path / "s.zarr", keep="activations", sample_rate=0.25, progress=False)
    pop = run.population()
    kept = np.flatnonzero(keep_mask(np.arange(run.n_samples), 0.25))
    assert pop["sample"].values.tolist() == kept.tolist()
    assert 0.15 < len(kept) / run.n_samples < 0.35
    assert run.n_samples == len(run.samples["doc"])  # all samples' coordinates kept


def _tiny_corpus(tmp_path, n=120):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(3, 20))), "lang": ["x", "y"][i % 2]}) for i in range(n)]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_arrays(path):
    run = ns.open_run(path)
    return run.population().values, {k: v for k, v in run.samples.items()}, run


def _committed(out: Path) -> tuple[str, int]:
    meta = json.loads((out / "zarr.json").read_text())["attributes"]["neuronscope"]
    return meta["status"], int(meta["samples_committed"])


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    corpus = _tiny_corpus(tmp_path)
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(HERE / "record_script.py"), str(ref), str(corpus), "0"], env=ENV, check=True)
    want_acts, want_samples, want_run = _read_arrays(ref)
    assert want_run.status == "complete"
    total = want_run.n_samples
    out = tmp_path / "killed.zarr"
    seen = []
    # kill as soon as the store exists, then after ~20%, ~45% and ~70% of the samples are committed
    for frac in (0.0, 0.2, 0.45, 0.7):
        p = subprocess.Popen([sys.executable, str(HERE / "record_script.py"), str(out), str(corpus), "0.05"], env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if (out / "zarr.json").exists() and _committed(out)[1] >= frac * total:
                break
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        status, n = _committed(out)
        seen.append((status, n))
        assert status == "recording" and ns.open_run(out).status == "recording"
    assert [n for _, n in seen] == sorted(n for _, n in seen) and 0 < seen[-1][1] < total, seen
    subprocess.run([sys.executable, str(HERE / "record_script.py"), str(out), str(corpus), "0"], env=ENV, check=True)
    got_acts, got_samples, got_run = _read_arrays(out)
    assert got_run.status == "complete"
    np.testing.assert_array_equal(got_acts, want_acts)
    for k in want_samples:
        np.testing.assert_array_equal(got_samples[k], want_samples[k])


def test_write_error_mid_run_stays_resumable(tmp_path):
    corpus = _tiny_corpus(tmp_path)
    out = tmp_path / "full.zarr"
    # a file-size limit makes the first full activation chunk fail to write, like a full disk
    p = subprocess.run([sys.executable, str(HERE / "record_script.py"), str(out), str(corpus), "0", "8000"],
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 2
    assert "free disk space" in p.stderr and "re-run the same command to resume" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert ns.open_run(out).status == "recording"
    subprocess.run([sys.executable, str(HERE / "record_script.py"), str(out), str(corpus), "0"], env=ENV, check=True)
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(HERE / "record_script.py"), str(ref), str(corpus), "0"], env=ENV, check=True)
    np.testing.assert_array_equal(_read_arrays(out)[0], _read_arrays(ref)[0])


def test_config_mismatch_refused_unless_overwrite(tmp_path):
    x = np.ones((4, 2), dtype=np.float32)
    ns.record(HandSet(), ns.TensorSource(x), "hidden", out=tmp_path / "r.zarr", keep="activations", progress=False)
    with pytest.raises(ConfigMismatchError, match="--overwrite"):
        ns.record(HandSet(), ns.TensorSource(x), "act", out=tmp_path / "r.zarr", keep="activations", progress=False)
    run = ns.record(HandSet(), ns.TensorSource(x), "act", out=tmp_path / "r.zarr", keep="activations", overwrite=True, progress=False)
    assert list(run.sites) == ["act"]


def test_format_version_refused(tmp_path):
    x = np.ones((4, 2), dtype=np.float32)
    ns.record(HandSet(), ns.TensorSource(x), "hidden", out=tmp_path / "r.zarr", keep="activations", progress=False)
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    meta = dict(g.attrs["neuronscope"])
    meta["format_version"] = 99
    g.attrs["neuronscope"] = meta
    with pytest.raises(FormatVersionError, match="format version 99"):
        ns.open_run(tmp_path / "r.zarr")


class LogNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
            self.lin.bias.zero_()
        self.log = torch.nn.Identity()

    def forward(self, x):
        return self.log(torch.log(self.lin(x)))


def test_nonfinite_activations_counted_not_crash(tmp_path):
    x = np.array([[1.0], [0.0], [-1.0], [2.0], [-3.0]], dtype=np.float32)  # log: 0, -inf, nan, log2, nan
    run = ns.record(LogNet(), ns.TensorSource(x), "log", out=tmp_path / "r.zarr", keep="activations", dtype="float32", progress=False)
    assert run.info()["nonfinite"] == {"log": 3}
    vals = run.population().values[:, 0]
    assert np.isneginf(vals[1]) and np.isnan(vals[2]) and vals[3] == pytest.approx(np.log(2))


def test_population_is_dask_backed(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    run = ns.record(HandSet(), ns.TensorSource(x, batch_size=7), "hidden", out=tmp_path / "r.zarr", keep="activations", progress=False)
    pop = ns.open_run(tmp_path / "r.zarr").population()
    assert isinstance(pop, xr.DataArray)
    import dask.array as da

    assert isinstance(pop.data, da.Array)
    assert pop.sizes == {"sample": 50, "neuron": 3}
    assert run.info()["status"] == "complete"


def test_capture_is_removed_after_use():
    model = HandSet()
    site = ns.sites(model, "hidden")
    with capture(model, site) as cap:
        model(torch.ones(1, 2))
        assert "hidden" in cap.outputs
    assert not model.hidden._forward_hooks


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuronscope.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd)


def test_cli_record_info_json(tmp_path, small_corpus):
    p = _cli("record", "--corpus", str(small_corpus), "--sites", "encoder.layer.5.intermediate", "--out", str(tmp_path / "r.zarr"),
             "--keep", "activations", "--max-tokens", "16", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["status"] == "complete" and info["sites"] == {"encoder.layer.5.intermediate": 1536}
    p2 = _cli("info", str(tmp_path / "r.zarr"), "--json")
    assert json.loads(p2.stdout)["samples"] == info["samples"] > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--sites", "encoder.nothing.*"], "matched no site among the model's modules"),
        (["--corpus", "EMPTY"], "is empty"),
        (["--corpus", "MISSING"], "does not exist"),
        (["--corpus", "BINARY"], "cannot read corpus"),
        (["--corpus", "BADJSON"], "not valid JSON"),
    ],
)
def test_cli_bad_input_one_line_nonzero(tmp_path, args, needle):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81garbage")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    subst = {"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "nope.txt"),
             "BINARY": str(tmp_path / "bin.txt"), "BADJSON": str(tmp_path / "bad.jsonl")}
    args = [subst.get(a, a) for a in args]
    p = _cli("record", "--out", str(tmp_path / "r.zarr"), *args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_cli_info_errors(tmp_path):
    p = _cli("info", str(tmp_path / "nothing.zarr"))
    assert p.returncode == 2 and "no run at" in p.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    p = _cli("info", str(tmp_path / "plain"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_tinytext_model_runs_through_text_source(tmp_path):
    corpus = _tiny_corpus(tmp_path, n=10)
    from neuronscope.specs import load_model

    _, tok = load_model("minilm")
    run = ns.record(TinyText(), ns.TextSource(corpus, tok, batch_size=3), "act", out=tmp_path / "t.zarr", keep="activations", progress=False)
    assert run.sites == {"act": 48}
    assert run.population().sizes["sample"] == run.n_samples


def test_summarize_model_in_memory_equals_the_run_summaries(tmp_path):
    corpus = _tiny_corpus(tmp_path, n=30)
    from neuronscope.recording import summarize_model
    from neuronscope.specs import load_model

    _, tok = load_model("minilm")
    src = ns.TextSource(corpus, tok, batch_size=4)
    hooked = []
    mem = summarize_model(TinyText(), src, "ff,act", progress=False,
                          on_batch=lambda site, acts, samples: hooked.append((site, len(acts))))
    assert sorted(tmp_path.iterdir()) == [corpus]  # nothing written
    run = ns.record(TinyText(), src, "ff,act", out=tmp_path / "r.zarr", keep="both", dtype="float32", progress=False)
    # the overlapped pass (summaries and store on a worker thread) records the same run
    lap = ns.record(TinyText(), src, "ff,act", out=tmp_path / "o.zarr", keep="both", dtype="float32",
                    progress=False, overlap=True)
    assert list(mem) == ["ff", "act"]
    for site in mem:
        got, want = mem[site].result(), run.summaries(site).result()
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            np.testing.assert_array_equal(lap.summaries(site).result()[key], want[key], err_msg=key)
        np.testing.assert_array_equal(lap.population(site).values, run.population(site).values)
    acts = run.population("act").values
    np.testing.assert_array_equal(mem["act"].result()["firing.pos_count"], (acts > 0).sum(0))
    assert sum(n for s, n in hooked if s == "act") == run.n_samples
    with pytest.raises(NeuronscopeError, match="summarize_model"):
        ns.record(TinyText(), src, "act", out=None, keep="summaries", progress=False)


def test_record_distributed_refuses_what_it_cannot_honour(tmp_path):
    from neuronscope.distributed import record_distributed

    x = ns.TensorSource(np.ones((4, 2), np.float32))
    with pytest.raises(NeuronscopeError, match="no activations to subsample; drop --sample-rate"):
        record_distributed("minilm", x, "act", tmp_path / "r.zarr", sample_rate=0.5)
    with pytest.raises(NeuronscopeError, match="dtype must be float16 or float32"):
        record_distributed("minilm", x, "act", tmp_path / "r.zarr", dtype="int8")
    with pytest.raises(NeuronscopeError, match="keep must be one of"):
        record_distributed("minilm", x, "act", tmp_path / "r.zarr", keep="all")
    # what it can honour passes the checks and reaches the next one (text corpora only):
    # every keep, and a sample rate when activations are stored
    for keep, dtype, rate in (("summaries", "float32", 1.0), ("both", "float16", 0.5), ("activations", "float32", 1.0)):
        with pytest.raises(NeuronscopeError, match="shards text corpora"):
            record_distributed("minilm", x, "act", tmp_path / "r.zarr", keep=keep, dtype=dtype, sample_rate=rate)
    assert not (tmp_path / "r.zarr").exists()


def test_commits_wait_twenty_times_their_cost():
    from neuronscope.recording import COMMIT_SPACING, Recorder

    class Writer:  # what Recorder reads of a RunWriter
        samples_committed = items_committed = 0
        meta = {"nonfinite": {"a": 0}}

        def __init__(self):
            self.commits = []

        def append(self, samples, rows, acts, items=None):
            pass

        def commit(self, items, nonfinite, states):
            self.commits.append(items)

    w = Writer()
    rec = Recorder({"a": 1}, None, writer=w, commit_seconds=0.0)
    batch = Batch(inputs=torch.zeros(1), mask=None, samples={"item": np.arange(2)}, items=2)
    rec.consume(batch, {"a": np.ones((2, 1), np.float32)})
    assert w.commits == [2]  # commit_seconds=0 and no cost measured yet: commit at once
    rec.commit_cost = 1.0  # a commit that took 1 s
    rec.consume(batch, {"a": np.ones((2, 1), np.float32)})
    assert w.commits == [2] and rec.items_since_commit == 2
    rec.last_commit -= COMMIT_SPACING * 1.0
    rec.consume(batch, {"a": np.array([[np.nan], [1.0]], np.float32)})
    assert w.commits == [2, 4] and rec.nonfinite == {"a": 1}
    assert rec.n_done == 6 and rec.seen == 6


def _partial_run(out, model, source, sites, stop_at=3, **kw):
    """Record until the ``stop_at``-th batch raises: the first ``stop_at - 1`` are committed."""
    calls = []

    def stop(site, acts, samples):
        calls.append(site)
        if len(calls) == stop_at:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        ns.record(model, source, sites, out=out, commit_every=1, progress=False, on_batch=stop, overlap=False, **kw)
    run = ns.open_run(out)
    assert run.status == "recording"
    return run


def test_resume_says_from_which_sample_and_document(tmp_path, minilm, capsys):
    path = tmp_path / "c.txt"
    lines = [f"line {i} " + "word " * (i % 5) if i % 3 else "" for i in range(40)]  # every third is blank
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = ns.TextSource(path, minilm[1], batch_size=3, max_tokens=16, batching="docs")
    assert src.corpus.ids()[:4] == [1, 2, 4, 5]
    run = _partial_run(tmp_path / "r.zarr", TinyText(), src, "act", keep="activations")
    n, items = run.n_samples, int(run.attrs["items_committed"])
    assert items == 6 and n == sum(len(b.samples["doc"]) for b in list(src.batches())[:2])
    capsys.readouterr()
    done = ns.record(TinyText(), src, "act", out=tmp_path / "r.zarr", keep="activations", progress=False)
    cap = capsys.readouterr()
    assert cap.err.splitlines() == [f"resuming from sample {n} (document {src.corpus.ids()[6]})"] == \
        [f"resuming from sample {n} (document 10)"]
    assert cap.out == "" and done.status == "complete"
    # top examples and samples still map to the documents' line numbers
    docs = done.samples["doc"]
    assert list(dict.fromkeys(docs.tolist())) == src.corpus.ids()
    ns.record(TinyText(), src, "act", out=tmp_path / "r.zarr", keep="activations", progress=False)
    assert capsys.readouterr().err == ""  # a complete run is not "resumed"


def test_cli_record_json_resume_message_on_stderr(tmp_path, small_corpus, minilm):
    out = tmp_path / "r.zarr"
    site = "encoder.layer.0.intermediate"
    src = ns.TextSource(small_corpus, minilm[1], batch_size=4, max_tokens=16, batching="docs")
    run = _partial_run(out, minilm[0], src, site, keep="summaries")
    p = _cli("record", "--corpus", str(small_corpus), "--sites", site, "--out", str(out), "--keep", "summaries",
             "--batch-size", "4", "--max-tokens", "16", "--batching", "docs", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "complete"
    assert f"resuming from sample {run.n_samples} (document 8)" in p.stderr


def test_lanes_record_the_run_of_one_lane(tmp_path, minilm, small_corpus):
    """Two forward lanes (each batch forwarded on whichever lane is free, consumed in source
    order) record exactly the run of one lane: activations, coordinates and every summary;
    the hook sees the samples in order."""
    model, tok = minilm
    src = ns.TextSource(small_corpus, tok, max_tokens=32, max_batch_tokens=64)  # many small batches
    assert src.stats()["batches"] >= 12
    sites = "encoder.layer.0.intermediate,encoder.layer.5.intermediate"
    seen: dict[int, list[np.ndarray]] = {1: [], 2: []}
    runs = {}
    for lanes in (1, 2):
        runs[lanes] = ns.record(model, src, sites, out=tmp_path / f"l{lanes}.zarr", keep="both", dtype="float32",
                                progress=False, lanes=lanes, threads=1, commit_every=3,
                                on_batch=lambda s, a, smp, lanes=lanes: seen[lanes].append(smp["sample"])
                                if s.endswith(".0.intermediate") else None)
    one, two = runs[1], runs[2]
    assert two.n_samples == one.n_samples == src.stats()["tokens"]
    np.testing.assert_array_equal(np.concatenate(seen[2]), np.arange(two.n_samples))
    for k in ("doc", "pos", "token_id"):
        np.testing.assert_array_equal(two.samples[k], one.samples[k])
    for site in one.sites:
        np.testing.assert_array_equal(two.population(site).values, one.population(site).values)
        got, want = two.summaries(site).result(), one.summaries(site).result()
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # ... and that is the model's own forward pass, batch by batch
    direct = _direct_ffn(model, tok, src.corpus.texts, 8, 32, ["encoder.layer.5.intermediate"])
    order = np.lexsort((two.samples["pos"], two.samples["doc"]))
    np.testing.assert_allclose(two.population("encoder.layer.5.intermediate").values[order],
                               direct["encoder.layer.5.intermediate"], rtol=1e-5, atol=1e-5)


def test_lanes_error_stops_the_run_resumable(tmp_path, minilm, small_corpus):
    """An error on a lane (here the hook, on the 4th batch) stops every lane and is raised to
    the caller; the run keeps the batches committed before it and resumes to the
    uninterrupted run."""
    model, tok = minilm
    src = ns.TextSource(small_corpus, tok, max_tokens=32, max_batch_tokens=64)
    site = "encoder.layer.1.intermediate"
    calls = []

    def stop(s, acts, samples):
        calls.append(int(samples["sample"][0]))
        if len(calls) == 4:
            raise RuntimeError("hook failed")

    out = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match="hook failed"):
        ns.record(model, src, site, out=out, keep="both", dtype="float32", progress=False, lanes=2, threads=1,
                  commit_every=1, on_batch=stop)
    part = ns.open_run(out)
    assert part.status == "recording" and int(part.attrs["items_committed"]) > 0
    assert len(calls) == 4  # no lane consumed past the error
    done = ns.record(model, src, site, out=out, keep="both", dtype="float32", progress=False, lanes=2, threads=1)
    ref = ns.record(model, src, site, out=tmp_path / "ref.zarr", keep="both", dtype="float32", progress=False,
                    lanes=1, threads=1)
    np.testing.assert_array_equal(done.population(site).values, ref.population(site).values)
    for key, want in ref.summaries(site).result().items():
        np.testing.assert_array_equal(done.summaries(site).result()[key], want, err_msg=key)


def test_lanes_refused_with_overlap_interventions_or_zero(tmp_path):
    from neuronscope.intervene import ablate

    src = ns.TensorSource(np.ones((4, 2), np.float32))
    model = TinyText()
    with pytest.raises(NeuronscopeError, match="lanes > 1 cannot be combined with overlap"):
        ns.record(model, src, "act", out=tmp_path / "a.zarr", lanes=2, overlap=True, progress=False)
    with pytest.raises(NeuronscopeError, match="lanes > 1 cannot be combined with interventions"):
        ns.record(model, src, "act", out=tmp_path / "b.zarr", lanes=2, progress=False,
                  interventions=[ablate(model, "act", [0])])
    with pytest.raises(NeuronscopeError, match="lanes must be a positive number"):
        ns.record(model, src, "act", out=tmp_path / "c.zarr", lanes=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_capture_outputs_belong_to_the_calling_thread():
    """Two threads forward different inputs through one capture at the same time: each reads
    its own batch's outputs (the hooks write to the calling thread's dict)."""
    import threading

    from neuronscope.sources.torch_sites import SiteCapture
    from neuronscope.sources.torch_sites import sites as resolve

    model = HandSet()
    x = {0: torch.tensor([[1.0, 2.0]]), 1: torch.tensor([[-4.0, 0.5], [2.0, 2.0]])}
    want = {}
    with capture(model, resolve(model, "hidden")) as cap:
        for k, v in x.items():
            model(v)
            want[k] = cap.outputs["hidden"].clone()
    got = {}
    both_ran = threading.Barrier(2)
    with SiteCapture(model, resolve(model, "hidden")) as cap:
        def run(k):
            model(x[k])
            both_ran.wait()  # the other thread's forward pass has run too
            got[k] = cap.outputs["hidden"]

        ts = [threading.Thread(target=run, args=(k,)) for k in x]
        [t.start() for t in ts]
        [t.join() for t in ts]
    for k in x:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert not torch.equal(want[0][0], want[1][0])


@pytest.mark.parametrize("call", [False, True])
def test_no_primitive_cache_takes_effect_before_the_first_primitive(call):
    """oneDNN compiles a primitive per GELU input shape; with the cache a second call of the
    same shape is a hit, after ``no_primitive_cache()`` (called after ``import torch``, before
    any primitive) it is compiled again: the setting is read at the first primitive."""
    code = (
        "import torch\n"
        "from neuronscope.recording import no_primitive_cache\n"
        f"assert no_primitive_cache() if {call} else True\n"
        "x = torch.randn(64, 1536)\n"
        "torch.nn.functional.gelu(x); torch.nn.functional.gelu(x)\n"
    )
    from neuronscope.recording import PRIMITIVE_CACHE_ENV

    env = {k: v for k, v in os.environ.items() if k != PRIMITIVE_CACHE_ENV}
    p = subprocess.run([sys.executable, "-c", code], env={**env, "ONEDNN_VERBOSE": "2"}, capture_output=True,
                       text=True, check=True)
    creates = [ln for ln in (p.stdout + p.stderr).splitlines() if "primitive,create:" in ln]
    assert len(creates) == 2, p.stdout + p.stderr
    assert sum("cache_hit" in ln for ln in creates) == (0 if call else 1)
