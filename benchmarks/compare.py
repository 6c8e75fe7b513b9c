"""Compare two run folders cell by cell: ``python -m benchmarks.compare RUN_A RUN_B``.

A is the baseline, B the candidate. Cells are matched on what they are (dataset, task, method, seed,
shots) and compared only when they also agree on the protocol hash and the method config hash, i.e.
on the key (dataset, protocol hash, method config hash, seed, shots):

* protocol hashes differ: the cell is REFUSED, with the reason (changed protocol parameters, changed
  source files, tiny subset on one side, or otherwise a changed split: card version or preprocessing);
* method config hashes differ: not compared, the changed keys are listed;
* otherwise every metric's delta B − A is printed and flagged when it is beyond the tolerance
  (absolute, per method family, from :mod:`benchmarks.reference`, or ``--metric-tol``); where both runs
  kept score files, the primary metric also gets a paired bootstrap P(B better) over the same samples.
  Latency and cost deltas are printed as ratios B / A and flagged beyond ``--latency-tol``; they never
  change the exit status (timings move with machine load).

WARNING lines (they do not change the exit status either): the runs' ``env.json`` name another CPU
model, GPU or library versions; or a primary metric moved within its tolerance but significantly on
the same samples (paired bootstrap p <= 0.05), which a tolerance alone would pass as "OK".

Exit status: 0 no accuracy regression; 1 an accuracy regression (a metric worse beyond tolerance, or a
cell that finished in A and failed in B), each named on a REGRESSION line; 2 nothing could be compared
or a cell was refused (the check did not run in full), an input could not be read (one line naming the
file), or the command line was wrong (a tolerance must be a finite number >= 0).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from benchmarks.metrics import METRICS
from benchmarks.reference import TOLERANCE, InputError, Parser, is_number, read_run
from benchmarks.reporting import stats

LATENCY_FIELDS = ("latency_p50_ms", "throughput_samples_per_s", "train_seconds", "peak_memory_mb")
DEFAULT_LATENCY_TOL = 0.5   # relative: flag when B / A leaves [1/1.5, 1.5]
SIGNIFICANT = 0.05          # a within-tolerance change with a paired p-value at most this gets a WARNING line

EXAMPLES = """examples:
  python -m benchmarks.compare results/runs/ci-20261122-101500 results/runs/ci-20261123-091200
  python -m benchmarks.compare OLD NEW --metric-tol 0.01        # one absolute tolerance for every family
exit status: 0 no accuracy regression, 1 regression (named on REGRESSION lines), 2 not comparable / usage
"""


def identity(record: dict) -> tuple:
    """What a cell is, independent of the code that ran it."""
    return (record["dataset"], record["task"], record["method"], record["seed"], str(record["shots"]))


def load_run(run_dir: Path) -> dict[tuple, dict]:
    """The latest record of every cell of ``run_dir`` by :func:`identity`; :class:`InputError` naming the
    file for a record :func:`benchmarks.reference.read_run` refuses or with a non-numeric latency field."""
    cells = read_run(run_dir)
    for key, record in cells.items():
        timing = record.get("timing") or {}
        bad = [f for f in LATENCY_FIELDS if timing.get(f) is not None and not is_number(timing[f])]
        if bad:
            raise InputError(f"{run_dir / 'records.jsonl'}: cell {key!r}: timing {', '.join(bad)} not a number")
    return {identity(r): r for r in cells.values()}


def tolerance(text: str) -> float:
    """A tolerance flag's value: a finite number >= 0 (argparse reports anything else in one line)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number >= 0")
    return value


def _changed(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in keys if a.get(k) != b.get(k)]


def protocol_difference(a: dict, b: dict) -> str:
    """Why two records of the same cell have different protocol hashes, as far as the records tell."""
    reasons = []
    if a.get("tiny") != b.get("tiny"):
        reasons.append(f"tiny subset: {a.get('tiny')} -> {b.get('tiny')}")
    params_a, params_b = a.get("protocol_params") or {}, b.get("protocol_params") or {}
    reasons += [f"protocol_params.{c}" for c in _changed(params_a, params_b)]
    reasons += [f"source file {c}" for c in _changed(a.get("dataset_sha256") or {}, b.get("dataset_sha256") or {})]
    if not reasons:
        reasons.append("same parameters and source files, so the split's content changed "
                       "(dataset card version or preprocessing code)")
    return (f"protocol hash differs ({a['protocol_hash'][:12]} vs {b['protocol_hash'][:12]}): "
            + "; ".join(reasons))


@dataclass
class Outcome:
    """Everything the comparison found, ready to print."""

    metric_rows: list[list] = field(default_factory=list)
    latency_rows: list[list] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compared: int = 0


def _paired(run_a: Path, run_b: Path, a: dict, b: dict) -> stats.Paired | None:
    """B against A on the primary metric by paired bootstrap over the shared samples (None without scores)."""
    group_a, group_b = stats.load_group(run_a, [a]), stats.load_group(run_b, [b])
    if group_a is None or group_b is None:
        return None
    labels, runs_b, runs_a = stats.align(group_b, group_a)
    return stats.paired_bootstrap(stats.PRIMARY_METRIC[a["task"]], labels, runs_b, runs_a)


def environment_differences(run_a: Path, run_b: Path) -> list[str]:
    """The CPU model and library versions in which the two runs' ``env.json`` differ (each a line)."""
    envs = []
    for run in (run_a, run_b):
        try:
            envs.append(json.loads((run / "env.json").read_text()))
        except (OSError, ValueError):
            return [f"cannot read {run / 'env.json'}: the machines and libraries of the runs are unknown"]
    a, b = envs
    out = [f"CPU model: {a.get('cpu')} -> {b.get('cpu')}"] if a.get("cpu") != b.get("cpu") else []
    if a.get("gpu") != b.get("gpu"):
        out.append(f"GPU: {a.get('gpu')} -> {b.get('gpu')}")
    out += [f"library {change}" for change in _changed(a.get("packages") or {}, b.get("packages") or {})]
    return out


def metric_change(name: str, va: float | None, vb: float | None, tol: float) -> tuple[float, str]:
    """(B − A, flag): "REGRESSION" when B is worse beyond ``tol`` in the metric's direction, lost the
    metric or became NaN; "improved" beyond ``tol``; "new in B"; or ""."""
    if va is None:
        return float("nan"), "new in B"
    if vb is None or (math.isnan(vb) and not math.isnan(va)):
        return float("nan"), "REGRESSION"
    if math.isnan(va):
        return float("nan"), "" if math.isnan(vb) else "improved"
    delta = vb - va
    worse = -delta if METRICS[name].higher_is_better else delta
    return delta, "REGRESSION" if worse > tol else ("improved" if worse < -tol else "")


def _compare_metrics(out: Outcome, cell: str, a: dict, b: dict, tol: float, p_better: str) -> None:
    primary = stats.PRIMARY_METRIC[a["task"]]
    for name in sorted(set(a["metrics"]) | set(b["metrics"])):
        va, vb = a["metrics"].get(name), b["metrics"].get(name)
        delta, flag = metric_change(name, va, vb, tol)
        if flag == "REGRESSION":
            out.regressions.append(f"{cell}: {name} {va} -> {vb} (tolerance {tol:g})")
        out.metric_rows.append([cell, name, _num(va), _num(vb), _num(delta, signed=True), f"{tol:g}",
                                p_better if name == primary else "", flag])


def _compare_latency(out: Outcome, cell: str, a: dict, b: dict, tol: float) -> None:
    row, flags = [cell], []
    for name in LATENCY_FIELDS:
        va, vb = (a.get("timing") or {}).get(name), (b.get("timing") or {}).get(name)
        ratio = vb / va if va and vb is not None else float("nan")
        row.append(f"{_num(va)} -> {_num(vb)} (x{ratio:.2f})")
        if not math.isnan(ratio) and (ratio > 1 + tol or ratio < 1 / (1 + tol)):
            flags.append(name)
    out.latency_rows.append(row + [("beyond tolerance: " + ", ".join(flags)) if flags else ""])


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def compare_runs(run_a: Path, run_b: Path, metric_tol: float | None = None,
                 latency_tol: float = DEFAULT_LATENCY_TOL) -> Outcome:
    """Match the cells of two run folders and compare them (see the module docstring)."""
    cells_a, cells_b = load_run(run_a), load_run(run_b)
    out = Outcome()
    for key in sorted(set(cells_a) | set(cells_b), key=str):
        a, b = cells_a.get(key), cells_b.get(key)
        cell = (a or b)["cell"]
        if a is None or b is None:
            out.notes.append(f"{cell}: only in {'B' if a is None else 'A'}")
            continue
        if a["status"] != "ok" or b["status"] != "ok":
            if a["status"] == "ok":
                out.regressions.append(f"{cell}: finished in A, failed in B ({(b.get('error') or {}).get('type')})")
            else:
                out.notes.append(f"{cell}: failed in A ({b['status']} in B), not compared")
            continue
        if a["protocol_hash"] != b["protocol_hash"]:
            out.refused.append(f"{cell}: {protocol_difference(a, b)}")
            continue
        if a["method_config_hash"] != b["method_config_hash"]:
            changes = "; ".join(_changed(a.get("method_config") or {}, b.get("method_config") or {})) or "hash only"
            out.notes.append(f"{cell}: method config changed ({changes}), not compared")
            continue
        out.compared += 1
        tol = metric_tol if metric_tol is not None else TOLERANCE.get(a.get("family"), 0.0)
        changed = any(a["metrics"].get(m) != b["metrics"].get(m) for m in a["metrics"])
        paired = _paired(run_a, run_b, a, b) if changed else None
        _compare_metrics(out, cell, a, b, tol, "" if paired is None else f"{paired.p_a_better:.3f}")
        if paired is not None and paired.p_value <= SIGNIFICANT and \
                abs(b["metrics"].get(paired.metric, math.nan) - a["metrics"].get(paired.metric, math.nan)) <= tol:
            out.warnings.append(f"{cell}: {paired.metric} moved {paired.delta:+.4f}, within the tolerance {tol:g} "
                                f"but significant on the same samples (paired bootstrap p = {paired.p_value:.3f})")
        _compare_latency(out, cell, a, b, latency_tol)
    differences = environment_differences(run_a, run_b)
    if differences and out.compared:
        out.warnings.insert(0, "the runs differ in " + "; ".join(differences) + ": timings, and LLM metrics within "
                            "their tolerance, can move for this reason alone")
    return out


def exit_status(out: Outcome) -> int:
    if out.regressions:
        return 1
    return 2 if out.refused or out.compared == 0 else 0


def report(out: Outcome, run_a: Path, run_b: Path) -> str:
    lines = [f"A: {run_a}", f"B: {run_b}", f"{out.compared} cells compared"]
    if out.metric_rows:
        lines += ["", "metrics (Δ = B − A; P(B better): paired bootstrap on the primary metric when it changed)",
                  tabulate(out.metric_rows, headers=["cell", "metric", "A", "B", "Δ", "tol", "P(B better)", "flag"],
                           tablefmt="github", disable_numparse=True)]
    if out.latency_rows:
        lines += ["", "latency and cost (A -> B, ratio B / A)",
                  tabulate(out.latency_rows, headers=["cell", *LATENCY_FIELDS, "flag"], tablefmt="github",
                           disable_numparse=True)]
    lines += [""] + [f"note: {n}" for n in out.notes]
    lines += [f"WARNING {w}" for w in out.warnings]
    lines += [f"REFUSED {r}" for r in out.refused]
    lines += [f"REGRESSION {r}" for r in out.regressions]
    if out.compared == 0 and not out.regressions:
        lines.append("nothing compared: no cell matches on (dataset, protocol hash, method config hash, seed, shots)")
    lines.append(["OK: no accuracy regression", "FAILED: accuracy regression", "INCOMPLETE: not everything could be "
                  "compared"][exit_status(out)])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0],
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="baseline run folder")
    parser.add_argument("run_b", type=Path, help="candidate run folder")
    parser.add_argument("--metric-tol", type=tolerance,
                        help=f"absolute metric tolerance for every family (default per family: {TOLERANCE})")
    parser.add_argument("--latency-tol", type=tolerance, default=DEFAULT_LATENCY_TOL,
                        help=f"relative latency/cost tolerance, flag only (default {DEFAULT_LATENCY_TOL})")
    try:
        args = parser.parse_args(argv)
        out = compare_runs(args.run_a, args.run_b, args.metric_tol, args.latency_tol)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(out, args.run_a, args.run_b))
    return exit_status(out)


if __name__ == "__main__":
    sys.exit(main())
