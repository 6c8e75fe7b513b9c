"""Hostile input and faults at the command line and in run folders: each test plants one and shows
the run refuses it with one line (exit 2, nothing created), or survives it without losing a record."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from benchmarks import records
from benchmarks.data import cache
from benchmarks.execution import run_folder
from benchmarks.run import main
from tests.conftest import ROOT, only_run_dir, plugin_env, read_records

BASE = {"name": "t", "version": 1, "description": "fault probe",
        "datasets": [{"name": "movielens-100k", "tiny": True, "protocols": ["ctr"]}],
        "methods": {"pop": {}}, "seeds": [1], "budget": {"eval_cap": 16, "valid_cap": 8, "latency_samples": 1,
                                                        "warmup": 1}}


def suite_file(tmp_path: Path, text: str | None = None, **changes) -> Path:
    raw = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if key.startswith("budget_"):
            raw["budget"][key[len("budget_"):]] = value
        else:
            raw[key] = value
    path = tmp_path / "suite.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    return path


def refused(capsys, argv: list[str], out: Path, fragment: str) -> str:
    code = main([*argv, "--out", str(out)] if "--resume" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in err, err
    assert not out.exists() or not any(out.iterdir()), "a refused run created a run folder"
    return err


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))

SUITE_CASES = [
    ({"budget_batch_size": 0}, "budget.batch_size"),
    ({"budget_cell_timeout_s": 0}, "budget.cell_timeout_s"),
    ({"budget_warmup": -1}, "budget.warmup"),
    ({"budget_latency_samples": -2}, "budget.latency_samples"),
    ({"budget_eval_cap": -1}, "budget.eval_cap"),
    ({"budget_eval_cap": 0}, "budget.eval_cap"),
    ({"seeds": [-1]}, "seeds"),
    ({"seeds": [2**32]}, "seeds"),
    ({"seeds": [1, 1]}, "duplicate seeds"),
    ({"seeds": []}, "seeds: empty"),
    ({"device": "tpu"}, "device"),
    ({"quant": "int8"}, "quant"),
    ({"name": "../escape"}, ".name"),
    ({"name": "/abs"}, ".name"),
    ({"methods": {"item-rate": {"config": {"shrinkage_typo": 1}}}}, "unknown config key"),
    ({"methods": {"item-rate": {"config": {"shrinkage": "__import__('os').system('id') or 1"}}}}, "shrinkage"),
]


@pytest.mark.parametrize("changes, fragment", SUITE_CASES, ids=[c[1] + str(i) for i, c in enumerate(SUITE_CASES)])
def test_a_suite_that_cannot_run_is_refused_before_any_cell(changes, fragment, tmp_path, capsys):
    refused(capsys, ["--suite", str(suite_file(tmp_path, **changes))], tmp_path / "out", fragment)


FILE_CASES = [
    ("a: [unclosed", "not valid YAML"),
    ("", "must be a mapping"),
    ("- a\n- b\n", "must be a mapping"),
    ("42\n", "must be a mapping"),
    (BOMB, "YAML nodes"),
]


@pytest.mark.parametrize("text, fragment", FILE_CASES, ids=["invalid", "empty", "list", "scalar", "bomb"])
def test_a_suite_file_that_is_no_suite_gets_one_line(text, fragment, tmp_path, capsys):
    refused(capsys, ["--suite", str(suite_file(tmp_path, text))], tmp_path / "out", fragment)


@pytest.mark.parametrize("flags, fragment", [
    (["--device", "banana"], "device"),
    (["--seeds", " "], "--seeds: empty"),
    (["--methods", ""], "--methods: empty"),
    (["--datasets", ""], "--datasets: empty"),
    (["--suite", "x" * 5000], "--suite"),
])
def test_command_line_mistakes_get_one_line(flags, fragment, tmp_path, capsys):
    argv = flags if "--suite" in flags else ["--suite", str(suite_file(tmp_path)), *flags]
    refused(capsys, argv, tmp_path / "out", fragment)


def test_a_folder_as_suite_and_unusable_out_folders_get_one_line(tmp_path, capsys):
    refused(capsys, ["--suite", str(tmp_path)], tmp_path / "out", "a folder")
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, fragment in ((afile, "cannot create run folders"), (Path("/proc/llmrec"), "cannot create run folders"),
                          (Path("/sys/llmrec"), "cannot create run folders")):
        code = main(["--suite", str(suite_file(tmp_path)), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_more_cells_than_the_threshold_need_yes(tmp_path, capsys):
    path = suite_file(tmp_path, seeds=list(range(1, 502)))
    refused(capsys, ["--suite", str(path)], tmp_path / "out", "--yes")
    assert main(["--suite", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "501 cells" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ cache


def test_clean_cache_deletes_only_a_folder_the_project_created(tmp_path, monkeypatch, capsys):
    foreign = tmp_path / "home-like"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    (foreign / "raw").mkdir()
    monkeypatch.setenv(cache.ENV_VAR, str(foreign))
    assert main(["--clean-cache"]) == 2
    assert "no .llmrec-bench-cache marker" in capsys.readouterr().err
    assert (foreign / "thesis.tex").exists() and (foreign / "raw").exists()

    ours = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(ours))
    root = cache.cache_root()
    (root / "protocols" / "p").mkdir(parents=True)
    (root / "notes.txt").write_text("not ours to delete")
    assert main(["--clean-cache"]) == 0
    assert not (root / "protocols").exists() and (root / "notes.txt").exists() and (root / cache.MARKER).exists()


def test_a_relative_cache_is_made_absolute_once_and_one_inside_the_repository_is_refused(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cache.ENV_VAR, "rel-cache")
    assert cache.cache_location() == tmp_path / "rel-cache"
    main(["--list"])
    assert os.environ[cache.ENV_VAR] == str(tmp_path / "rel-cache")
    monkeypatch.setenv(cache.ENV_VAR, str(ROOT / "results" / "cache"))
    assert main(["--clean-cache"]) == 2
    assert "inside the repository" in capsys.readouterr().err


def test_temporary_folders_of_a_killed_build_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".protocol.pid{dead.pid}.x1"
    stale.mkdir()
    mine = tmp_path / f".protocol.pid{os.getpid()}.x2"
    mine.mkdir()
    with cache.atomic_dir(tmp_path / "protocol") as build:
        (build / "meta.json").write_text("{}")
    assert not stale.exists() and mine.exists() and (tmp_path / "protocol" / "meta.json").exists()


# ------------------------------------------------------------------------------------- run folders


def test_run_folders_never_collide():
    assert len({run_folder.new_run_id("ci") for _ in range(50)}) == 50


@pytest.fixture(scope="module")
def pop_run(tmp_path_factory):
    """A finished run of item-rate (ctr, first) and pop (ctr, next_item) on the tiny subset."""
    out = tmp_path_factory.mktemp("pop-run")
    path = out / "suite.yaml"
    raw = {**BASE, "datasets": [{"name": "movielens-100k", "tiny": True, "protocols": ["ctr", "next_item"]}],
           "methods": {"item-rate": {}, "pop": {}}}
    path.write_text(yaml.safe_dump(raw))
    assert main(["--suite", str(path), "--out", str(out / "runs")]) == 0
    return only_run_dir(out / "runs")


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def test_a_second_process_cannot_use_a_locked_run_folder(pop_run, tmp_path, capsys):
    run_dir = copy_run(pop_run, tmp_path)
    code = (f"import time; from pathlib import Path; from benchmarks.execution import run_folder\n"
            f"with run_folder.locked(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert main(["--resume", str(run_dir)]) == 0  # the kernel dropped the dead holder's lock


@pytest.mark.parametrize("flag", [["--seeds", "2"], ["--methods", "random"], ["--suite", "ci"], ["--out", "/tmp"]])
def test_flags_that_change_a_run_are_refused_with_resume(pop_run, flag, capsys):
    assert main(["--resume", str(pop_run), *flag]) == 2
    assert "--resume takes the run's own suite" in capsys.readouterr().err


def _edit_records(run_dir: Path, edit) -> None:
    lines = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    lines = edit(lines)
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_resume_refuses_a_record_made_with_another_config(pop_run, tmp_path, capsys):
    run_dir = copy_run(pop_run, tmp_path)

    def older_config(lines):
        lines[0]["method_config"] = {"shrinkage": 12.0}
        lines[0]["method_config_hash"] = "0" * 64
        return lines

    _edit_records(run_dir, older_config)
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "item-rate's config changed since this run started: shrinkage 12.0 -> 10.0" in err
    assert main(["--resume", str(run_dir), "--allow-mixed"]) == 0


@pytest.mark.parametrize("edit, fragment", [
    (lambda lines: lines + [{**lines[0], "seed": 9, "cell": lines[0]["cell"].replace("seed=1", "seed=9")}],
     "foreign record"),
    (lambda lines: [{**lines[0], "run_id": "quick-20200101-000000"}] + lines[1:], "foreign record"),
    (lambda lines: [{**lines[0], "protocol_hash": "f" * 64}] + lines[1:], "protocol changed"),
])
def test_resume_refuses_foreign_and_hand_edited_records(pop_run, tmp_path, capsys, edit, fragment):
    run_dir = copy_run(pop_run, tmp_path)
    _edit_records(run_dir, edit)
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("target, content, fragment", [
    ("suite.json", "{not json", "suite.json: corrupt"),
    ("suite.json", "[]", "suite.json: corrupt"),
    ("records.jsonl", "garbage line\n", "corrupt record"),
])
def test_resume_of_a_corrupt_run_folder_gets_one_line(pop_run, tmp_path, capsys, target, content, fragment):
    run_dir = copy_run(pop_run, tmp_path)
    (run_dir / target).write_text(content)
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_a_clean_tree_at_another_commit():
    saved = {"run_id": "r", "source": "s", "suite_hash": "h", "code": {"commit": "a" * 40, "dirty": False}}
    later = {"git_commit": "b" * 40, "git_dirty": False}
    with pytest.raises(run_folder.RunFolderError, match="the code changed since this run started"):
        run_folder.check_resume(saved, "h", set(), [], {}, {}, later, allow_mixed=False)
    run_folder.check_resume(saved, "h", set(), [], {}, {}, later, allow_mixed=True)
    run_folder.check_resume(saved, "h", set(), [], {}, {}, {**later, "git_dirty": True}, allow_mixed=False)


def test_a_run_folder_from_before_a_schema_addition_resumes(pop_run, tmp_path, capsys):
    """A suite.json written before a key joined the schema (here budget.gpu_hours) is not an edit."""
    from benchmarks.data.cards import canonical_hash

    run_dir = copy_run(pop_run, tmp_path)
    saved = json.loads((run_dir / "suite.json").read_text())
    del saved["suite"]["budget"]["gpu_hours"]
    saved["suite_hash"] = canonical_hash(saved["suite"])  # what the older version wrote
    (run_dir / "suite.json").write_text(json.dumps(saved))
    assert main(["--resume", str(run_dir)]) == 0, capsys.readouterr().err


def test_an_edited_suite_json_is_refused(pop_run, tmp_path, capsys):
    run_dir = copy_run(pop_run, tmp_path)
    saved = json.loads((run_dir / "suite.json").read_text())
    saved["suite"]["budget"]["eval_cap"] = 17
    (run_dir / "suite.json").write_text(json.dumps(saved))
    assert main(["--resume", str(run_dir)]) == 2
    assert "was edited after the run started" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ short writes


def test_short_writes_are_retried_and_a_full_disk_keeps_no_partial_record(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))  # 7 bytes per call
    records.append(path, {"cell": "a", "status": "ok"})
    assert records.read(path) == [{"cell": "a", "status": "ok"}]

    calls = iter([7, 0])

    def full_disk(fd, data):
        n = next(calls, 0)
        if n == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:n]))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        records.append(path, {"cell": "b", "status": "ok"})
    assert path.read_bytes().endswith(b"\n") and records.read(path) == [{"cell": "a", "status": "ok"}]


def test_a_full_disk_during_a_run_says_how_many_records_were_kept(tmp_path, monkeypatch, capsys):
    real_append = records.append
    calls = []

    def append(path, record):
        calls.append(record["cell"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, record)

    monkeypatch.setattr(records, "append", append)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**BASE, "datasets": [{"name": "movielens-100k", "tiny": True,
                                                          "protocols": ["ctr", "next_item"]}]}))
    assert main(["--suite", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "1 finished records kept" in err and "--resume" in err


# ------------------------------------------------------------------------------------- interrupts

SLEEPER = '''
import os
import time
import numpy as np
from benchmarks.registry import register_method

@register_method("sleeper", tasks=("ctr",), family="reference", trains=False)
class Sleeper:
    def __init__(self, config, ctx):
        pass
    def fit(self, data):
        print("fitting in", os.getpid(), flush=True)
        time.sleep(120)
    def score(self, samples):
        return np.full(len(samples), 0.5)
    def parameter_counts(self):
        return None
'''


def _started_by(run: subprocess.Popen) -> list[psutil.Process]:
    """Every process the run started and that still runs (its fork servers and the cell they forked)."""
    return [p for p in psutil.Process(run.pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def _cell_pid(run_dir: Path) -> str:
    (log,) = run_dir.glob("logs/*sleeper*.log")
    return log.read_text().split("fitting in", 1)[1].split()[0]


def _still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _start_sleeping_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    env = plugin_env(tmp_path, "llmrec_sleeper", SLEEPER, {"sleeper": "llmrec_sleeper:Sleeper"})
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "pop,sleeper",
                             "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list(out.glob("*/logs/*sleeper*.log"))
        if logs and "fitting" in logs[0].read_text():
            return proc, only_run_dir(out)
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the sleeping cell never started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_stops_the_cell_keeps_the_records_and_says_how_to_resume(tmp_path, sig):
    proc, run_dir = _start_sleeping_run(tmp_path)
    started = _started_by(proc)
    assert started
    proc.send_signal(sig)  # to the run alone, not its process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and f"--resume {run_dir}" in lines[0] and "Traceback" not in err, err
    assert [r["method"] for r in read_records(run_dir)] == ["pop"]
    time.sleep(1)
    assert not _still_running(started)


def test_a_killed_run_takes_its_cell_with_it(tmp_path):
    proc, run_dir = _start_sleeping_run(tmp_path)
    started = _started_by(proc)
    assert any(p.pid == int(_cell_pid(run_dir)) for p in started)  # the sleeping cell's process among them
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _still_running(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _still_running(started)
