"""Executors run cells and hand back records; they never decide what a cell is.

``local``: each cell in its own Python process, one after another (:mod:`benchmarks.execution.local`).
``ray``: one Ray task per cell on a Ray cluster (:mod:`benchmarks.execution.ray_executor`, which imports
ray only when chosen); each task runs its cell the same way, in its own process.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from benchmarks.execution.local import ExecutorError, run_local
from benchmarks.suite import Cell, Suite

__all__ = ["EXECUTORS", "ExecutorError"]


def run_ray(suite_file: Path, suite: Suite, todo: list[Cell], run_dir: Path, run_id: str, **options) -> Iterable[dict]:
    """``--executor ray`` (options: ``address``); see :mod:`benchmarks.execution.ray_executor`."""
    from benchmarks.execution.ray_executor import run_on_ray

    return run_on_ray(suite_file, suite, todo, run_dir, run_id, **options)


EXECUTORS: dict[str, Callable[..., Iterable[dict]]] = {"local": run_local, "ray": run_ray}
