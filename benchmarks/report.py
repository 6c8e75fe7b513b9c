"""Everything a run folder shows a person, rendered from ``records.jsonl`` alone (so a report can be
rebuilt for any run folder: ``python -m benchmarks.report RUN_DIR``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks import records, tables


def write_reports(run_dir: Path) -> str:
    """Write accuracy.md, latency.md and summary.csv into ``run_dir``; return the text to print."""
    recs = list(records.latest_by_cell(records.read(run_dir / "records.jsonl")).values())
    suite = json.loads((run_dir / "suite.json").read_text())["suite"]
    tiny = any(d.get("tiny") for d in suite["datasets"])
    header = f"Suite `{suite['name']}` v{suite['version']}. {tables.caps_line(suite['budget'], tiny)}."
    accuracy = f"## Accuracy\n\n{header}\n\n{tables.accuracy_table(recs)}\n"
    failed = tables.failures(recs)
    if failed:
        accuracy += f"\n{failed}\n"
    latency = (f"## Latency and cost\n\n{header} Latency: batch size 1 after warm-up; samples/s at the "
               f"suite batch size; peak memory per cell process.\n\n{tables.latency_table(recs)}\n")
    (run_dir / "accuracy.md").write_text(accuracy)
    (run_dir / "latency.md").write_text(latency)
    tables.write_summary_csv(recs, run_dir / "summary.csv")
    return f"{accuracy}\n{latency}"


if __name__ == "__main__":
    print(write_reports(Path(sys.argv[1])))
