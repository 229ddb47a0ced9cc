"""Integrity of run stores: damaged stores are reported by ``verify`` and fail loudly on
read; one writer at a time; ``--overwrite`` only deletes runs; issue 10's bugs 1 and 2;
chunks sized to the run; plain zarr/xarray read a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from tinymodels import TinyText

import neuronscope as ns
import neuronscope.store as store_mod
from neuronscope.errors import NeuronscopeError, RunLockedError
from neuronscope.store import RunLock, verify_run

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(Path(ns.__file__).resolve().parents[1])])}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _corpus(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(1)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 16)))), "lang": "xy"[i % 2]})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tok():
    return ns.load_model("minilm")[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("c") / "c.jsonl")


def _record(tok, corpus, out, **kw):
    args = {"keep": "both", "dtype": "float32", "chunk_rows": 16, "progress": False, "model_id": "tinytext"}
    args.update(kw)
    return ns.record(TinyText(), ns.TextSource(corpus, tok, batch_size=4, max_tokens=32), "ff,act", out=out, **args)


@pytest.fixture(scope="module")
def healthy(tok, corpus, tmp_path_factory):
    """An uninterrupted keep=both run and what it holds (the expected values below)."""
    out = tmp_path_factory.mktemp("h") / "run.zarr"
    run = _record(tok, corpus, out)
    return out, run.population().values, run.samples, {s: run.summaries(s).result() for s in run.sites}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "neuronscope.cli", *args], capture_output=True, text=True, env=ENV)


def _one_line(err: Exception | str) -> str:
    msg = str(err)
    assert len(msg.strip().splitlines()) == 1, msg
    assert "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- damage


def _chunk(run: Path, array: str, key: str = "c/1/0") -> Path:
    p = run / array / key
    assert p.is_file(), sorted(str(x.relative_to(run)) for x in (run / array).rglob("*"))
    return p


def _edit_meta(run: Path, **changes):
    doc = json.loads((run / "zarr.json").read_text())
    doc["attributes"]["neuronscope"].update(changes)
    (run / "zarr.json").write_text(json.dumps(doc))


def _flip(p: Path):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


def _truncate(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


DAMAGE = {
    # name: (damage(run), read(run) that must fail, substring of the verify report)
    "missing activation chunk": (lambda r: _chunk(r, "sites/act/activations").unlink(),
                                 lambda r: ns.open_run(r).population("act").values,
                                 "sites/act/activations: 1 of"),
    "flipped bit in activation chunk": (lambda r: _flip(_chunk(r, "sites/ff/activations")),
                                        lambda r: ns.open_run(r).population().values,
                                        "sites/ff/activations: 1 of"),
    "truncated activation chunk": (lambda r: _truncate(_chunk(r, "sites/act/activations", "c/0/0")),
                                   lambda r: ns.open_run(r).population("act").values,
                                   "fail their crc32c checksum"),
    "missing summary chunk": (lambda r: _chunk(r, "summaries/act/packed.int64", "c/0").unlink(),
                              lambda r: ns.open_run(r).summaries("act"),
                              "summaries/act/packed.int64: 1 of 1 chunks missing"),
    "missing coordinate chunk": (lambda r: _chunk(r, "samples/token_id", "c/0").unlink(),
                                 lambda r: ns.open_run(r).samples,
                                 "samples/token_id: 1 of 1 chunks missing"),
    "flipped bit in coordinate chunk": (lambda r: _flip(_chunk(r, "samples/doc", "c/0")),
                                        lambda r: ns.open_run(r).population(),
                                        "samples/doc: 1 of 1 chunks fail"),
    "samples_committed=10^6": (lambda r: _edit_meta(r, samples_committed=10**6), ns.open_run,
                               "but samples_committed=1000000"),
    "rows_committed=-5": (lambda r: _edit_meta(r, rows_committed=-5), ns.open_run,
                          "rows_committed=-5 is not a non-negative integer"),
    "rows_committed too large": (lambda r: _edit_meta(r, rows_committed=10**5, samples_committed=10**5), ns.open_run,
                                 "rows holds"),
    "status garbage": (lambda r: _edit_meta(r, status="garbage"), ns.open_run,
                       "status 'garbage' is not one of recording, finishing, complete"),
    "samples/ deleted": (lambda r: shutil.rmtree(r / "samples"), ns.open_run, "samples/doc: missing"),
    "site deleted": (lambda r: shutil.rmtree(r / "sites" / "act"), ns.open_run, "sites/act/activations: missing"),
    "garbled array metadata": (lambda r: (r / "sites/ff/activations/zarr.json").write_text("{not json"), ns.open_run,
                               "sites/ff/activations"),
    "garbled root metadata": (lambda r: (r / "zarr.json").write_text('{"zarr_format": 3, "node_t'), ns.open_run,
                              "zarr.json, the run's metadata, is not valid JSON"),
    "summaries of a site deleted": (lambda r: shutil.rmtree(r / "summaries" / "ff"),
                                    lambda r: ns.open_run(r).summaries("ff"), "summaries/ff: missing"),
}


CHUNK_DAMAGE = {name for name in DAMAGE if "chunk" in name}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_store_is_reported_and_never_read_as_data(healthy, tmp_path, name):
    src = healthy[0]
    run = tmp_path / "run.zarr"
    shutil.copytree(src, run)
    assert verify_run(run)["healthy"]
    damage, read, needle = DAMAGE[name]
    damage(run)
    report = verify_run(run)
    assert not report["healthy"]
    assert any(needle in p for p in report["problems"]), report["problems"]
    with pytest.raises(NeuronscopeError) as e:
        read(run)
    msg = _one_line(e.value)
    assert "neuronscope verify" in msg or "summaries/ff: missing" in msg, msg
    # the CLI: verify prints one line per problem and exits 2; info says the run is damaged
    p = _cli("verify", str(run))
    assert p.returncode == 2 and p.stderr == ""
    assert len(p.stdout.strip().splitlines()) == len(report["problems"]) and needle in p.stdout
    p = _cli("info", str(run))
    assert "Traceback" not in p.stderr
    if name in CHUNK_DAMAGE:  # info reads no chunk: only the full verify finds these
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and "damaged" in p.stderr and "neuronscope verify" in p.stderr, p.stderr


def test_verify_healthy_run_and_json(healthy):
    p = _cli("verify", str(healthy[0]), "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["healthy"] and rep["problems"] == [] and rep["status"] == "complete"
    run = ns.open_run(healthy[0])
    # every chunk of every array: vocab, rows, 4 coordinates, 2 sites x 2 unit-chunks... x row chunks, summaries
    n_act = sum(-(-run.n_rows // 16) for _ in run.sites)
    assert rep["chunks_checked"] > n_act
    assert run.verify() == verify_run(healthy[0]) and run.info()["problems"] == []


class Zeros(torch.nn.Module):
    """A site that outputs exact zeros: zarr would skip writing such chunks by default."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        self.dead = torch.nn.ReLU()
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.fill_(-1.0)

    def forward(self, x):
        return self.dead(self.lin(x))


def test_all_zero_chunks_are_written_and_verify(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    run = ns.record(Zeros(), ns.TensorSource(x, batch_size=8), "dead", out=tmp_path / "z.zarr", keep="activations",
                    dtype="float32", chunk_rows=16, progress=False)
    chunks = sorted(p.name for p in (tmp_path / "z.zarr/sites/dead/activations/c").iterdir())
    assert chunks == ["0", "1", "2"]  # 40 rows in chunks of 16, every one on disk
    assert verify_run(run.path)["healthy"]
    np.testing.assert_array_equal(run.population().values, np.zeros((40, 3), np.float32))


# --------------------------------------------------------------------------- one writer


def test_second_writer_gets_the_holders_pid_and_first_finishes(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", 120)
    out = tmp_path / "r.zarr"
    script = str(HERE / "record_script.py")
    # 30 batches of 1.5 s: the first recording outlives the two processes started against it
    first = subprocess.Popen([sys.executable, script, str(out), str(corpus), "1.5"], env=ENV,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "zarr.json").exists():
        time.sleep(0.02)
    assert first.poll() is None, "the first recording ended before the second started"
    second = subprocess.run([sys.executable, script, str(out), str(corpus), "0"], env=ENV, capture_output=True, text=True)
    assert second.returncode == 2
    line = _one_line(second.stderr.strip())
    assert f"PID {first.pid} on {socket.gethostname()}" in line and "being written by another process" in line
    # --overwrite is refused too while the first holds the lock, and deletes nothing
    over = subprocess.run([sys.executable, script, str(out), str(corpus), "0"], env={**ENV, "NS_OVERWRITE": "1"},
                          capture_output=True, text=True)
    assert over.returncode == 2 and f"PID {first.pid}" in _one_line(over.stderr.strip())
    assert (out / "zarr.json").exists()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    run = ns.open_run(out)
    assert run.status == "complete" and verify_run(out)["healthy"]
    assert set(run.samples) == {"sample", "doc", "pos", "token_id", "special", "char_start", "char_end", "lang"}


def test_lock_in_process_and_released_after_a_crash(tmp_path):
    out = tmp_path / "r.zarr"
    with RunLock(out):
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on "):
            RunLock(out).acquire()
    RunLock(out).acquire().release()  # released on exit of the block
    # a holder killed by SIGKILL releases the lock with its process
    p = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
                          "from neuronscope.store import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True);"
                          "time.sleep(60)", str(out), str(Path(ns.__file__).resolve().parents[1])],
                         stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(RunLockedError, match=f"PID {p.pid}"):
        RunLock(out).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    RunLock(out).acquire().release()


def test_overwrite_refuses_a_directory_that_is_not_a_run(tok, corpus, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with pytest.raises(NeuronscopeError) as e:
        _record(tok, corpus, d, overwrite=True)
    msg = _one_line(e.value)
    assert "refusing to --overwrite" in msg and "not a neuronscope run" in msg
    assert (d / "thesis.tex").read_text() == "years of work"
    with pytest.raises(NeuronscopeError) as e:
        _record(tok, corpus, d)
    msg = _one_line(e.value)
    assert "is not a neuronscope run" in msg and "neuronscope record --out" not in msg
    assert (d / "thesis.tex").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NeuronscopeError, match="is a file, not a run directory"):
        _record(tok, corpus, tmp_path / "afile")
    # an empty directory is fine, and --overwrite of a run replaces it
    (tmp_path / "empty").mkdir()
    assert _record(tok, corpus, tmp_path / "empty").status == "complete"
    run = _record(tok, corpus, tmp_path / "empty", keep="summaries", overwrite=True)
    assert run.config["keep"] == "summaries" and not (tmp_path / "empty" / "sites").exists()
    assert not (tmp_path / "empty.partial").exists()


# --------------------------------------------------------------------------- issue 10 bugs 1 and 2


def test_bug1_first_commit_interrupted_keeps_sample_coordinates(tok, corpus, healthy, tmp_path, monkeypatch):
    """The first commit dies after creating samples/doc, pos, token_id (as SIGKILL when
    checkpoints/0 appears did); the resumed run still registers and holds them."""
    real = store_mod._save_state

    def dies(*a, **kw):
        raise KeyboardInterrupt  # the process "dies" while the first checkpoint is written

    monkeypatch.setattr(store_mod, "_save_state", dies)
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        _record(tok, corpus, out, commit_every=1)
    assert (out / "samples" / "token_id").exists()  # created by the interrupted commit
    assert ns.open_run(out).samples.keys() == {"sample"} and ns.open_run(out).n_samples == 0
    monkeypatch.setattr(store_mod, "_save_state", real)
    run = _record(tok, corpus, out, commit_every=1)
    _, acts, samples, summ = healthy
    assert run.samples.keys() == samples.keys() == {"sample", "doc", "pos", "token_id", "special", "char_start",
                                                    "char_end", "lang"}
    for k in samples:
        np.testing.assert_array_equal(run.samples[k], samples[k])
    np.testing.assert_array_equal(run.population().values, acts)
    assert verify_run(out)["healthy"]


@pytest.mark.parametrize("where", ["after rename, before complete", "after rename, before checkpoints deleted"])
def test_bug2_crash_inside_finish_resumes_to_complete(tok, corpus, healthy, tmp_path, monkeypatch, where):
    out = tmp_path / "r.zarr"
    if where == "after rename, before complete":
        real = store_mod.RunWriter._write_record

        def dies(self, meta):
            if meta["status"] == "complete":
                raise KeyboardInterrupt
            real(self, meta)

        monkeypatch.setattr(store_mod.RunWriter, "_write_record", dies)
    else:
        class DiesDeletingCheckpoints:  # store.py's shutil, whose rmtree of checkpoints/ "dies"
            def __getattr__(self, name):
                return getattr(shutil, name)

            @staticmethod
            def rmtree(p, *a, **k):
                if Path(p).name == "checkpoints":
                    raise KeyboardInterrupt
                return shutil.rmtree(p, *a, **k)

        monkeypatch.setattr(store_mod, "shutil", DiesDeletingCheckpoints())
    with pytest.raises(KeyboardInterrupt):
        _record(tok, corpus, out, commit_every=2)
    monkeypatch.undo()
    assert (out / "summaries").is_dir()  # the checkpoint was moved there before the crash
    interrupted = ns.open_run(out)
    assert interrupted.status == "finishing" and verify_run(out)["healthy"]
    with pytest.raises(NeuronscopeError) as e:  # not complete: no site's summaries are read as final
        interrupted.summaries("act")
    assert "is not complete (status finishing)" in _one_line(e.value) and "re-run the same" in str(e.value)
    run = _record(tok, corpus, out, commit_every=2)
    assert run.status == "complete" and not (out / "checkpoints").exists()
    for s, want in healthy[3].items():
        got = run.summaries(s).result()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert verify_run(out)["healthy"]


def test_interrupted_summaries_rewrite_is_reported_with_the_fix(healthy, tmp_path, monkeypatch):
    run_dir = tmp_path / "r.zarr"
    shutil.copytree(healthy[0], run_dir)
    run = ns.open_run(run_dir)
    summ = {s: run.summaries(s) for s in run.sites}
    calls = []
    real = store_mod._save_state

    def dies_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*a, **kw)

    monkeypatch.setattr(store_mod, "_save_state", dies_second)
    with pytest.raises(KeyboardInterrupt):
        run.write_summaries(summ)
    monkeypatch.undo()
    broken = ns.open_run(run_dir)
    with pytest.raises(NeuronscopeError, match=f"re-run `neuronscope summarize {run_dir}`"):
        broken.summaries("act")
    rep = verify_run(run_dir)
    assert not rep["healthy"] and all("was being written" in p for p in rep["problems"])
    broken.write_summaries(summ)
    fixed = ns.open_run(run_dir)
    assert verify_run(run_dir)["healthy"]
    for k, v in healthy[3]["act"].items():
        np.testing.assert_array_equal(fixed.summaries("act").result()[k], v)


# --------------------------------------------------------------------------- size and plain readers


def test_small_run_has_small_chunks(tok, tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", 10)
    run = _record(tok, corpus, tmp_path / "r.zarr", chunk_rows=4096, dtype="float16")
    rows = run.n_rows
    chunk = run.info()["chunk_rows"]
    assert rows <= chunk <= rows + rows // 8 + 64 and chunk % 64 == 0  # not 4096
    acts = sum(p.stat().st_size for p in (tmp_path / "r.zarr/sites").rglob("*") if p.is_file())
    assert acts < 2 * 2 * 48 * chunk + 64 * 1024  # 2 sites x 48 units x fp16, one chunk each (+ metadata)
    big = _record(tok, corpus, tmp_path / "b.zarr", chunk_rows=64, dtype="float16")
    assert big.info()["chunk_rows"] == 64  # chunk_rows stays the cap
    np.testing.assert_array_equal(run.population().values, big.population().values)


def test_plain_zarr_and_xarray_open_a_run(healthy):
    path = healthy[0]
    g = zarr.open_group(str(path), mode="r")
    meta = g.attrs["neuronscope"]
    n = meta["rows_committed"]
    np.testing.assert_array_equal(g["sites/act/activations"][:n], healthy[1][:, 48:])
    ds = xr.open_zarr(str(path), group="samples", consolidated=False)
    np.testing.assert_array_equal(ds["doc"].values, healthy[2]["doc"])
    acts = xr.open_zarr(str(path), group="sites/ff", consolidated=False)["activations"]
    assert acts.dims == ("row", "unit") and acts.shape == (n, 48)


# --------------------------------------------------------------------------- disk full


ENOSPC_SCRIPT = r"""
import errno, os, sys, time
sys.path.insert(0, sys.argv[2])
import crash_driver as cd  # its audit hook injects the error
import numpy as np, torch
import neuronscope as ns
from pathlib import Path
out = Path(sys.argv[1])
failed = []
def full(i, ev, path):  # a full, slow disk under many concurrent chunk writes
    if ev == "open" and "/sites/" in path and "/c/" in path:
        if failed:
            time.sleep(0.05)
        failed.append(i)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
cd.INJ.arm(out, full)
try:
    ns.record(torch.nn.Sequential(torch.nn.Linear(2, 2048)), ns.TensorSource(x, batch_size=32), "0", out=out,
              keep="activations", dtype="float32", chunk_rows=32, progress=False)
except ns.NeuronscopeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def test_disk_full_is_one_line_without_asyncio_noise(tmp_path):
    """32 concurrent chunk writes (2048 units / 64) fail with ENOSPC: the sibling writes
    still pending must not print 'Task was destroyed but it is pending!' at exit (they did,
    ~40 lines, before the writer waited for them)."""
    p = subprocess.run([sys.executable, "-c", ENOSPC_SCRIPT, str(tmp_path / "r.zarr"), str(HERE)],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 2
    line = _one_line(p.stderr.strip())
    assert line.startswith("error: writing run") and "the disk is full" in line and "re-run the same command" in line
    assert ns.open_run(tmp_path / "r.zarr").status == "recording" and verify_run(tmp_path / "r.zarr")["healthy"]
