"""Fault injection at every durable write of record, summarize, compare --save and atlas
(``crash_driver.py`` says how writes are enumerated and what each trial checks).

The default suite runs a strided subset of the crash points as copy-at-crash-point
snapshots (every write of the atlas, 28 of a recording's ~950, 10 of summarize's and of
compare --save's; the first and last writes of each included), plus 3 real ``os._exit``
crashes per writer and disk-full (ENOSPC) in every commit. The ``slow`` test takes every
durable write as a crash point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neuronscope as ns

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(Path(ns.__file__).resolve().parents[1])])}


def _sweep(tmp_path: Path, mode: str) -> dict:
    p = subprocess.run([sys.executable, str(HERE / "crash_driver.py"), str(tmp_path / "work"), mode],
                       capture_output=True, text=True, env=ENV, timeout=5400)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _assert_all_resumed(report: dict) -> None:
    failed = [t for t in report["trials"] if not t["ok"]]
    assert not failed, json.dumps(failed[:5], indent=1)
    kinds = {(t["scenario"], t["kind"]) for t in report["trials"]}
    for name in ("record", "summarize", "extras", "atlas"):
        assert (name, "snapshot") in kinds and (name, "exit") in kinds, name
    for name in ("record", "summarize", "extras"):
        assert (name, "enospc") in kinds, name
    rec = report["scenarios"]["record"]
    assert rec["commits"] >= 3 and rec["durable_writes"] > 100  # the sweep covers a real recording
    # every interrupted recording state was seen: before the run exists, mid-recording, mid-finish
    states = {t["state"] for t in report["trials"] if t["scenario"] == "record"}
    assert {"no run yet", "recording", "finishing"} <= states, states


def test_crash_at_strided_durable_writes_resumes_bit_identical(tmp_path):
    report = _sweep(tmp_path, "default")
    _assert_all_resumed(report)
    snaps = [t for t in report["trials"] if t["kind"] == "snapshot"]
    atlas = report["scenarios"]["atlas"]
    assert sum(t["scenario"] == "atlas" for t in snaps) == min(atlas["durable_writes"], atlas["snapshot_points"])


@pytest.mark.slow
def test_crash_at_every_durable_write_resumes_bit_identical(tmp_path):
    report = _sweep(tmp_path, "exhaustive")
    _assert_all_resumed(report)
    for name, sc in report["scenarios"].items():
        n = sum(t["scenario"] == name and t["kind"] == "snapshot" for t in report["trials"])
        assert n >= sc["durable_writes"] - 5, (name, n, sc)  # thread scheduling moves a few events
