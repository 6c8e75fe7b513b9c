"""Two runs of the same cells that differ in one setting: ``python -m benchmarks.perf.paired_runs A B``.

Made for a numerics or speed change that must not move the metrics (``cpu_dtype: float32`` in A,
``bfloat16`` in B, say), where :mod:`benchmarks.compare` refuses the pairs because the method
configurations differ. Cells are grouped by (dataset, task, method, shots) across seeds; for each
group present in both runs it prints, on the primary metric (:data:`benchmarks.reporting.stats.PRIMARY_METRIC`):

* A's and B's mean ± std over seeds (the seed-to-seed spread a change has to stay within);
* Δ = B − A of the seed means with its paired bootstrap 95% interval (both runs resampled on the
  same test samples and the same draw of seeds, seed i of A paired with seed i of B: they share the
  few-shot subset and the initialization; :func:`benchmarks.reporting.stats.paired_bootstrap`);
* ``within spread``: whether |Δ| is at most A's seed std, and whether the interval contains 0;
* the ratios B / A of the median training seconds, scoring throughput and peak memory.

Exit status: 0, or 2 when no group could be paired (one line saying why).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from benchmarks import records
from benchmarks.metrics import METRICS
from benchmarks.reporting import stats

TIMING_RATIOS = ("train_seconds", "throughput_samples_per_s", "peak_memory_mb")


def _groups(run_dir: Path) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for record in records.latest_by_cell(records.read(run_dir / "records.jsonl")).values():
        if record.get("status") == "ok":
            out[(record["dataset"], record["task"], record["method"], str(record["shots"]))].append(record)
    return {key: sorted(group, key=lambda r: r["seed"]) for key, group in out.items()}


def _median_ratio(a: list[dict], b: list[dict], field: str) -> float | None:
    values_a = [r["timing"][field] for r in a if r.get("timing", {}).get(field)]
    values_b = [r["timing"][field] for r in b if r.get("timing", {}).get(field)]
    if not values_a or not values_b:
        return None
    return statistics.median(values_b) / statistics.median(values_a)


def compare(run_a: Path, run_b: Path) -> list[list]:
    """One row per group present in both runs (see the module docstring)."""
    groups_a, groups_b = _groups(run_a), _groups(run_b)
    rows = []
    for key in sorted(set(groups_a) & set(groups_b)):
        a, b = groups_a[key], groups_b[key]
        seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
        a = sorted((r for r in a if r["seed"] in seeds), key=lambda r: r["seed"])
        b = sorted((r for r in b if r["seed"] in seeds), key=lambda r: r["seed"])
        scores_a, scores_b = stats.load_group(run_a, a), stats.load_group(run_b, b)
        if scores_a is None or scores_b is None:
            continue
        metric = stats.PRIMARY_METRIC[key[1]]
        labels, runs_a, runs_b = stats.align(scores_a, scores_b)
        per_seed_a = [METRICS[metric].fn(labels, s) for s in runs_a]
        per_seed_b = [METRICS[metric].fn(labels, s) for s in runs_b]
        mean_a, std_a = stats.mean_std(per_seed_a)
        mean_b, std_b = stats.mean_std(per_seed_b)
        paired = stats.paired_bootstrap(metric, labels, runs_b, runs_a, paired_seeds=True)  # seed i: same subset
        within = std_a is not None and abs(paired.delta) <= std_a
        rows.append(["/".join(key[:3]) + f" shots={key[3]}", metric, len(seeds), paired.n,
                     f"{mean_a:.4f} ± {std_a or 0:.4f}", f"{mean_b:.4f} ± {std_b or 0:.4f}",
                     f"{paired.delta:+.4f} [{paired.low:+.4f}, {paired.high:+.4f}]",
                     f"{'yes' if within else 'no'}; 0 {'in' if paired.low <= 0 <= paired.high else 'outside'} CI",
                     *[_median_ratio(a, b, f) for f in TIMING_RATIOS]])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.paired_runs", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="baseline run folder (e.g. cpu_dtype: float32)")
    parser.add_argument("run_b", type=Path, help="candidate run folder (e.g. cpu_dtype: bfloat16)")
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "records.jsonl").is_file():
            print(f"error: {run / 'records.jsonl'} does not exist: pass two run folders", file=sys.stderr)
            return 2
    rows = compare(args.run_a, args.run_b)
    if not rows:
        print(f"error: no (dataset, task, method, shots) group finished in both {args.run_a} and {args.run_b}",
              file=sys.stderr)
        return 2
    print(tabulate(rows, headers=["group", "metric", "seeds", "n", "A mean ± std", "B mean ± std",
                                  "Δ B−A [95% paired CI]", "|Δ| ≤ A's seed std", "train s B/A",
                                  "throughput B/A", "peak mem B/A"], floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
