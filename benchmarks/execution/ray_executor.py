"""``ray``: one Ray task per cell, on an existing Ray cluster or on a private one on this machine.

A task runs its cell exactly as the local executor does (:func:`benchmarks.execution.local.run_in_subprocess`:
a child process, the suite's ``cell_timeout_s``, crashes recorded as failed cells), but in a scratch
run folder on the worker's node. It hands back the record, the per-sample scores and the cell's log;
the driver writes them into the run folder and yields the record, so records, resume and reports are
the local executor's. Records are appended in the order cells finish. Nodes need no shared
filesystem, but every node needs the project (same commit) and its dependencies at the same path, and
prepares its own data cache.

Resources: each cell asks Ray for one CPU. When the suite runs on CUDA, an ``llm`` or
``conventional`` cell also asks for one GPU; Ray picks the GPU and sets ``CUDA_VISIBLE_DEVICES`` for
the task, which the cell's process inherits, so its ``cuda`` is that GPU. ``reference`` cells never
ask for a GPU. Scheduling, placement and retries of lost workers are Ray's; this module keeps no
queue of its own.

Ray is imported only when this executor is chosen; ray 2.6.3 (RecBole's pin) needs setuptools<82
for ``pkg_resources``.
"""
from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import records, registry
from benchmarks.execution.local import ExecutorError, _failed, run_in_subprocess
from benchmarks.registry import ROOT
from benchmarks.suite import Cell, Suite

INSTALL_HINT = 'pip install "ray>=2.6,<=2.6.3" "setuptools<82"'


def gpus_per_cell(family: str, device: str) -> int:
    """GPUs a cell of ``family`` asks Ray for when the suite runs on ``device``."""
    return 1 if device.startswith("cuda") and family != "reference" else 0


def run_cell_on_worker(suite_text: str, suite: Suite, cell: Cell, run_id: str) -> tuple[dict, bytes | None, bytes]:
    """The body of one Ray task: (record, scores ``.npz`` bytes or None, log bytes)."""
    stem = records.cell_file_stem(cell.key)
    with tempfile.TemporaryDirectory(prefix="llmrec-cell-") as scratch:
        run_dir = Path(scratch)
        for sub in ("work", "logs"):
            (run_dir / sub).mkdir()
        suite_file = run_dir / "suite.json"
        suite_file.write_text(suite_text)
        record = run_in_subprocess(suite_file, suite, cell, run_dir, run_id)
        scores = run_dir / "scores" / f"{stem}.npz"
        log = run_dir / "logs" / f"{stem}.log"
        return (record, scores.read_bytes() if scores.exists() else None,
                log.read_bytes() if log.exists() else b"")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "local", "ray://...": left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as err:
        raise ExecutorError(f"--executor ray: cannot reach the Ray cluster at '{address}': {err}") from None


def _connect(address: str | None):
    """``ray`` connected to ``address`` (or $RAY_ADDRESS); with neither, a private local instance."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    _check_reachable(address)
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(f"--executor ray: ray does not import ({err}); install it: {INSTALL_HINT}") from None
    # Workers import the project from the driver's paths (where it is not installed on the node).
    paths = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    options = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": paths}}, log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ExecutorError(f"--executor ray: cannot reach the Ray cluster at '{address}': {err}") from None
    return ray


def run_on_ray(suite_file: Path, suite: Suite, todo: list[Cell], run_dir: Path, run_id: str,
               address: str | None = None) -> Iterator[dict]:
    """Submit every cell of ``todo`` as a Ray task; yield each record as its task finishes."""
    if not todo:
        return
    ray = _connect(address)
    running: dict = {}
    try:
        resources = ray.cluster_resources()
        print(f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs, "
              f"{len(ray.nodes())} node(s)", flush=True)
        if suite.device.startswith("cuda") and not resources.get("GPU"):
            raise ExecutorError(f"suite device is '{suite.device}' but the Ray cluster has no GPU")
        families = {name: entry.family for name, entry in registry.discover().items()}
        task = ray.remote(run_cell_on_worker)
        suite_text = suite_file.read_text()
        running.update({
            task.options(num_cpus=1, num_gpus=gpus_per_cell(families[cell.method], suite.device))
                .remote(suite_text, suite, cell, run_id): cell
            for cell in todo
        })
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            cell = running.pop(ref)
            yield _collect(ray, ref, suite, cell, run_dir, run_id)
    finally:
        for ref in running:  # left unfinished: the driver stopped early
            ray.cancel(ref)
        ray.shutdown()


def _collect(ray, ref, suite: Suite, cell: Cell, run_dir: Path, run_id: str) -> dict:
    """The task's record, with its scores and log written into the run folder."""
    stem = records.cell_file_stem(cell.key)
    try:
        record, scores, log = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker or its node was lost (after Ray's retries)
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return _failed(suite, cell, run_id, type(err).__name__, first, None, str(err)[-4000:])
    _write(run_dir / "logs" / f"{stem}.log", log)
    if scores is not None:
        _write(run_dir / "scores" / f"{stem}.npz", scores)
    return record
