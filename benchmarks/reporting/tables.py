"""Accuracy and latency tables from records (tabulate), plus ``summary.csv`` and ``latency.csv``.

Rows are (dataset, protocol, method, shots); values are mean ± std over seeds (std over seeds, ddof=1,
shown only with 2+ seeds), followed by the bootstrap 95% interval over test samples in brackets when
the run's score files give one (:mod:`benchmarks.reporting.stats`). Column headers carry ↑/↓ from the metric
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
from benchmarks.reporting.stats import PRIMARY_METRIC, Interval, mean_std, shots_order

GROUP = ("dataset", "task", "method", "shots")

#: the compact paper-style table's columns per task (what the papers report)
PAPER_METRICS = {"ctr": ("auc", "logloss"), "next_item": ("hr@1", "valid_ratio")}

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "≥": r"$\geq$",
                  "−": r"$-$", "⚑": r"$\triangleright$", "≈": r"$\approx$", "√": r"$\surd$"}


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


def note(text: str, tablefmt: str = "github") -> str:
    """A line of text under a table: as it is (markdown), a LaTeX comment, or ``<p class="note">``."""
    if tablefmt == "latex":
        return f"% {text}\n"
    if tablefmt == "html":
        return f'<p class="note">{html.escape(text)}</p>\n'
    return f"{text}\n"


def heading(text: str, tablefmt: str = "github") -> str:
    """A sub-heading above a table: ``### text`` (markdown), a LaTeX comment, or ``<h3>``."""
    if tablefmt == "latex":
        return f"% {text}\n"
    if tablefmt == "html":
        return f"<h3>{html.escape(text)}</h3>\n"
    return f"### {text}\n\n"


def group_records(records: list[dict]) -> dict[tuple, list[dict]]:
    """Finished records by (dataset, task, method, shots) as strings, in sorted order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[tuple(str(r[k]) for k in GROUP)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (*kv[0][:3], shots_order(kv[0][3]))))


def fmt(mean: float, std: float | None, digits: int = 4) -> str:
    if mean is None or np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def caps_line(budget: dict, tiny: bool) -> str:
    caps = [f"{k}={budget[k]}" for k in ("eval_cap", "valid_cap", "max_epochs") if budget.get(k) is not None]
    parts = (["tiny user subset"] if tiny else []) + caps
    return "Caps: " + (", ".join(parts) if parts else "none (full protocol)")


def arrow(name: str) -> str:
    """The metric's name with ↑ (higher is better) or ↓."""
    return f"{name} {'↑' if METRICS[name].higher_is_better else '↓'}"


def ci_text(interval: Interval | None, digits: int = 3) -> str:
    """`` [low, high]`` of a bootstrap interval, or "" when there is none."""
    if interval is None or np.isnan(interval.low):
        return ""
    return f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def accuracy_table(records: list[dict], tablefmt: str = "github",
                   intervals: dict[tuple, dict[str, Interval]] | None = None,
                   health: dict[tuple, list[str]] | None = None) -> str:
    """Per task: mean ± std over seeds of every reported metric, with the 95% bootstrap interval in
    brackets where ``intervals`` (group key -> metric -> Interval) has one, and the group's marks
    (``health``, :mod:`benchmarks.reporting.health`) beside its primary metric."""
    out = []
    groups = group_records(records)
    intervals, health = intervals or {}, health or {}
    for task, names in REPORTED.items():
        rows = []
        for key, rs in groups.items():
            if key[1] != task:
                continue
            row = list(key[:1]) + list(key[2:]) + [len(rs)]
            for name in names:
                marks = health.get(key) if name == PRIMARY_METRIC[task] else None
                row.append(fmt(*mean_std([r["metrics"].get(name) for r in rs]))
                           + ci_text(intervals.get(key, {}).get(name)) + (f" ⚑ {', '.join(marks)}" if marks else ""))
            rows.append(row + [memorized(rs)])
        if rows:
            headers = ["dataset", "method", "shots", "seeds"] + [arrow(n) for n in names] + ["backbone memorized"]
            if not any(row[-1] for row in rows):  # no LLM row: no column
                rows, headers = [row[:-1] for row in rows], headers[:-1]
            out.append(heading(task, tablefmt) + render(rows, headers, tablefmt))
    return "\n\n".join(out)


def memorized(records: list[dict]) -> str:
    """The backbone's exact-match memorization rate of the dataset (benchmarks/audits/memorization.py), or ""."""
    probe = next(((r.get("backbone") or {}).get("memorization") for r in records
                  if (r.get("backbone") or {}).get("memorization")), None)
    if not probe or "exact" not in probe:
        return ""
    return f"{probe['exact']['rate']:.1%} of {probe['n_items']}"


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


#: below this many latency probes a p95 is about their maximum, and the table says so
P95_MIN_SAMPLES = 20
#: after a train time that leaves out a frozen encoder the cell loaded instead of training (record.encoders)
LOADED_ENCODER_MARK = "*"


def latency_table(records: list[dict], tablefmt: str = "github") -> str:
    rows = []
    for key, rs in group_records(records).items():
        t = [r["timing"] for r in rs]
        params = rs[0].get("parameters") or {}
        backbone = rs[0].get("backbone") or {}
        loaded = any(e["origin"] == "loaded" for r in rs for e in r.get("encoders") or ())
        probes = min(x.get("latency_samples") or 0 for x in t)
        hosts = [r.get("host") or {} for r in rs]
        rows.append([
            key[0], key[1], key[2], key[3],
            fmt(*mean_std([x["train_seconds"] for x in t]), 1) + (LOADED_ENCODER_MARK if loaded else ""),
            rate(*mean_std([x["train_samples_per_s"] for x in t])),
            fmt(*mean_std([x["latency_p50_ms"] for x in t]), 1),
            fmt(*mean_std([x["latency_p95_ms"] for x in t]), 1) + (f" (≈max of {probes})" if probes < P95_MIN_SAMPLES
                                                                   else ""),
            f"{rate(*mean_std([x['throughput_samples_per_s'] for x in t]))} @{t[0]['batch_size']}",
            fmt(*mean_std([x["peak_memory_mb"] for x in t]), 0),
            f"{_count(params.get('trainable'))} / {_count(params.get('total'))}" if params else "-",
            f"{backbone.get('id', '')} {backbone.get('quant', '')}".strip() or "-",
            " / ".join(sorted({h.get("cpu", "?") for h in hosts})),
            fmt(*mean_std([h.get("load_1m") for h in hosts]), 2),
        ])
    headers = ["dataset", "task", "method", "shots", "train s", "train samples/s", "p50 ms (bs1)",
               "p95 ms (bs1)", "samples/s", "peak MiB", "trainable / total params", "backbone", "CPU", "load (1 min)"]
    return render(rows, headers, tablefmt) if rows else "(no finished cells)"


def failures(records: list[dict], tablefmt: str = "github") -> str:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return ""
    rows = [[r["cell"], r["error"]["type"], (r["error"]["message"] or "\n").splitlines()[0][:120]] for r in failed]
    return heading("failed cells", tablefmt) + render(rows, ["cell", "error", "message"], tablefmt)


def write_summary_csv(records: list[dict], path: Path,
                      intervals: dict[tuple, dict[str, Interval]] | None = None) -> None:
    """One row per (group, metric): mean, std over seeds, seeds, and the bootstrap interval (``ci_low``,
    ``ci_high``, ``n_samples``; empty without score files)."""
    intervals = intervals or {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*GROUP, "metric", "mean", "std", "seeds", "ci_low", "ci_high", "n_samples"])
        for key, rs in group_records(records).items():
            for name in REPORTED[key[1]]:
                mean, std = mean_std([r["metrics"].get(name) for r in rs])
                ci = intervals.get(key, {}).get(name)
                writer.writerow([*key, name, mean, "" if std is None else std, len(rs),
                                 *(("", "", "") if ci is None else (ci.low, ci.high, ci.n))])


LATENCY_COLUMNS = ("train_seconds", "train_samples_per_s", "latency_p50_ms", "latency_p95_ms",
                   "throughput_samples_per_s", "peak_memory_mb")


def write_latency_csv(records: list[dict], path: Path) -> None:
    """One row per group: mean and std over seeds of every timing field, plus batch size and parameters."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*GROUP, "seeds", *(f"{c}_{s}" for c in LATENCY_COLUMNS for s in ("mean", "std")),
                         "batch_size", "trainable_params", "total_params"])
        for key, rs in group_records(records).items():
            values = []
            for column in LATENCY_COLUMNS:
                mean, std = mean_std([r["timing"].get(column) for r in rs])
                values += [mean, "" if std is None else std]
            params = rs[0].get("parameters") or {}
            writer.writerow([*key, len(rs), *values, rs[0]["timing"].get("batch_size"),
                             params.get("trainable", ""), params.get("total", "")])


def paper_style_table(records: list[dict], tablefmt: str = "github") -> str:
    """Methods as rows, (dataset, task) x metric as columns (``PAPER_METRICS``), seed means, the best
    value of each column in bold."""
    groups = group_records(records)
    columns = sorted({(k[0], k[1], m) for k in groups for m in PAPER_METRICS[k[1]]})
    rows_by_method: dict[tuple, dict] = defaultdict(dict)
    for key, rs in groups.items():
        for name in PAPER_METRICS[key[1]]:
            rows_by_method[(key[2], key[3])][(key[0], key[1], name)] = mean_std([r["metrics"].get(name) for r in rs])
    best = {}
    for column in columns:
        values = [cells[column][0] for cells in rows_by_method.values()
                  if column in cells and not np.isnan(cells[column][0])]
        if values:
            best[column] = max(values) if METRICS[column[2]].higher_is_better else min(values)
    rows = []
    for (method, shots), cells in sorted(rows_by_method.items(), key=lambda kv: (kv[0][0], shots_order(kv[0][1]))):
        row = [method if shots == "full" else f"{method} ({shots} shots)"]
        for column in columns:
            mean, std = cells.get(column, (float("nan"), None))
            text = fmt(mean, std)
            row.append(Bold(text) if column in best and mean == best[column] else text)
        rows.append(row)
    headers = ["method"] + [f"{d} {t} {arrow(m)}" for d, t, m in columns]
    return render(rows, headers, tablefmt) if rows else "(no finished cells)"


def paired_table(comparisons: list, tablefmt: str = "github", a_header: str = "A (best)", b_header: str = "B",
                 empty: str = "(fewer than two methods per task: nothing to compare)") -> str:
    """Paired bootstraps (``stats.PairedRow``): Δ = A − B on the full test set, its 95% interval,
    P(A better) and the Holm-adjusted p-value of Δ = 0 over the table's rows; by default the best method
    of each (dataset, task, shots) against every other one."""
    rows = [[c.dataset, c.task, c.shots, c.a, c.b, arrow(c.result.metric), f"{c.result.delta:+.4f}",
             f"[{c.result.low:+.4f}, {c.result.high:+.4f}]", f"{c.result.p_a_better:.3f}",
             "-" if c.result.p_holm is None else f"{c.result.p_holm:.3f}", c.result.n]
            for c in comparisons]
    headers = ["dataset", "task", "shots", a_header, b_header, "metric", "Δ = A − B", "95% CI of Δ", "P(A better)",
               "p (Holm)", "n"]
    return render(rows, headers, tablefmt) if rows else empty


def full_ranking_table(records: list[dict], tablefmt: str = "github") -> str:
    """next_item methods under both protocols: the sampled metrics (the frozen candidates) beside the
    same metrics over the whole catalogue (``record.full_ranking``), each method's rank under each by
    NDCG@10, and Kendall's tau between the two rankings per dataset."""
    from scipy.stats import kendalltau

    out = []
    by_dataset: dict[str, list] = defaultdict(list)
    for key, rs in group_records(records).items():
        full = [(r.get("full_ranking") or {}).get("metrics") for r in rs]
        if key[1] == "next_item" and all(full):
            sampled = {m: mean_std([r["metrics"].get(m) for r in rs])[0] for m in ("hr@10", "ndcg@10")}
            whole = {m: mean_std([f[m] for f in full])[0] for m in ("hr@10", "ndcg@10", "mrr")}
            by_dataset[key[0]].append((key, len(rs), sampled, whole))
    for dataset, entries in sorted(by_dataset.items()):
        rank_sampled = _ranks([e[2]["ndcg@10"] for e in entries])
        rank_full = _ranks([e[3]["ndcg@10"] for e in entries])
        rows = [[key[2], key[3], seeds, f"{s['hr@10']:.4f}", f"{w['hr@10']:.4f}", f"{s['ndcg@10']:.4f}",
                 f"{w['ndcg@10']:.4f}", f"{w['mrr']:.4f}", rs, rf]
                for (key, seeds, s, w), rs, rf in zip(entries, rank_sampled, rank_full)]
        rows.sort(key=lambda row: row[-1])
        headers = ["method", "shots", "seeds", "HR@10 sampled", "HR@10 full", "NDCG@10 sampled", "NDCG@10 full",
                   "MRR full", "rank sampled", "rank full"]
        tau = kendalltau(rank_sampled, rank_full).statistic if len(entries) > 1 else float("nan")
        out.append(heading(f"{dataset}: sampled against full ranking", tablefmt) + render(rows, headers, tablefmt)
                   + "\n\n" + note(f"Kendall's τ between the two rankings by NDCG@10: {tau:+.3f} over {len(entries)} "
                                    "methods. LLM methods score the frozen candidates only (their prompt lists "
                                    "them) and are not in this table.", tablefmt))
    return "\n".join(out)


def _ranks(values: list[float]) -> list[int]:
    """1 = best (highest); ties share the better rank."""
    return [1 + sum(other > value for other in values) for value in values]


def _times(ratio: float | None) -> str:
    """A cost ratio: 3.39x, 0.572x, 1,320x, or 1/2,967x below 0.01."""
    if ratio is None:
        return "-"
    if ratio >= 1000:
        return f"{ratio:,.0f}x"
    return f"{ratio:.3g}x" if ratio >= 0.01 else f"1/{1 / ratio:,.0f}x"


def verdict_table(verdicts: list, tablefmt: str = "github") -> str:
    """The headline (``verdict.Verdict`` rows): per (dataset, task), the best LLM against the best
    conventional cell, Δ with its interval and Holm p-value, the cost ratios and the reading."""
    rows = []
    for v in verdicts:
        c, r = v.comparison, v.comparison.result
        rows.append([c.dataset, c.task, c.a, c.b, arrow(r.metric), f"{v.values[0]:.4f}", f"{v.values[1]:.4f}",
                     f"{r.delta:+.4f} [{r.low:+.4f}, {r.high:+.4f}]", r.n, f"{v.seeds[0]} / {v.seeds[1]}",
                     "-" if r.p_holm is None else f"{r.p_holm:.3f}",
                     *(_times(x) for x in v.ratios.values()), v.sentence])
    costs = [f"{name} LLM/conv" for name in (verdicts[0].ratios if verdicts else ())]
    headers = ["dataset", "task", "best LLM", "best conventional", "metric", "LLM", "conventional",
               "Δ [95% CI]", "n", "seeds", "p (Holm)", *costs, "verdict"]
    if not rows:
        return "(no task of this run has both an LLM and a conventional method)"
    return render(rows, headers, tablefmt)


def published_table(comparisons: list, tablefmt: str = "github",
                    intervals: dict[tuple, dict[str, Interval]] | None = None) -> str:
    """Published numbers (``published.Comparison``) beside the measured group they line up with. Δ is
    shown only where the setting is comparable; otherwise the measured value is in parentheses and the
    protocol column lists every unmet condition."""
    intervals = intervals or {}
    rows = []
    for c in comparisons:
        p = c.published
        paper = "-" if p.value is None else f"{p.value:.4f}"
        measured, delta = "-", "-"
        if c.measured:
            mean, std = mean_std([r["metrics"].get(p.metric) for r in c.measured])
            measured = fmt(mean, std) + ci_text(intervals.get(p.key, {}).get(p.metric))
            if c.comparable:
                delta = f"{mean - p.value:+.4f}"
        verdict = "comparable" if c.comparable else "not comparable: " + "; ".join(c.reasons)
        rows.append([p.paper["id"], p.dataset, p.task, p.method, p.shots, arrow(p.metric), f"{paper} ({p.status})",
                     measured if c.comparable or not c.measured else f"({measured})", delta, verdict])
    headers = ["paper", "dataset", "task", "method", "shots", "metric", "paper", "measured", "Δ", "protocol"]
    return render(rows, headers, tablefmt) if rows else "(no published numbers)"
