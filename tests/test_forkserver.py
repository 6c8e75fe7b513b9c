"""Cells forked from a warm server (benchmarks.execution.forkserver): same records as spawned cells,
crashes still contained, a server that cannot serve falls back to spawning."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.execution import forkserver
from tests.conftest import ROOT, only_run_dir, plugin_env, read_records, run_suite

KILLER = '''
import os, signal
import numpy as np
from benchmarks.registry import register_method


@register_method("kill-server", tasks=("ctr",), family="reference")
class KillServer:
    def __init__(self, config, ctx):
        pass

    def fit(self, data):
        os.kill(os.getppid(), signal.SIGKILL)  # the process that forked this cell
        os._exit(0)

    def score(self, samples):
        return np.full(len(samples), 0.5)

    def parameter_counts(self):
        return None
'''


def test_forked_cells_give_the_records_of_spawned_ones(ci_records, tmp_path):
    methods = ("pop", "itemknn", "deepfm")
    forked = {r["cell"]: r for r in ci_records if r["method"] in methods}
    profiles = {r["method"]: r["host"]["process_start"] for r in forked.values()}
    assert {p["kind"] for p in profiles.values()} == {"forked"}
    assert profiles["deepfm"]["profile"] == "recbole" and profiles["pop"]["profile"] == "harness"
    assert all(r["timing"]["peak_memory_mb"] >= r["host"]["process_start"]["preloaded_rss_mb"] * 0.9
               for r in forked.values())  # the peak counts the inherited libraries, as a fresh process's does

    run_suite("--suite", "ci", "--methods", ",".join(methods), "--no-fork", out=tmp_path)
    spawned = {r["cell"]: r for r in read_records(only_run_dir(tmp_path))}
    assert spawned.keys() == forked.keys()
    for key, record in spawned.items():
        assert record["host"]["process_start"] == {"kind": "spawned"}
        assert record["metrics"] == forked[key]["metrics"], key
        assert record["isolation"]["mechanism"] == forked[key]["isolation"]["mechanism"]


def test_a_cell_that_kills_its_server_fails_alone_and_the_next_cell_gets_a_new_server(tmp_path):
    env = plugin_env(tmp_path, "killer_methods", KILLER, {"kill-server": "killer_methods:KillServer"})
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "kill-server,pop",
                           "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    recs = read_records(only_run_dir(out))
    killer = [r for r in recs if r["method"] == "kill-server"]
    assert [r["status"] for r in killer] == ["failed"] and killer[0]["error"]["type"] == "CellProcessDied"
    pops = [r for r in recs if r["method"] == "pop"]
    assert pops and all(r["status"] == "ok" and r["host"]["process_start"]["kind"] == "forked" for r in pops)


def test_a_server_whose_imports_leave_a_python_thread_refuses_to_serve(tmp_path, monkeypatch, capsys):
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(forkserver.PROFILES, "threaded", ("starts_a_thread",))
    assert forkserver.serve("threaded") == 1
    assert "Python threads" in capsys.readouterr().out


def test_a_profile_that_cannot_load_falls_back_to_spawning(tmp_path, capsys):
    launcher = forkserver.Launcher(tmp_path, fork=True)
    try:
        assert launcher._server("no-such-profile") is None
        assert launcher._server("no-such-profile") is None  # tried once, not at every cell
    finally:
        launcher.close()
    err = capsys.readouterr().err
    assert err.count("warning: fork server 'no-such-profile'") == 1 and "KeyError" in err
    assert "cells of this profile are spawned" in err


def test_profiles_follow_the_registering_module_and_cuda_spawns():
    assert forkserver.profile_for("methods.tallrec:TallRec") == "llm"
    assert forkserver.profile_for("baselines.recbole_adapter:SASRec") == "recbole"
    # no torch preloaded for a method that may not import it (itemknn, plugins)
    assert forkserver.profile_for("baselines.itemknn:ItemKNN") == "harness"
    assert forkserver.profile_for("methodsplugin.mod:X") == "harness"
    assert forkserver.forks_cells("cpu") and not forkserver.forks_cells("cuda:0")
