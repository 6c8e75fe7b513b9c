"""How far a run's CPU cost estimate was from its measured wall time, per method and in total.

    python -m benchmarks.perf.estimate_check results/cpu-2core/standard-20261206
    python -m benchmarks.perf.estimate_check RUN_DIR --json out.json

The estimate of each cell is made as ``--dry-run`` would make it on this machine, from the committed
records *without the run's own* (:func:`benchmarks.execution.estimate.calibrated_without`), so a
committed run is checked against the estimate it had before it was committed, not against itself.
Measured: each record's wall seconds from its start and finish stamps; the run's wall time from the
first cell's start to the last cell's finish. Issue #22's target: the total within 30%. Run it on the
machine model the run was made on (the CPU model is printed beside the run's): estimates prefer
records from this machine's CPU model.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from tabulate import tabulate

TARGET = 0.30


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def check(run_dir: Path) -> dict:
    """{"rows": per (task, method), "estimated_s", "measured_s", "wall_s", "ratio", ...} for ``run_dir``."""
    from benchmarks import records as records_io
    from benchmarks import suite as suites
    from benchmarks.execution import estimate
    from benchmarks.execution.run_folder import read_suite_file
    from benchmarks.registry import discover
    from benchmarks.run import _took

    saved = read_suite_file(run_dir)
    suite = suites.parse(saved["suite"], saved["source"])
    configs = suites.resolve_configs(suite)
    registered = discover()
    latest = records_io.latest_by_cell(records_io.read(run_dir / "records.jsonl"))
    by_key = {cell.key: cell for cell in suites.cells(suite)}
    rows: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    with estimate.calibrated_without(run_dir):
        for key, record in latest.items():
            took = _took(record)
            if record.get("status") != "ok" or took is None or key not in by_key:
                continue
            seconds, _peak = estimate.cell_estimate(by_key[key], suite, configs, registered)
            row = rows[(record["task"], record["method"])]
            row[0] += 1
            row[1] += seconds or 0.0
            row[2] += took
    finished = [r for r in latest.values() if r.get("started_at") and r.get("finished_at")]
    wall = (max(_stamp(r["finished_at"]) for r in finished) - min(_stamp(r["started_at"]) for r in finished)
            ).total_seconds() if finished else 0.0
    estimated = sum(r[1] for r in rows.values())
    cpus = sorted({(r.get("host") or {}).get("cpu") or "?" for r in latest.values()})
    return {"run": str(run_dir), "cells": sum(r[0] for r in rows.values()), "run_cpu": cpus,
            "this_cpu": estimate._this_cpu(), "estimated_s": estimated, "measured_s": sum(r[2] for r in rows.values()),
            "wall_s": wall, "ratio": estimated / wall if wall else None,
            "rows": [{"task": t, "method": m, "cells": n, "estimated_s": e, "measured_s": s,
                      "ratio": e / s if s else None} for (t, m), (n, e, s) in sorted(rows.items())]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = check(args.run_dir)
    print(tabulate([[r["task"], r["method"], r["cells"], f"{r['estimated_s']:.0f}", f"{r['measured_s']:.0f}",
                     f"{r['ratio']:.2f}" if r["ratio"] else "-"] for r in result["rows"]],
                   headers=["task", "method", "cells", "estimated s", "measured s", "estimated / measured"],
                   tablefmt="github"))
    ratio = result["ratio"]
    print(f"\n{result['cells']} cells of {result['run']} (run on {', '.join(result['run_cpu'])}; estimated on "
          f"{result['this_cpu']}): estimated {result['estimated_s'] / 3600:.2f} h, measured wall "
          f"{result['wall_s'] / 3600:.2f} h (cells alone {result['measured_s'] / 3600:.2f} h): estimate / measured "
          + (f"{ratio:.2f}, {'within' if abs(ratio - 1) <= TARGET else 'outside'} {TARGET:.0%}" if ratio else "-"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
