"""Fault injection for every durable write of record, summarize, compare --save and atlas.

usage: python crash_driver.py WORKDIR {default|exhaustive} [SCENARIO,...]  -> one JSON report
       python crash_driver.py WORKDIR enospc SCENARIO K OUT    -> one disk-full trial (internal)

How "every durable write" is enumerated: a Python audit hook (``sys.addaudithook``) sees
every file-system mutation Python code makes, whichever library makes it: ``open`` for
writing, ``os.rename``/``replace``, ``os.link``, ``os.remove``, ``os.rmdir``, ``os.mkdir``,
``shutil.rmtree`` (and the removes it does relative to a directory descriptor, resolved
through ``/proc/self/fd``). Zarr's store, ``durable_write``, ``shutil`` and the atlas
writer all write through them; numpy/C code writing files directly would not be seen, and
none of these commands does. Each event under the scenario's target path is a numbered
crash point k; the operation of event k has not happened when the hook runs.

Three kinds of trials, all resumed by re-running the same call and compared, array by
array and attribute by attribute, with an uninterrupted reference run:

* snapshot: one instrumented run copies the target's directory tree at each chosen
  event k while holding a lock that every durable event takes (so no other I/O thread
  renames or deletes meanwhile): the copy is exactly the state a crash at k leaves (files
  being written by other threads may be torn, as in a real crash). Each copy is checked
  (a run there must verify clean and not say complete) and resumed in this process.
* exit: a forked child ``os._exit``-s at event k; the parent checks and resumes.
* enospc: a fresh interpreter raises ``OSError(ENOSPC)`` at an event inside each commit,
  must print exactly one line (no traceback, no asyncio "Task was destroyed" noise), and
  exit 2; then the run is resumed and compared.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

EVENTS = {"open", "os.rename", "os.link", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Injector:
    """The audit hook: numbers durable events under ``prefix`` and calls ``on_event(k)``."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.count = 0
        self.on_event: Callable[[int, str, str], None] | None = None
        self.marks: list[tuple[str, int]] = []
        self.opens: list[int] = []  # the events that open a file for writing (disk full hits those)
        self.lock = threading.RLock()
        self.busy = False

    def arm(self, prefix: Path, on_event: Callable[[int, str, str], None] | None = None) -> None:
        self.prefix, self.count, self.on_event, self.marks, self.opens = str(prefix), 0, on_event, [], []

    def disarm(self) -> None:
        self.prefix, self.on_event = None, None

    @staticmethod
    def _path(ev: str, args: tuple) -> str | None:
        p = args[0]
        if isinstance(p, int) or p is None:
            return None
        p = os.fsdecode(p)
        if ev == "open":
            mode, flags = args[1], args[2]
            if not ((mode and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)):
                return None
        dir_fd = args[1] if ev in ("os.remove", "os.rmdir", "shutil.rmtree") else args[2] if ev == "os.mkdir" else None
        if isinstance(dir_fd, int) and not os.path.isabs(p):
            try:
                p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
            except OSError:
                return None
        return os.path.abspath(p)

    def hook(self, ev: str, args: tuple) -> None:
        if self.prefix is None or ev not in EVENTS:
            return
        path = self._path(ev, args)
        if path is None or not path.startswith(self.prefix):
            return
        with self.lock:
            if self.busy:
                return
            self.count += 1
            if ev == "open":
                self.opens.append(self.count)
            if self.on_event is not None:
                self.busy = True
                try:
                    self.on_event(self.count, ev, path)
                finally:
                    self.busy = False


INJ = Injector()
sys.addaudithook(INJ.hook)

import dask  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tinymodels import TinyText  # noqa: E402

import neuronscope as ns  # noqa: E402
from neuronscope.errors import NeuronscopeError  # noqa: E402
from neuronscope.store import RunWriter, verify_run  # noqa: E402

torch.set_num_threads(1)
# forked children must not depend on a parent's thread pool: dask computes in the caller
dask.config.set(scheduler="synchronous")
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _mark(name: str, fn: Callable) -> Callable:
    def wrapped(self, *a, **kw):
        INJ.marks.append((name, INJ.count))
        return fn(self, *a, **kw)
    return wrapped


RunWriter.commit = _mark("commit", RunWriter.commit)
RunWriter.finish = _mark("finish", RunWriter.finish)


# --------------------------------------------------------------------------- scenarios


class Scenarios:
    """The four writers under test, on inputs made once in ``work``."""

    def __init__(self, work: Path):
        self.work = work
        self.corpus = work / "corpus.jsonl"
        if not self.corpus.exists():
            rng = np.random.default_rng(0)
            lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))), "lang": "xy"[i % 2]})
                     for i in range(12)]
            self.corpus.write_text("\n".join(lines) + "\n")
        self.tok = ns.load_model("minilm")[1]

    def source(self) -> Any:
        # length-bucketed batches (the default batching) under a small budget: several commits
        return ns.TextSource(self.corpus, self.tok, max_tokens=32, max_batch_tokens=32)

    def record(self, out: Path, keep: str = "both") -> None:
        ns.record(TinyText(), self.source(), "ff,act", out=out, keep=keep, dtype="float32", chunk_rows=16,
                  commit_every=1, progress=False, model_id="tinytext")

    # bases made once, uninterrupted
    def bases(self) -> None:
        if not (self.work / "base-both.zarr").exists():
            self.record(self.work / "base-both.zarr", "both")
            self.record(self.work / "base-acts.zarr", "activations")

    def summarize(self, out: Path) -> None:
        both = ns.open_run(self.work / "base-both.zarr")
        ns.open_run(out).write_summaries({s: both.summaries(s) for s in both.sites})

    def extras(self, out: Path) -> None:
        from neuronscope.analyses.compare import compare_all
        from neuronscope.analyses.extras import save_comparison

        run = ns.open_run(out)
        save_comparison(run, compare_all({s: run.population(s).values for s in run.sites}, "cka"), "cka")

    def atlas(self, out: Path) -> None:
        from neuronscope.atlas.build import build_atlas

        build_atlas(ns.open_run(self.work / "base-both.zarr"), out)

    def prepare(self, name: str, out: Path) -> None:
        """The target before the call: a fresh path, or a copy of the base run it changes."""
        for p in (out, out.with_name(out.name + ".partial")):
            shutil.rmtree(p, ignore_errors=True)
        if name == "summarize":
            shutil.copytree(self.work / "base-acts.zarr", out)
        elif name == "extras":
            shutil.copytree(self.work / "base-both.zarr", out)

    def run(self, name: str, out: Path) -> None:
        getattr(self, name)(out)


# --------------------------------------------------------------------------- checks


def tree(path: Path) -> dict[str, Any]:
    """Every array (dtype, shape, values) and every node's attributes of a run, read
    through neuronscope's checked store (a damaged chunk raises)."""
    run = ns.open_run(path)
    out: dict[str, Any] = {}
    for dirpath, _dirs, files in os.walk(path):
        if "zarr.json" not in files:
            continue
        rel = Path(dirpath).relative_to(path).as_posix()
        doc = json.loads((Path(dirpath) / "zarr.json").read_text())
        attrs = dict(doc.get("attributes", {}))
        if rel == ".":
            attrs[ns.store.ATTR] = {k: v for k, v in attrs[ns.store.ATTR].items() if k != "seconds"}
        if doc["node_type"] == "array":
            a = run.group[rel]
            out[rel] = (str(a.dtype), tuple(a.shape), np.asarray(a[...]), attrs)
        else:
            out[rel] = attrs
    return out


def same_tree(ref: Path, got: Path) -> None:
    a, b = tree(ref), tree(got)
    assert sorted(a) == sorted(b), f"nodes differ: only in ref {sorted(set(a) - set(b))}, only in resumed {sorted(set(b) - set(a))}"
    for k in a:
        if isinstance(a[k], tuple):
            assert a[k][:2] == b[k][:2], f"{k}: {a[k][:2]} != {b[k][:2]}"
            x, y = a[k][2], b[k][2]
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{k}: values differ"
            assert a[k][3] == b[k][3], f"{k}: attributes differ"
        else:
            assert a[k] == b[k], f"{k}: attributes differ"
    rep = verify_run(got)
    assert rep["healthy"], rep["problems"]


def same_files(ref: Path, got: Path) -> None:
    fa = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert fa == fb, f"files differ: {sorted(set(fa) ^ set(fb))}"
    for f in fa:
        x, y = (ref / f).read_bytes(), (got / f).read_bytes()
        if f == "index.html":
            x, y = (re.sub(rb"[0-9a-f]{12}", b"", v) for v in (x, y))
        assert x == y, f"{f} differs"


def check_interrupted(name: str, out: Path) -> str:
    """What a reader sees after the crash: a consistent, honest state. Returns a label."""
    if name == "atlas":
        assert not (out / "index.html").exists(), "an interrupted atlas build left an index.html"
        return "no index.html"
    if not (out / "zarr.json").exists():
        assert name == "record", f"{name}: the run lost its metadata"
        with_err = None
        try:
            ns.open_run(out)
        except NeuronscopeError as e:
            with_err = str(e)
        assert with_err is not None and len(with_err.splitlines()) == 1
        return "no run yet"
    rep = verify_run(out)
    if name == "record":
        assert rep["healthy"], f"interrupted run is damaged: {rep['problems']}"
        assert rep["status"] in ("recording", "finishing"), rep["status"]
        return rep["status"]
    # summarize / extras: the run stays readable; the group being written is reported
    fix = "neuronscope summarize" if name == "summarize" else "--save"
    for p in rep["problems"]:
        assert "was being written when its writer stopped" in p and fix in p, p
    run = ns.open_run(out)
    try:
        got = run.summaries("act") if name == "summarize" else run.extras("compare-cka")
    except NeuronscopeError as e:
        assert fix in str(e) and len(str(e).splitlines()) == 1, str(e)
        return "marked being written"
    assert got is None, "a half-written group was read as complete"
    return "old state"


def finish_and_compare(sc: Scenarios, name: str, out: Path, ref: Path) -> None:
    sc.run(name, out)
    (same_files if name == "atlas" else same_tree)(ref, out)
    assert not out.with_name(out.name + ".partial").exists(), "a .partial directory was left behind"


# --------------------------------------------------------------------------- sweeps


def reference(sc: Scenarios, name: str) -> tuple[Path, int, list[tuple[str, int]], list[int]]:
    ref = sc.work / f"ref-{name}" / "out"
    ref.parent.mkdir(parents=True, exist_ok=True)
    sc.prepare(name, ref)
    INJ.arm(ref.parent / "out")
    sc.run(name, ref)
    n, marks, opens = INJ.count, list(INJ.marks), list(INJ.opens)
    INJ.disarm()
    return ref, n, marks, opens


def choose(n: int, mode: str, budget: int) -> list[int]:
    if mode == "exhaustive" or n <= budget:
        return list(range(1, n + 1))
    # the first and last dozen (creation; finish) and an even stride between
    edge = min(12, budget // 4)
    mid = np.linspace(edge + 1, n - edge, budget - 2 * edge).round().astype(int).tolist()
    return sorted(set(range(1, edge + 1)) | set(mid) | set(range(n - edge + 1, n + 1)))


def snapshot_sweep(sc: Scenarios, name: str, ref: Path, ks: list[int]) -> list[dict[str, Any]]:
    base = sc.work / f"snap-{name}"
    shutil.rmtree(base, ignore_errors=True)
    out = base / "live" / "out"
    out.parent.mkdir(parents=True)
    sc.prepare(name, out)
    want = set(ks)

    def snap(k: int, ev: str, path: str) -> None:
        if k in want:
            dst = base / str(k)
            dst.mkdir()
            for p in out.parent.iterdir():
                if p.is_dir() and p.name.startswith("out"):
                    shutil.copytree(p, dst / p.name, symlinks=True)

    INJ.arm(out.parent / "out", snap)
    sc.run(name, out)
    seen = INJ.count
    INJ.disarm()
    results = []
    for k in ks:
        if k > seen:
            continue
        trial = base / str(k)
        res: dict[str, Any] = {"scenario": name, "kind": "snapshot", "k": k}
        try:
            res["state"] = check_interrupted(name, trial / "out")
            finish_and_compare(sc, name, trial / "out", ref)
            res["ok"] = True
        except Exception as e:  # noqa: BLE001
            res["ok"] = False
            res["error"] = "".join(traceback.format_exception_only(e)).strip()[-600:]
        shutil.rmtree(trial, ignore_errors=True)
        results.append(res)
    shutil.rmtree(base, ignore_errors=True)
    return results


def exit_trial(sc: Scenarios, name: str, ref: Path, k: int) -> dict[str, Any]:
    out = sc.work / f"exit-{name}-{k}" / "out"
    out.parent.mkdir(parents=True, exist_ok=True)
    sc.prepare(name, out)
    res: dict[str, Any] = {"scenario": name, "kind": "exit", "k": k}
    pid = os.fork()
    if pid == 0:  # the child crashes at event k
        code = 3
        try:
            INJ.arm(out.parent / "out", lambda i, ev, p: os._exit(77) if i == k else None)
            sc.run(name, out)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 77, f"child did not crash at {k}: status {status}"
        res["state"] = check_interrupted(name, out)
        finish_and_compare(sc, name, out, ref)
        res["ok"] = True
    except Exception as e:  # noqa: BLE001
        res["ok"] = False
        res["error"] = "".join(traceback.format_exception_only(e)).strip()[-600:]
    shutil.rmtree(out.parent, ignore_errors=True)
    return res


def enospc_points(n: int, marks: list[tuple[str, int]], opens: list[int]) -> list[int]:
    """Where the disk fills (a file opened for writing): the first open inside each commit
    of a recording (and the middle one of the first commit); for the other writers, the
    middle open and the last one."""
    if not marks:
        return sorted({opens[len(opens) // 2], opens[-1]})
    pts: list[int] = []
    commits = [(c, marks[i + 1][1] if i + 1 < len(marks) else n) for i, (m, c) in enumerate(marks) if m == "commit"]
    for j, (c, end) in enumerate(commits):
        inside = [k for k in opens if c < k <= end]
        if inside:  # the first commit (issue 10's bug 1) also half-way through
            pts += sorted({inside[0], inside[len(inside) // 2]}) if j == 0 else [inside[0]]
    return pts


def enospc_trial(sc: Scenarios, name: str, ref: Path, k: int) -> dict[str, Any]:
    out = sc.work / f"enospc-{name}-{k}" / "out"
    out.parent.mkdir(parents=True, exist_ok=True)
    sc.prepare(name, out)
    res: dict[str, Any] = {"scenario": name, "kind": "enospc", "k": k}
    p = subprocess.run([sys.executable, __file__, str(sc.work), "enospc", name, str(k), str(out)],
                       capture_output=True, text=True, env=os.environ)
    try:
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, f"exit {p.returncode}: {p.stderr[-400:]}"
        assert len(lines) == 1, f"{len(lines)} lines on stderr: {p.stderr[-600:]}"
        assert "disk is full" in lines[0] and "re-run the same command" in lines[0], lines[0]
        res["state"] = check_interrupted(name, out)
        finish_and_compare(sc, name, out, ref)
        res["ok"] = True
    except Exception as e:  # noqa: BLE001
        res["ok"] = False
        res["error"] = "".join(traceback.format_exception_only(e)).strip()[-600:]
    shutil.rmtree(out.parent, ignore_errors=True)
    return res


def enospc_child(sc: Scenarios, name: str, k: int, out: Path) -> int:
    def full(i: int, ev: str, path: str) -> None:
        if i >= k and ev == "open":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    INJ.arm(out.parent / "out", full)
    try:
        sc.run(name, out)
    except NeuronscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


#: snapshot crash points of the default sweep (the exhaustive one takes every write)
BUDGET = {"record": 28, "summarize": 10, "extras": 10, "atlas": 40}
EXIT_POINTS = 3


def main() -> int:
    work, mode = Path(sys.argv[1]), sys.argv[2]
    work.mkdir(parents=True, exist_ok=True)
    sc = Scenarios(work)
    if mode == "enospc":
        return enospc_child(sc, sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
    t0 = time.time()
    sc.bases()
    report: dict[str, Any] = {"mode": mode, "scenarios": {}, "trials": []}
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["record", "summarize", "extras", "atlas"]
    for name in names:
        ref, n, marks, opens = reference(sc, name)
        ks = choose(n, mode, BUDGET[name])
        trials = snapshot_sweep(sc, name, ref, ks)
        exits = np.linspace(1, n, EXIT_POINTS).round().astype(int).tolist()
        trials += [exit_trial(sc, name, ref, k) for k in sorted(set(exits))]
        if name != "atlas":  # the atlas is a directory of files, not a run with commits
            trials += [enospc_trial(sc, name, ref, k) for k in enospc_points(n, marks, opens)]
        report["scenarios"][name] = {"durable_writes": n, "commits": sum(m == "commit" for m, _ in marks),
                                     "snapshot_points": len(ks)}
        report["trials"] += trials
        bad = [t for t in trials if not t["ok"]]
        print(f"{name}: {n} durable writes, {len(trials)} trials, {len(bad)} failed, {time.time() - t0:.0f} s",
              *(json.dumps(t) for t in bad[:5]), sep="\n", file=sys.stderr, flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
