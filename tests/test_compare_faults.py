"""Hostile input and faults for ``benchmarks.compare`` and ``benchmarks.reference``: every planted fault
ends in one line on stderr naming the file and exit 2; tolerances must be finite and >= 0; ``reference
update`` pins only a complete run of the reference's own suite (or anything, with ``--force``)."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare, reference, registry
from benchmarks import suite as suites
from tests.conftest import ROOT
from tests.test_compare import CTR_CELL, _base, _record, _write

CI_CELLS = [cell.key for cell in suites.cells(suites.load_suite("ci"))]


def _ci_records() -> list[dict]:
    """One ok record for every cell of the shipped ci suite, with its method's family."""
    methods = registry.discover()
    out = []
    for key in CI_CELLS:
        task, method = key.split("/")[1:3]
        values = {"auc": 0.7, "logloss": 0.6, "accuracy": 0.65} if task == "ctr" else {"hr@1": 0.2, "valid_ratio": 1.0}
        out.append(_record(key, values, family=methods[method].family))
    return out


def _run_folder(folder: Path, recs: list[dict], suite: str = "ci") -> Path:
    """A run folder as benchmarks.run leaves it: records, suite.json, env.json."""
    _write(folder, recs)
    (folder / "suite.json").write_text(json.dumps({"suite": {"name": suite}, "source": "x", "run_id": folder.name}))
    (folder / "env.json").write_text(json.dumps({"git_commit": "abc123", "cpu": "test cpu"}))
    return folder


def _error_line(capsys) -> str:
    """The one line on stderr (nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1, captured
    assert lines[0].startswith("error: ")
    return lines[0]


# ---- malformed inputs: (id, fault planted in run B / the reference, the file it must name, the problem) ----

def _lines(*lines: bytes):
    def plant(run: Path, ref: Path) -> None:
        (run / RECORDS).write_bytes(b"".join(line + b"\n" for line in lines))
    return plant


def _good_line(**changes) -> bytes:
    record = _base()[0]
    record.update(changes)
    return json.dumps(record).encode()


def _without(key: str) -> bytes:
    record = _base()[0]
    del record[key]
    return json.dumps(record).encode()


def _remove(name: str):
    return lambda run, ref: (run / name).unlink()


def _text(name: str, text: str):
    return lambda run, ref: (run / name).write_text(text)


def _reference_text(text: str):
    return lambda run, ref: ref.write_text(text)


def _reference_with(**changes):
    def plant(run: Path, ref: Path) -> None:
        pinned = json.loads(ref.read_text())
        pinned.update(changes)
        ref.write_text(json.dumps(pinned))
    return plant


RECORDS = "records.jsonl"
RUN_FAULTS = [  # planted in the run folder; every command reads it
    ("missing run folder", lambda run, ref: shutil.rmtree(run), "", "no such run folder"),
    ("no records.jsonl", _remove(RECORDS), "", "not a run folder (no records.jsonl)"),
    ("garbage line", _lines(_good_line(), b"{not json", _good_line()), RECORDS + ":2", "corrupt record"),
    ("not UTF-8", _lines(_good_line(), b"{\"cell\": \"\xff\"}"), RECORDS, "not UTF-8 text"),
    ("JSON but not an object", _lines(b"[1, 2]"), RECORDS + ": record 1", "expected a JSON object, got list"),
    ("record without cell", _lines(_without("cell")), RECORDS + ": record 1", "missing key 'cell'"),
    ("record without metrics", _lines(_without("metrics")), RECORDS + ": record 1", "missing key 'metrics'"),
    ("metrics not a mapping", _lines(_good_line(metrics=[0.5])), RECORDS, "'metrics' has the wrong type (list)"),
    ("metric not a number", _lines(_good_line(metrics={"auc": "high"})), RECORDS, "metric 'auc' = 'high'"),
    ("unknown metric", _lines(_good_line(metrics={"nope": 1.0})), RECORDS, "unknown metric 'nope'"),
    ("seed not an int", _lines(_good_line(seed="1")), RECORDS, "'seed' has the wrong type (str)"),
    ("unknown task", _lines(_good_line(task="rank")), RECORDS, "unknown task 'rank'"),
    ("error not a mapping", _lines(_good_line(status="failed", error="boom")), RECORDS, "'error' is not a mapping"),
]
COMPARE_FAULTS = [
    ("timing not a number", _lines(_good_line(timing={"latency_p50_ms": "fast"})), RECORDS,
     "timing latency_p50_ms not a number"),
]
REFERENCE_FAULTS = [  # planted in the reference file; check and update read it
    ("reference not JSON", _reference_text("{garbage"), "REF", "not valid JSON"),
    ("reference not an object", _reference_text("[]"), "REF", "expected a JSON object, got list"),
    ("reference without cells", _reference_with(cells=None), "REF", "'cells' missing or of the wrong type"),
    ("reference tolerance nan", _reference_with(tolerance_abs={"reference": math.nan}), "REF",
     "tolerance_abs.reference = nan"),
    ("reference cell without metrics", _reference_with(cells={CTR_CELL: {"family": "reference", "protocol_hash": "h"}}),
     "REF", "needs protocol_hash and metrics"),
    ("reference family without tolerance", _reference_with(tolerance_abs={"llm": 0.06}), "REF",
     "family 'reference' has no tolerance_abs"),
    ("reference family not a string", _reference_with(cells={CTR_CELL: {"family": [], "protocol_hash": "h",
                                                                        "metrics": {}}}), "REF",
     "family [] has no tolerance_abs"),
]
CHECK_FAULTS = [("reference missing", lambda run, ref: ref.unlink(), "REF", "no such file")]
UPDATE_FAULTS = [
    ("suite.json corrupt", _text("suite.json", "{\"suite\": "), "suite.json", "not valid JSON"),
    ("suite.json without a name", _text("suite.json", "{\"suite\": [\"ci\"]}"), "suite.json", "no suite name"),
    ("env.json missing", _remove("env.json"), "env.json", "no such file"),
]


def _case(fault: tuple, command: str) -> pytest.param:
    return pytest.param(command, *fault[1:], id=f"{command}: {fault[0]}")


CASES = ([_case(f, "compare") for f in RUN_FAULTS + COMPARE_FAULTS]
         + [_case(f, "check") for f in RUN_FAULTS + REFERENCE_FAULTS + CHECK_FAULTS]
         + [_case(f, "update") for f in RUN_FAULTS + REFERENCE_FAULTS + UPDATE_FAULTS])


@pytest.mark.parametrize("command, plant, names, problem", CASES)
def test_malformed_input_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, command, plant, names, problem):
    good = _run_folder(tmp_path / "a", _base())
    run = _run_folder(tmp_path / "b", _base())
    ref = tmp_path / "ref" / "ci.json"
    ref.parent.mkdir()
    ref.write_text(json.dumps({"suite": "ci", "tolerance_abs": reference.TOLERANCE, "cells": {
        CTR_CELL: {"family": "reference", "protocol_hash": "hash-ctr", "metrics": {"auc": 0.7}}}}))
    plant(run, ref)
    before = ref.read_bytes() if ref.exists() else None
    argv = {"compare": [str(good), str(run)], "check": ["check", str(run), "--reference", str(ref)],
            "update": ["update", str(run), "--reference", str(ref)]}[command]
    main = compare.main if command == "compare" else reference.main
    assert main(argv) == 2
    line = _error_line(capsys)
    named = str(ref) if names == "REF" else f"{run}/{names}" if names else str(run)
    assert f"error: {named}" in line and problem in line
    assert (ref.read_bytes() if ref.exists() else None) == before   # a refused update writes nothing


def test_python_m_prints_one_line_not_a_traceback(tmp_path):
    good = _run_folder(tmp_path / "a", _base())
    bad = _write(tmp_path / "b", [])
    (bad / RECORDS).write_bytes(_without("metrics") + b"\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare", str(good), str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {bad / RECORDS}: record 1: missing key 'metrics'"]


# ---- tolerance flags ----

@pytest.mark.parametrize("flag", ["--metric-tol", "--latency-tol"])
@pytest.mark.parametrize("value", ["nan", "-1", "-0.001", "inf", "-inf", "1e400", "tight"])
def test_tolerance_flags_must_be_finite_and_non_negative(tmp_path, capsys, flag, value):
    assert compare.main([str(_write(tmp_path / "a", _base())), str(_write(tmp_path / "b", _base())),
                         f"{flag}={value}"]) == 2
    assert _error_line(capsys) == f"error: argument {flag}: '{value}': expected a finite number >= 0 (see --help)"


def test_nan_tolerance_cannot_pass_a_regression(tmp_path, capsys):
    worse = _base()
    worse[0]["metrics"]["auc"] = 0.4      # a 0.3 AUC regression
    a, b = _write(tmp_path / "a", _base()), _write(tmp_path / "b", worse)
    assert compare.main([str(a), str(b), "--metric-tol", "nan"]) == 2
    assert "OK" not in capsys.readouterr().out
    assert compare.main([str(a), str(b), "--metric-tol", "0"]) == 1


def test_negative_tolerance_cannot_flag_identical_runs(tmp_path, capsys):
    a, b = _write(tmp_path / "a", _base()), _write(tmp_path / "b", _base())
    assert compare.main([str(a), str(b), "--metric-tol", "-1"]) == 2
    assert "REGRESSION" not in capsys.readouterr().out
    assert compare.main([str(a), str(b), "--metric-tol", "0"]) == 0


# ---- reference update ----

@pytest.fixture
def pinned(tmp_path, capsys) -> Path:
    """A reference ci.json pinned from a complete fabricated ci run."""
    ref = tmp_path / "reference" / "ci.json"
    assert reference.main(["update", str(_run_folder(tmp_path / "complete", _ci_records())), "--reference",
                           str(ref)]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0].strip() for line in out.splitlines()[1:-1]] == [f"+ {k}" for k in sorted(CI_CELLS)]
    assert set(json.loads(ref.read_text())["cells"]) == set(CI_CELLS)
    return ref


def _refused(tmp_path, capsys, ref: Path, recs: list[dict], suite: str = "ci") -> str:
    before = ref.read_bytes()
    run = _run_folder(tmp_path / "candidate", recs, suite)
    assert reference.main(["update", str(run), "--reference", str(ref)]) == 2
    assert ref.read_bytes() == before
    line = _error_line(capsys)
    assert line.startswith(f"error: {run}: not a complete run of suite 'ci': ")
    assert line.endswith("nothing written (--force pins it anyway)")
    return line


def test_update_refuses_a_partial_run_unless_forced(tmp_path, capsys, pinned):
    recs = _ci_records()[:7]
    line = _refused(tmp_path, capsys, pinned, recs)
    assert f"missing ({len(CI_CELLS) - 7}): " + ", ".join(repr(k) for k in CI_CELLS[7:]) in line
    run = tmp_path / "candidate"
    assert reference.main(["update", str(run), "--reference", str(pinned), "--force"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.strip() for line in out if line.startswith("  - ")) == [f"- {k}" for k in sorted(CI_CELLS[7:])]
    assert set(json.loads(pinned.read_text())["cells"]) == set(CI_CELLS[:7])


def test_update_refuses_a_run_of_another_suite_unless_forced(tmp_path, capsys, pinned):
    line = _refused(tmp_path, capsys, pinned, _ci_records(), suite="quick")
    assert "it ran suite 'quick', not 'ci'" in line and "missing" not in line
    assert reference.main(["update", str(tmp_path / "candidate"), "--reference", str(pinned), "--force"]) == 0
    assert "  suite: ci -> quick" in capsys.readouterr().out.splitlines()
    assert json.loads(pinned.read_text())["suite"] == "quick"


def test_update_refuses_failed_and_extra_cells(tmp_path, capsys, pinned):
    recs = _ci_records()
    recs[0].update(status="failed", metrics={}, error={"type": "RuntimeError", "message": "boom"})
    recs.append(_record(CTR_CELL.replace("seed=1", "seed=2"), {"auc": 0.7}))
    line = _refused(tmp_path, capsys, pinned, recs)
    assert f"failed (1): '{CI_CELLS[0]}'" in line and f"not in the suite (1): '{recs[-1]['cell']}'" in line


def test_update_prints_the_diff_it_writes(tmp_path, capsys, pinned):
    recs = _ci_records()
    recs[0]["metrics"]["auc"] = 0.75
    recs[0]["protocol_hash"] = "new-hash-value-xyz"
    recs[-1]["metrics"]["hr@1"] = math.nan
    run = _run_folder(tmp_path / "candidate", recs)
    assert reference.main(["update", str(run), "--reference", str(pinned)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{pinned} <- {run}:",
                   f"  ~ {CI_CELLS[0]}: protocol_hash hash-ctr -> new-hash-val; auc 0.7 -> 0.75",
                   f"  ~ {CI_CELLS[-1]}: hr@1 0.2 -> nan",
                   f"wrote {pinned}"]
    assert json.loads(pinned.read_text())["cells"][CI_CELLS[0]]["metrics"]["auc"] == 0.75
    assert reference.main(["update", str(run), "--reference", str(pinned)]) == 0   # NaN pinned is no change
    assert capsys.readouterr().out.splitlines()[1] == "  no change to the cells"
