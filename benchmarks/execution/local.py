"""The local executor: each cell in its own Python process (``python -m benchmarks.execution.cell``),
one after another; also what a Ray task runs on its node.

A process per cell frees all memory (GPU included) between cells, makes the process peak RSS the
cell's own peak, and contains crashes: a cell that dies (segfault, out-of-memory kill) or outlives
``budget.cell_timeout_s`` is recorded as failed, with the peak RSS the parent saw, and the suite goes
on. The cell's process dies with this one (``PR_SET_PDEATHSIG``). Its record is finished here, where
the test labels are read (:func:`benchmarks.execution.evaluation.finish`).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil

from benchmarks import records
from benchmarks.execution import evaluation
from benchmarks.execution.cell import bundle_path, now
from benchmarks.registry import ROOT
from benchmarks.suite import Cell, Suite


class ExecutorError(RuntimeError):
    """An executor that cannot start (its engine is missing or unreachable): one line, exit 2."""


POLL_S = 0.2


def _failed(suite: Suite, cell: Cell, run_id: str, kind: str, message: str, peak_mb: float | None,
            trace: str = "") -> dict:
    return {
        "schema": records.SCHEMA_VERSION, "run_id": run_id, "suite": suite.name,
        "suite_version": suite.version, "cell": cell.key, "dataset": cell.dataset, "task": cell.task,
        "method": cell.method, "seed": cell.seed, "shots": cell.shots, "status": "failed",
        "error": {"type": kind, "message": message, "traceback": trace},
        "timing": {"peak_memory_mb": peak_mb, "memory_kind": "process_peak_rss (seen by the parent)"},
        "device": suite.device, "finished_at": now(),
    }


def run_in_subprocess(suite_file: Path, suite: Suite, cell: Cell, run_dir: Path, run_id: str) -> dict:
    """Run one cell in a child process; always returns a record (ok or failed)."""
    out = run_dir / "work" / f"{records.cell_file_stem(cell.key)}.json"
    out.unlink(missing_ok=True)
    log = open(run_dir / "logs" / f"{records.cell_file_stem(cell.key)}.log", "wb")
    cmd = [sys.executable, "-m", "benchmarks.execution.cell", str(suite_file), json.dumps(asdict(cell)), str(run_dir),
           str(out)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=_die_with_parent)
    watched = psutil.Process(proc.pid)
    peak, start = 0.0, time.monotonic()
    try:
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            if time.monotonic() - start > suite.budget.cell_timeout_s:
                proc.kill()
                proc.wait()
                return _failed(suite, cell, run_id, "TimeoutError",
                               f"cell exceeded cell_timeout_s={suite.budget.cell_timeout_s}", peak or None)
            time.sleep(POLL_S)
    except BaseException:
        proc.kill()
        raise
    finally:
        log.close()
    if proc.returncode != 0 or not out.exists():
        tail = (run_dir / "logs" / f"{records.cell_file_stem(cell.key)}.log").read_text(errors="replace")[-4000:]
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        return _failed(suite, cell, run_id, "CellProcessDied",
                       f"exit code {proc.returncode}: {last}", peak or None, tail)
    record = json.loads(out.read_text())
    bundle_file = bundle_path(out)
    bundle = {}
    if bundle_file.exists():
        with np.load(bundle_file, allow_pickle=False) as data:
            bundle = {k: data[k] for k in data.files}
    out.unlink()
    bundle_file.unlink(missing_ok=True)
    return evaluation.finish(record, bundle, run_dir)


def _die_with_parent() -> None:
    """In the cell's process, before it starts: SIGKILL it when the process that started it dies (a
    SIGTERM or SIGKILL sent to the run alone leaves no cell running)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_local(suite_file: Path, suite: Suite, todo: list[Cell], run_dir: Path, run_id: str) -> Iterator[dict]:
    for cell in todo:
        yield run_in_subprocess(suite_file, suite, cell, run_dir, run_id)
