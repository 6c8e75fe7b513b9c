"""Faults injected into cells (crash, exception, NaN, time-out), kill -9 mid-suite and resume,
partial record lines, and that a failed cell still has its memory recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks import records
from tests.conftest import ROOT, only_run_dir, plugin_env, read_records

FAULTY = '''
import os, time
import numpy as np
from benchmarks.registry import register_method


class _Base:
    def __init__(self, config, ctx):
        pass

    def fit(self, data):
        self.fault()

    def score(self, samples):
        return np.full(len(samples), 0.5)

    def parameter_counts(self):
        return None

    def fault(self):
        pass


@register_method("fault-crash", tasks=("ctr",), family="reference")
class Crash(_Base):
    def fault(self):
        os._exit(3)  # like a segfault or an OOM kill: no exception, no record from the child


@register_method("fault-raise", tasks=("ctr",), family="reference")
class Raise(_Base):
    def fault(self):
        raise RuntimeError("CUDA out of memory (injected)")


@register_method("fault-nan", tasks=("ctr",), family="reference")
class NaNScores(_Base):
    def score(self, samples):
        return np.full(len(samples), np.nan)


@register_method("fault-hang", tasks=("ctr",), family="reference")
class Hang(_Base):
    def fault(self):
        time.sleep(600)


@register_method("slow-ok", tasks=("ctr",), family="reference")
class SlowOk(_Base):
    def fault(self):
        time.sleep(1.5)
'''
ENTRIES = {n: f"faulty_methods:{c}" for n, c in
           [("fault-crash", "Crash"), ("fault-raise", "Raise"), ("fault-nan", "NaNScores"),
            ("fault-hang", "Hang"), ("slow-ok", "SlowOk")]}


def _suite(tmp_path: Path, methods: list[str], timeout_s: int = 600) -> Path:
    raw = yaml.safe_load((ROOT / "benchmarks" / "suites" / "ci.yaml").read_text())
    raw["name"] = "faults"
    raw["methods"] = {m: {} for m in methods}
    raw["datasets"][0]["protocols"] = ["ctr"]
    raw["budget"]["cell_timeout_s"] = timeout_s
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_faulty_cells_are_recorded_and_the_suite_goes_on(tmp_path):
    env = plugin_env(tmp_path, "faulty_methods", FAULTY, ENTRIES)
    # the time-out must leave pop room to start and finish on a busy machine (8 s once did not)
    suite = _suite(tmp_path, ["fault-crash", "fault-raise", "fault-nan", "fault-hang", "pop"], timeout_s=20)
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", str(suite), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # the suite went on, and its exit status says cells failed
    assert "4 of 5 cells failed" in proc.stderr
    recs = {r["method"]: r for r in read_records(only_run_dir(out))}
    assert recs["pop"]["status"] == "ok"
    expected = {"fault-crash": ("CellProcessDied", "exit code 3"),
                "fault-raise": ("RuntimeError", "out of memory"),
                "fault-nan": ("ValueError", "no NaN"),
                "fault-hang": ("TimeoutError", "cell_timeout_s=20")}
    for method, (kind, fragment) in expected.items():
        r = recs[method]
        assert r["status"] == "failed" and r["error"]["type"] == kind, r["error"]
        assert fragment in r["error"]["message"]
        assert r["timing"]["peak_memory_mb"] and r["timing"]["peak_memory_mb"] > 10  # memory kept on failure
    assert "failed cells" in (only_run_dir(out) / "accuracy.md").read_text()


def test_sigkill_mid_cell_then_resume_runs_every_cell_exactly_once(tmp_path):
    env = plugin_env(tmp_path, "faulty_methods", FAULTY, ENTRIES)
    suite = _suite(tmp_path, ["pop", "slow-ok", "random"])
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--suite", str(suite), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until slow-ok (1.5 s) is running, whatever the cell order
        if list(out.glob("*/logs/*slow-ok*")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = only_run_dir(out)
    before = read_records(run_dir)
    assert "slow-ok" not in {r["method"] for r in before}  # killed mid-cell
    assert len(before) == len({r["cell"] for r in before})
    with open(run_dir / "records.jsonl", "ab") as fh:  # as if the crash had torn a line in half
        fh.write(b'{"cell": "movielens-100k/ctr/slow-ok/seed=1/shots=fu')

    resumed = subprocess.run([sys.executable, "-m", "benchmarks.run", "--resume", str(run_dir)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"3 cells, {len(before)} already finished" in resumed.stdout
    after = records.read(run_dir / "records.jsonl")
    assert sorted(r["method"] for r in after) == ["pop", "random", "slow-ok"]  # each exactly once
    assert all(r["status"] == "ok" for r in after)
    assert after[0] == before[0]  # the finished cell was not redone
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        json.loads(line)  # nothing corrupt survives
