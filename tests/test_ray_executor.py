"""``--executor ray`` on a real Ray cluster: a head on localhost with two CPU workers, started here.

The ci suite, restricted to its fast methods, runs once with the local executor and once on Ray; the
records must agree on everything but timing, land in the same run-folder layout, and resume the
same way. The head runs as ``ray start --head --block`` in its own process group, which the fixture
ends (by that group's id) when the module is done.
"""
from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from benchmarks import registry
from benchmarks import suite as suites
from benchmarks.execution.ray_executor import INSTALL_HINT, gpus_per_cell
from benchmarks.suite import SUITES_DIR
from tests.conftest import ROOT, only_run_dir, read_records, run_suite

VOLATILE = {"timing", "host", "started_at", "finished_at", "run_id"}


def fast_methods() -> str:
    """The ci suite's reference methods plus the item-kNN example: seconds per cell."""
    known = registry.discover()
    listed = yaml.safe_load((SUITES_DIR / "ci.yaml").read_text())["methods"]
    names = [m for m in listed if known[m].family == "reference"]
    return ",".join(dict.fromkeys([*names, "itemknn"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """Address of a fresh Ray head (2 CPUs, no GPU, no dashboard) on localhost."""
    try:
        importlib.import_module("ray")
    except ImportError as err:
        pytest.fail(f"ray does not import ({err}); install it: {INSTALL_HINT}")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus", "2",
         "--num-gpus", "0", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (temp / "head.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{(temp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(head: subprocess.Popen) -> None:
    """End the head and everything it started (its process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            head.poll()
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def comparable(run_dir: Path) -> dict[str, dict]:
    return {r["cell"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in read_records(run_dir)}


@pytest.mark.slow
def test_ray_reproduces_the_local_run_and_resumes_alike(ray_head, tmp_path):
    methods = fast_methods()
    run_suite("--suite", "ci", "--methods", methods, out=tmp_path / "local")
    proc = run_suite("--suite", "ci", "--methods", methods, "--executor", "ray", "--ray-address", ray_head,
                     out=tmp_path / "ray")
    assert "ray: 2 CPUs, 0 GPUs, 1 node(s)" in proc.stdout
    local_dir, ray_dir = only_run_dir(tmp_path / "local"), only_run_dir(tmp_path / "ray")
    local, on_ray = comparable(local_dir), comparable(ray_dir)
    ci = suites.load_suite("ci")
    assert len(local) == sum(c.method in methods.split(",") for c in suites.cells(ci))  # item-rate, majority: ctr only
    assert all(r["status"] == "ok" for r in on_ray.values())
    assert on_ray == local  # metrics, hashes, configs: everything but timing
    for sub in ("scores", "logs"):  # the local run's logs also hold its fork servers' (Ray tasks spawn)
        local_files = [p.name for p in (local_dir / sub).iterdir() if not p.name.startswith("forkserver-")]
        assert sorted(p.name for p in (ray_dir / sub).iterdir()) == sorted(local_files)
    assert (ray_dir / "accuracy.md").exists() and not (ray_dir / "work").exists()

    # resume: a cell whose record was lost is the only one rerun, on Ray again
    lines = (ray_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (ray_dir / "records.jsonl").write_text("".join(lines[:-1]))
    again = run_suite("--resume", str(ray_dir), "--executor", "ray", "--ray-address", ray_head, out=None)
    assert f"{len(lines)} cells, {len(lines) - 1} already finished" in again.stdout
    assert comparable(ray_dir) == local


def test_gpu_requests():
    assert gpus_per_cell("llm", "cuda") == 1 and gpus_per_cell("conventional", "cuda:1") == 1
    assert gpus_per_cell("reference", "cuda") == 0
    assert gpus_per_cell("llm", "cpu") == 0 and gpus_per_cell("conventional", "cpu") == 0


@pytest.mark.parametrize("args, fragment", [
    (["--ray-address", "127.0.0.1:1"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}"], "cannot reach the Ray cluster"),
])
def test_ray_mistakes_exit_2_with_one_line(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "pop", *args,
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
