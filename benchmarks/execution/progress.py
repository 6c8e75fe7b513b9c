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


class EstimatedEta:
    """The run's time left, from the cost estimate rather than an average over unlike cells: the
    estimates of the cells not yet finished (a cell without one counts as the median of the others),
    times how the finished cells' wall seconds compared with their estimates so far (sums, so the
    long cells weigh most), less the running cell's elapsed time. A machine faster or slower than
    the records the estimate was calibrated on shows in the factor after the first long cell."""

    def __init__(self, estimates: dict[str, float | None]):
        known = sorted(v for v in estimates.values() if v is not None)
        fill = known[len(known) // 2] if known else 0.0
        self.pending = {key: (fill if value is None else value) for key, value in estimates.items()}
        self.estimated_done = self.took_done = 0.0

    def finished(self, key: str, took: float | None) -> None:
        guess = self.pending.pop(key, None)
        if guess is not None and took is not None:
            self.estimated_done += guess
            self.took_done += took

    @property
    def factor(self) -> float:
        """Wall seconds per estimated second over the finished cells (1 before any finished)."""
        return self.took_done / self.estimated_done if self.estimated_done > 0 and self.took_done > 0 else 1.0

    def remaining_s(self, running_for: float = 0.0) -> float:
        return max(0.0, sum(self.pending.values()) * self.factor - running_for)

    def text(self, running_for: float = 0.0) -> str:
        seconds = self.remaining_s(running_for)
        hours, minutes = divmod(round(seconds / 60), 60)
        left = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
        return f"about {left} left (estimate x {self.factor:.2f} so far)"
