"""Accuracy and latency tables from records (tabulate), plus ``summary.csv`` and ``latency.csv``.

Rows are (dataset, protocol, method, shots); values are mean ± std over seeds (std over seeds, ddof=1,
shown only with 2+ seeds), followed by the bootstrap 95% interval over test samples in brackets when
the run's score files give one (:mod:`benchmarks.stats`). Column headers carry ↑/↓ from the metric
registry. The header line states the suite's caps so a capped run is never mistaken for the full
protocol. Every table renders as GitHub markdown (``tablefmt="github"``), LaTeX (``"latex"``) or HTML
(``"html"``); cells are escaped for the format and :class:`Bold` cells are set in bold.
"""
from __future__ import annotations

import csv
import html
from collections import defaultdict
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmarks.metrics import METRICS, REPORTED
from benchmarks.stats import PRIMARY_METRIC, Interval, mean_std

GROUP = ("dataset", "task", "method", "shots")

#: the compact paper-style table's columns per task (what the papers report)
PAPER_METRICS = {"ctr": ("auc", "logloss"), "next_item": ("hr@1", "valid_ratio")}

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "≥": r"$\geq$"}


class Bold(str):
    """A table cell shown in bold (``**x**``, ``\\textbf{x}``, ``<b>x</b>``)."""


def _cell(text: object, tablefmt: str) -> str:
    value = str(text)
    if tablefmt == "latex":
        value = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in value)
        for symbol, command in _LATEX_SYMBOLS.items():
            value = value.replace(symbol, command)
        return rf"\textbf{{{value}}}" if isinstance(text, Bold) else value
    if tablefmt == "html":
        value = html.escape(value)
        return f"<b>{value}</b>" if isinstance(text, Bold) else value
    return f"**{value}**" if isinstance(text, Bold) and tablefmt == "github" else value


def render(rows: list[list], headers: list[str], tablefmt: str = "github") -> str:
    """One table in ``tablefmt``: "github", "latex" or "html" (cells escaped), or any tabulate format."""
    fmt = {"latex": "latex_raw", "html": "unsafehtml"}.get(tablefmt, tablefmt)
    body = [[_cell(c, tablefmt) for c in row] for row in rows]
    return tabulate(body, headers=[_cell(h, tablefmt) for h in headers], tablefmt=fmt, disable_numparse=True)


def group_records(records: list[dict]) -> dict[tuple, list[dict]]:
    """Finished records by (dataset, task, method, shots) as strings, in sorted order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[tuple(str(r[k]) for k in GROUP)].append(r)
    return dict(sorted(groups.items()))


def fmt(mean: float, std: float | None, digits: int = 4) -> str:
    if mean is None or np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def caps_line(budget: dict, tiny: bool) -> str:
    caps = [f"{k}={budget[k]}" for k in ("eval_cap", "valid_cap", "max_epochs") if budget.get(k) is not None]
    parts = (["tiny user subset"] if tiny else []) + caps
    return "Caps: " + (", ".join(parts) if parts else "none (full protocol)")


def accuracy_table(records: list[dict], tablefmt: str = "github") -> str:
    out = []
    groups = _group(records)
    for task, names in REPORTED.items():
        rows = []
        for key, rs in groups.items():
            if key[1] != task:
                continue
            row = list(key[:1]) + list(key[2:]) + [len(rs)]
            for name in names:
                row.append(fmt(*mean_std([r["metrics"].get(name) for r in rs])))
            rows.append(row)
        if rows:
            headers = ["dataset", "method", "shots", "seeds"] + [
                f"{n} {'↑' if METRICS[n].higher_is_better else '↓'}" for n in names]
            out.append(f"### {task}\n\n" + tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True))
    return "\n\n".join(out)


def rate(mean: float, std: float | None) -> str:
    """A rate with three significant figures and an SI suffix (1.23k, 4.56M)."""
    if mean is None or np.isnan(mean):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(mean) >= div or div == 1:
            text = f"{mean / div:.3g}{suffix}"
            return text + (f" ± {std / div:.2g}{suffix}" if std is not None else "")
    return "-"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def latency_table(records: list[dict], tablefmt: str = "github") -> str:
    rows = []
    for key, rs in _group(records).items():
        t = [r["timing"] for r in rs]
        params = rs[0].get("parameters") or {}
        backbone = rs[0].get("backbone") or {}
        rows.append([
            key[0], key[1], key[2], key[3],
            fmt(*mean_std([x["train_seconds"] for x in t]), 1),
            rate(*mean_std([x["train_samples_per_s"] for x in t])),
            fmt(*mean_std([x["latency_p50_ms"] for x in t]), 1),
            fmt(*mean_std([x["latency_p95_ms"] for x in t]), 1),
            f"{rate(*mean_std([x['throughput_samples_per_s'] for x in t]))} @{t[0]['batch_size']}",
            fmt(*mean_std([x["peak_memory_mb"] for x in t]), 0),
            f"{_count(params.get('trainable'))} / {_count(params.get('total'))}" if params else "-",
            f"{backbone.get('id', '')} {backbone.get('quant', '')}".strip() or "-",
        ])
    headers = ["dataset", "task", "method", "shots", "train s", "train samples/s", "p50 ms (bs1)",
               "p95 ms (bs1)", "samples/s", "peak MiB", "trainable / total params", "backbone"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True) if rows else "(no finished cells)"


def failures(records: list[dict]) -> str:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return ""
    rows = [[r["cell"], r["error"]["type"], r["error"]["message"].splitlines()[0][:120] if r["error"]["message"] else ""]
            for r in failed]
    return "### failed cells\n\n" + tabulate(rows, headers=["cell", "error", "message"], tablefmt="github")


def write_summary_csv(records: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*GROUP, "metric", "mean", "std", "seeds"])
        for key, rs in _group(records).items():
            for name in REPORTED[key[1]]:
                mean, std = mean_std([r["metrics"].get(name) for r in rs])
                writer.writerow([*key, name, mean, "" if std is None else std, len(rs)])
