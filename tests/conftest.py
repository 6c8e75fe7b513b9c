"""Shared fixtures. The ``ci`` suite runs ONCE per test session (``ci_run``); many tests read it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_suite(*args: str, out: Path | None, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``python -m benchmarks.run ARGS --out OUT`` in a fresh process, from the repository root (no
    ``--out`` when ``out`` is None: a ``--resume`` takes the run's own folder)."""
    flags = ["--out", str(out)] if out is not None else []
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"benchmarks.run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def only_run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The ci suite, run once: (run folder, the finished process with its stdout)."""
    out = tmp_path_factory.mktemp("ci-run")
    proc = run_suite("--suite", "ci", out=out)
    return only_run_dir(out), proc


@pytest.fixture(scope="session")
def ci_records(ci_run) -> list[dict]:
    return read_records(ci_run[0])


def plugin_env(tmp_path: Path, module_name: str, source: str, entry_names: dict[str, str]) -> dict:
    """Environment in which ``source`` is an installed plugin package exposing methods through the
    ``llmrec_bench.methods`` entry-point group (a module plus a dist-info folder on PYTHONPATH)."""
    import os

    site = tmp_path / "plugin-site"
    site.mkdir(exist_ok=True)
    (site / f"{module_name}.py").write_text(source)
    dist = site / f"{module_name}-0.0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(
        "[llmrec_bench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_names.items()))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
