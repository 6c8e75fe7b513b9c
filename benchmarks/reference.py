"""The CI regression reference: pinned metrics of the ``ci`` suite and the check against them.

    python -m benchmarks.run --suite ci                       # produce a run folder
    python -m benchmarks.reference check RUN_DIR              # exit 1 if any metric moved too far
    python -m benchmarks.reference update RUN_DIR             # rewrite results/reference/ci.json from it

``update`` pins only a complete run of the reference's own suite (its ``suite`` field; for a new file,
the file's name: ``ci.json`` is the ``ci`` suite): every cell of that suite file present with status ok,
no other cell, and the run's suite name the reference's. ``--force`` pins anything else (its ok cells).
Either way it prints what it changes (cells added, removed, changed) before writing.

Tolerances are absolute and per method family, stated in the reference file itself:
reference methods are exact arithmetic; conventional models are deterministic on one machine but
may move in the last digits across CPU models; LLM methods run 4-bit layers whose CPU kernels compute
in bf16, and one flipped sample out of the ci suite's ~40-64 moves a metric by ~0.02.

Exit status: 0 pinned / within tolerance; 1 a metric moved beyond tolerance; 2 unreadable input (one
line naming the file), an incomplete run refused, or a wrong command line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmarks import records
from benchmarks import suite as suites
from benchmarks.metrics import METRICS
from benchmarks.registry import ROOT

REFERENCE = ROOT / "results" / "reference" / "ci.json"
TOLERANCE = {"reference": 1e-9, "conventional": 0.03, "llm": 0.06}
#: why each family's tolerance is what it is (written into the reference file beside the numbers)
TOLERANCE_REASON = {
    "reference": "deterministic NumPy code: any change is a change of the code or the data",
    "conventional": "RecBole models are deterministic on one machine (torch deterministic mode); another CPU "
                    "kernel set or torch version reorders float sums, which can reorder a few of the 48 test "
                    "samples' scores; 0.03 is several such swaps",
    "llm": "NF4 weights compute in bf16 on CPU (bitsandbytes), and dropout masks are drawn per micro-batch: "
           "another machine, thread count or library version moves the metrics of 16-shot cells on 48 test "
           "samples like another seed would (tallrec's AUC moved -0.012 between two machines); beyond 0.06 "
           "that explanation no longer holds. compare also warns when a move within it is significant on the "
           "same samples",
}
#: what every record must carry, with its JSON type, for ``compare`` and ``check`` to read it
RECORD_FIELDS = {"cell": str, "dataset": str, "task": str, "method": str, "family": str, "seed": int,
                 "shots": (int, str), "status": str, "protocol_hash": str, "method_config_hash": str,
                 "metrics": dict}
#: optional record fields that ``compare`` reads as mappings (absent or null is fine)
RECORD_MAPPINGS = ("timing", "method_config", "protocol_params", "dataset_sha256", "error")
TASKS = {m.task for m in METRICS.values()}


class InputError(Exception):
    """Input that cannot be used (a run folder, a reference file, the command line): one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (an :class:`InputError`) instead of usage + message."""

    def error(self, message: str) -> None:
        raise InputError(f"{message} (see --help)")


def is_number(value) -> bool:
    """A JSON number (int or float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; :class:`InputError` naming the file otherwise."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror})") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in RECORD_FIELDS.items():
        if key not in record:
            raise InputError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise InputError(f"{where}: '{key}' has the wrong type ({type(record[key]).__name__})")
    for key in RECORD_MAPPINGS:
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise InputError(f"{where}: '{key}' is not a mapping ({type(record[key]).__name__})")
    if record["task"] not in TASKS:
        raise InputError(f"{where}: unknown task {record['task']!r}; known: {sorted(TASKS)}")
    for name, value in record["metrics"].items():
        if name not in METRICS:
            raise InputError(f"{where}: unknown metric {name!r}; known: {sorted(METRICS)}")
        if not is_number(value):
            raise InputError(f"{where}: metric {name!r} = {value!r} is not a number")


def read_run(run_dir: Path) -> dict[str, dict]:
    """The latest record of every cell of ``run_dir``, each checked for :data:`RECORD_FIELDS` and its
    metrics; :class:`InputError` naming the file (and the record) otherwise."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    path = run_dir / "records.jsonl"
    if not path.is_file():
        raise InputError(f"{run_dir}: not a run folder (no records.jsonl)")
    try:
        recs = records.read(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:  # before ValueError: its message does not name the file
        raise InputError(f"{path}: not UTF-8 text ({err.reason})") from None
    except ValueError as err:  # records.read names the file and the line
        raise InputError(str(err)) from None
    for no, record in enumerate(recs, start=1):
        _check_record(record, f"{path}: record {no}")
    return records.latest_by_cell(recs)


def read_reference(path: Path) -> dict:
    """A reference file, checked for what :func:`check` and :func:`diff` read; :class:`InputError` otherwise."""
    ref = read_json(path)
    for key, kind in (("suite", str), ("tolerance_abs", dict), ("cells", dict)):
        if not isinstance(ref.get(key), kind):
            raise InputError(f"{path}: '{key}' missing or of the wrong type")
    for family, tol in ref["tolerance_abs"].items():
        if not (is_number(tol) and math.isfinite(tol) and tol >= 0):
            raise InputError(f"{path}: tolerance_abs.{family} = {tol!r}; expected a finite number >= 0")
    for key, cell in ref["cells"].items():
        if not (isinstance(cell, dict) and isinstance(cell.get("protocol_hash"), str)
                and isinstance(cell.get("metrics"), dict) and all(map(is_number, cell["metrics"].values()))):
            raise InputError(f"{path}: cell {key!r} needs protocol_hash and metrics (numbers)")
        if not isinstance(cell.get("family"), str) or cell["family"] not in ref["tolerance_abs"]:
            raise InputError(f"{path}: cell {key!r}: family {cell.get('family')!r} has no tolerance_abs")
    return ref


def run_suite_name(run_dir: Path) -> str:
    """The suite name saved in ``run_dir/suite.json``."""
    path = run_dir / "suite.json"
    suite = read_json(path).get("suite")
    name = suite.get("name") if isinstance(suite, dict) else None
    if not isinstance(name, str):
        raise InputError(f"{path}: no suite name (expected {{\"suite\": {{\"name\": ...}}}})")
    return name


def build(run_dir: Path) -> dict:
    """The reference made from the ok cells of ``run_dir`` (whether that is all of them: :func:`incomplete`)."""
    recs = read_run(run_dir)
    for key, record in recs.items():
        if record["status"] == "ok" and record["family"] not in TOLERANCE:
            raise InputError(f"{run_dir / 'records.jsonl'}: cell {key!r}: family {record['family']!r} has no "
                             f"tolerance; known: {sorted(TOLERANCE)}")
    env = read_json(run_dir / "env.json")
    return {
        "suite": run_suite_name(run_dir),
        "made_from": {"run": run_dir.resolve().name, "git_commit": env.get("git_commit"), "cpu": env.get("cpu")},
        "tolerance_abs": TOLERANCE,
        "tolerance_reason": TOLERANCE_REASON,
        "cells": {k: {"family": r["family"], "protocol_hash": r["protocol_hash"], "metrics": r["metrics"]}
                  for k, r in sorted(recs.items()) if r["status"] == "ok"},
    }


def incomplete(run_dir: Path, suite_name: str) -> str:
    """Why ``run_dir`` is not a complete run of the suite file ``suite_name`` ("" when it is)."""
    recs, ran = read_run(run_dir), run_suite_name(run_dir)
    try:
        expected = [cell.key for cell in suites.cells(suites.load_suite(suite_name))]
    except suites.SuiteError as err:
        raise InputError(f"the reference's suite {suite_name!r}: {err}") from None
    reasons = [f"it ran suite {ran!r}, not {suite_name!r}"] if ran != suite_name else []
    for what, keys in (("missing", [k for k in expected if k not in recs]),
                       ("failed", [k for k in expected if k in recs and recs[k]["status"] != "ok"]),
                       ("not in the suite", sorted(set(recs) - set(expected)))):
        if keys:
            reasons.append(f"{what} ({len(keys)}): {', '.join(map(repr, keys))}")
    return "; ".join(reasons)


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def diff(old: dict | None, new: dict) -> list[str]:
    """What writing ``new`` over ``old`` changes: the suite label and tolerances, then one line per cell
    added (+), removed (-) or changed (~: family, protocol hash, metrics)."""
    old = old or {"suite": new["suite"], "tolerance_abs": new["tolerance_abs"], "cells": {}}
    lines = [f"{key}: {old[key]} -> {new[key]}" for key in ("suite", "tolerance_abs") if old[key] != new[key]]
    for key in sorted(set(old["cells"]) | set(new["cells"])):
        a, b = old["cells"].get(key), new["cells"].get(key)
        if a is None:
            lines.append(f"+ {key}: " + ", ".join(f"{n} {v}" for n, v in sorted(b["metrics"].items())))
        elif b is None:
            lines.append(f"- {key}")
        else:
            changes = [f"family {a['family']} -> {b['family']}"] if a["family"] != b["family"] else []
            if a["protocol_hash"] != b["protocol_hash"]:
                changes.append(f"protocol_hash {a['protocol_hash'][:12]} -> {b['protocol_hash'][:12]}")
            changes += [f"{n} {a['metrics'].get(n)} -> {b['metrics'].get(n)}"
                        for n in sorted(set(a["metrics"]) | set(b["metrics"]))
                        if not _same(a["metrics"].get(n), b["metrics"].get(n))]
            if changes:
                lines.append(f"~ {key}: " + "; ".join(changes))
    return lines


def update(run_dir: Path, reference: Path, force: bool = False) -> None:
    """Pin ``run_dir`` in ``reference`` after printing the diff; :class:`InputError` (nothing written) for
    unreadable input or, without ``force``, a run that is not a complete run of the reference's suite."""
    old = read_reference(reference) if reference.exists() else None
    suite_name = old["suite"] if old else reference.stem
    new = build(run_dir)
    why = "" if force else incomplete(run_dir, suite_name)
    if why:
        raise InputError(f"{run_dir}: not a complete run of suite {suite_name!r}: {why}; nothing written "
                         "(--force pins it anyway)")
    lines = diff(old, new)
    print(f"{reference} <- {run_dir}:\n" + ("\n".join(f"  {line}" for line in lines) or "  no change to the cells"))
    reference.parent.mkdir(parents=True, exist_ok=True)
    tmp = reference.with_name(reference.name + ".tmp")
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
    tmp.replace(reference)
    print(f"wrote {reference}")


def check(run_dir: Path, reference: dict) -> list[str]:
    """Human-readable problems; empty when every pinned metric is within tolerance."""
    recs = read_run(run_dir)
    problems = []
    for key, ref in reference["cells"].items():
        got = recs.get(key)
        if got is None or got["status"] != "ok":
            problems.append(f"{key}: missing or failed in {run_dir}")
            continue
        if got["protocol_hash"] != ref["protocol_hash"]:
            problems.append(f"{key}: protocol hash changed ({ref['protocol_hash'][:12]} -> "
                            f"{got['protocol_hash'][:12]}); the data or protocol changed, refresh the reference")
            continue
        tol = reference["tolerance_abs"][ref["family"]]
        for name, expected in ref["metrics"].items():
            value = got["metrics"].get(name)
            both_nan = value is not None and math.isnan(value) and math.isnan(expected)
            if value is None or not (both_nan or abs(value - expected) <= tol):
                problems.append(f"{key}: {name} = {value} but the reference has {expected} (tolerance {tol})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.reference", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["update", "check"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--force", action="store_true",
                        help="update: pin a run that is not a complete run of the reference's suite")
    try:
        args = parser.parse_args(argv)
        if args.action == "update":
            update(args.run_dir, args.reference, args.force)
            return 0
        problems = check(args.run_dir, read_reference(args.reference))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(problems) if problems else f"{args.run_dir}: within tolerance of {args.reference}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
