"""The CI regression reference: pinned metrics of the ``ci`` suite and the check against them.

    python -m benchmarks.run --suite ci                       # produce a run folder
    python -m benchmarks.reference update RUN_DIR             # rewrite results/reference/ci.json from it
    python -m benchmarks.reference check RUN_DIR              # exit 1 if any metric moved too far

Tolerances are absolute and per method family, stated in the reference file itself:
reference methods are exact arithmetic; conventional models are deterministic on one machine but
may move in the last digits across CPU models; LLM methods run 4-bit layers whose CPU kernels compute
in bf16, and one flipped sample out of the ci suite's ~40-64 moves a metric by ~0.02.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmarks import records
from benchmarks.registry import ROOT

REFERENCE = ROOT / "results" / "reference" / "ci.json"
TOLERANCE = {"reference": 1e-9, "conventional": 0.03, "llm": 0.06}


def build(run_dir: Path) -> dict:
    recs = records.latest_by_cell(records.read(run_dir / "records.jsonl"))
    failed = [k for k, r in recs.items() if r["status"] != "ok"]
    if failed:
        raise ValueError(f"{run_dir}: refusing to pin a run with failed cells: {', '.join(failed)}")
    env = json.loads((run_dir / "env.json").read_text())
    return {
        "suite": json.loads((run_dir / "suite.json").read_text())["suite"]["name"],
        "made_from": {"run": run_dir.name, "git_commit": env.get("git_commit"), "cpu": env.get("cpu")},
        "tolerance_abs": TOLERANCE,
        "cells": {k: {"family": r["family"], "protocol_hash": r["protocol_hash"], "metrics": r["metrics"]}
                  for k, r in sorted(recs.items())},
    }


def check(run_dir: Path, reference: dict) -> list[str]:
    """Human-readable problems; empty when every pinned metric is within tolerance."""
    recs = records.latest_by_cell(records.read(run_dir / "records.jsonl"))
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["update", "check"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    args = parser.parse_args(argv)
    if args.action == "update":
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps(build(args.run_dir), indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.reference}")
        return 0
    problems = check(args.run_dir, json.loads(args.reference.read_text()))
    print("\n".join(problems) if problems else f"{args.run_dir}: within tolerance of {args.reference}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
