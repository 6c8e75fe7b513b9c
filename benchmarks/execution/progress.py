"""What a running cell is doing, for the run's console: its phase and how far it got (training steps,
scoring batches), not only one bar per cell.

The cell's process writes one small JSON file beside its record (``work/<cell>.progress``, replaced
atomically, at most every :data:`MIN_INTERVAL_S` within a phase); the local executor reads it while it
waits and shows it after the cell's name. The harness reports its phases; a training loop reports
its steps. Nothing is written when no file was set (a cell run in-process, a conformance test).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

MIN_INTERVAL_S = 0.5
_state: dict = {"path": None, "phase": None, "written": 0.0}


def write_to(path: Path | None) -> None:
    """Where :func:`report` writes from now on (None: nowhere)."""
    _state.update(path=path, phase=None, written=0.0)


def report(phase: str, done: int | None = None, total: int | None = None) -> None:
    """This cell is in ``phase``, ``done`` of ``total`` (steps, batches) when given."""
    path = _state["path"]
    now = time.monotonic()
    if path is None or (phase == _state["phase"] and done != total and now - _state["written"] < MIN_INTERVAL_S):
        return
    _state.update(phase=phase, written=now)
    tmp = Path(f"{path}.tmp")
    try:
        tmp.write_text(json.dumps({"phase": phase, "done": done, "total": total}))
        os.replace(tmp, path)
    except OSError:  # the console's convenience: never a reason for a cell to fail
        pass


def read(path: Path) -> str:
    """The last report in ``path`` as text ("fit: step 3/8"), or "" when there is none yet."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    done, total = state.get("done"), state.get("total")
    return state.get("phase", "") + (f" {done}/{total}" if done is not None and total else "")
