"""The local executor: each cell in its own Python process, one after another; also what a Ray task
runs on its node.

On CPU the process is forked from a warm server that has the cell's heavy imports loaded
(:mod:`benchmarks.execution.forkserver`); on CUDA, with ``--no-fork``, or when a server cannot start,
it is spawned as ``python -m benchmarks.execution.cell``. Either way it is a process of its own: a
process per cell frees all memory (GPU included) between cells, makes the process peak RSS the
cell's own peak, and contains crashes: a cell that dies (segfault, out-of-memory kill) or outlives
``budget.cell_timeout_s`` is recorded as failed, with the peak RSS the parent saw, and the suite goes
on. The cell's process dies with this one (``PR_SET_PDEATHSIG``). Its record is finished here, where
the test labels are read (:func:`benchmarks.execution.evaluation.finish`).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil

from benchmarks import records, registry
from benchmarks.execution import evaluation, progress
from benchmarks.execution.cell import bundle_path, now, progress_path
from benchmarks.execution.forkserver import Launcher, forks_cells, profile_for
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


def run_in_subprocess(suite_file: Path, suite: Suite, cell: Cell, run_dir: Path, run_id: str,
                      launcher: Launcher | None = None, on_progress: Callable[[str], None] | None = None) -> dict:
    """Run one cell in a process of its own (forked by ``launcher``'s servers, else spawned); always
    returns a record (ok or failed). ``on_progress`` gets the cell's phase text whenever it changes
    (:mod:`benchmarks.execution.progress`)."""
    out = run_dir / "work" / f"{records.cell_file_stem(cell.key)}.json"
    out.unlink(missing_ok=True)
    log_path = run_dir / "logs" / f"{records.cell_file_stem(cell.key)}.log"
    argv = [str(suite_file), json.dumps(asdict(cell)), str(run_dir), str(out)]
    proc = (launcher or Launcher(run_dir / "logs", fork=False)).start(
        argv, log_path, profile_for(registry.get_entry(cell.method).target))
    watched = psutil.Process(proc.pid)
    peak, start, shown = 0.0, time.monotonic(), ""
    status_file = progress_path(out)
    try:
        while proc.poll() is None:
            if on_progress is not None and (text := progress.read(status_file)) != shown:
                shown = text
                on_progress(text)
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
    if proc.returncode != 0 or not out.exists():
        tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
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
    status_file.unlink(missing_ok=True)
    return evaluation.finish(record, bundle, run_dir)


def run_local(suite_file: Path, suite: Suite, todo: list[Cell], run_dir: Path, run_id: str,
              fork: bool = True, on_progress: Callable[[Cell, str], None] | None = None) -> Iterator[dict]:
    """``--executor local``; ``fork=False`` (``--no-fork``) spawns every cell's process afresh;
    ``on_progress(cell, text)`` is told what the running cell is doing."""
    launcher = Launcher(run_dir / "logs", fork=fork and forks_cells(suite.device))
    try:
        for cell in todo:
            report = None if on_progress is None else (lambda text, cell=cell: on_progress(cell, text))
            yield run_in_subprocess(suite_file, suite, cell, run_dir, run_id, launcher, report)
    finally:
        launcher.close()
