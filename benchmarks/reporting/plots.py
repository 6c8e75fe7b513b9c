"""Accuracy against cost: one PNG per run, one row of panels per (dataset, task).

Left panel: the task's primary metric (``stats.PRIMARY_METRIC``) against inference latency (p50 at batch
size 1, ms); right panel: against training wall time (s). One point per (method, shots); vertical error
bars are the bootstrap 95% interval over test samples (or ± std over seeds where no score files exist),
horizontal ones ± std over seeds. Costs are on log axes. The Pareto front (points no cheaper point beats
in accuracy) is drawn as a step line. Rendered on matplotlib's Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.metrics import METRICS
from benchmarks.reporting.stats import PRIMARY_METRIC, Interval, mean_std
from benchmarks.reporting.tables import arrow

#: the two cost axes: (timing field, axis label)
COSTS = (("latency_p50_ms", "inference latency p50, batch size 1 (ms)"),
         ("train_seconds", "training wall time (s)"))
FAMILY_MARKERS = {"reference": "s", "conventional": "o", "llm": "^"}


def pareto_front(costs: np.ndarray, values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Indices of the points that no other point dominates (cheaper or equal cost and at least as good
    accuracy, one of them strictly), ordered by cost. NaN points are never on the front."""
    costs, values = np.asarray(costs, dtype=float), np.asarray(values, dtype=float)
    signed = values if higher_is_better else -values
    keep = []
    for i in range(len(costs)):
        if np.isnan(costs[i]) or np.isnan(signed[i]):
            continue
        dominated = (costs <= costs[i]) & (signed >= signed[i]) & ((costs < costs[i]) | (signed > signed[i]))
        if not dominated.any():
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: (costs[i], -signed[i])), dtype=int)


@dataclass(frozen=True)
class Point:
    """One (method, shots) of a (dataset, task) panel."""

    label: str
    family: str
    value: float
    low: float   # error bar ends (value when unknown)
    high: float
    costs: dict[str, tuple[float, float | None]]   # timing field -> (mean, std over seeds)


def points(groups: dict[tuple, list[dict]], intervals: dict[tuple, dict[str, Interval]]) -> dict[tuple, list[Point]]:
    """Plot points per (dataset, task) from grouped records and their bootstrap intervals."""
    panels: dict[tuple, list[Point]] = {}
    for key, rs in groups.items():
        dataset, task, method, shots = key
        metric = PRIMARY_METRIC[task]
        mean, std = mean_std([r["metrics"].get(metric) for r in rs])
        interval = intervals.get(key, {}).get(metric)
        if interval is not None and not np.isnan(interval.low):
            low, high = interval.low, interval.high
        else:
            low, high = (mean - std, mean + std) if std is not None else (mean, mean)
        costs = {field: mean_std([(r.get("timing") or {}).get(field) for r in rs]) for field, _ in COSTS}
        label = method if shots == "full" else f"{method} ({shots})"
        panels.setdefault((dataset, task), []).append(Point(label, rs[0].get("family", ""), mean, low, high, costs))
    return dict(sorted(panels.items()))


def accuracy_cost_figure(panels: dict[tuple, list[Point]], path: Path, title: str = "") -> Path | None:
    """Write the figure to ``path`` (PNG); None when there is nothing to plot."""
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, NullFormatter

    rows, height = len(panels), 3.9   # inches per row; margins below are fixed (no tight_layout: it is slow)
    fig = Figure(figsize=(6.2 * len(COSTS), height * rows + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(COSTS), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, wspace=0.22, hspace=0.42 if rows > 1 else 0.2,
                        bottom=0.6 / (height * rows + 0.5), top=1 - 0.55 / (height * rows + 0.5))
    for row, ((dataset, task), pts) in enumerate(panels.items()):
        metric = PRIMARY_METRIC[task]
        for col, (field, xlabel) in enumerate(COSTS):
            ax = axes[row][col]
            xs = np.array([p.costs[field][0] for p in pts], dtype=float)
            xs = np.where(xs > 0, xs, np.nan)   # log axis: a zero or missing cost cannot be placed
            for p, x in zip(pts, xs):
                if np.isnan(x) or np.isnan(p.value):
                    continue
                xstd = p.costs[field][1]
                ax.errorbar(x, p.value, yerr=[[p.value - p.low], [p.high - p.value]],
                            xerr=None if xstd is None else [[min(xstd, 0.999 * x)], [xstd]],
                            fmt=FAMILY_MARKERS.get(p.family, "D"), capsize=3, label=p.label)
                ax.annotate(p.label, (x, p.value), textcoords="offset points", xytext=(5, 4), fontsize=8)
            front = pareto_front(xs, [p.value for p in pts], METRICS[metric].higher_is_better)
            if len(front) > 1:
                ax.plot(xs[front], [pts[i].value for i in front], drawstyle="steps-post", color="0.4",
                        linestyle="--", linewidth=1, label="Pareto front")
            if not np.isnan(xs).all():
                ax.set_xscale("log")   # plain tick labels: the default mathtext ones are slow to lay out
                ax.xaxis.set_major_formatter(LogFormatter())
                narrow = np.nanmax(xs) / np.nanmin(xs) < 10   # under a decade: label minor ticks too
                ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False) if narrow else NullFormatter())
            ax.margins(x=0.12)   # room for the labels of the outermost points
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{arrow(metric)} (95% CI)")
            ax.set_title(f"{dataset} / {task}", fontsize=10)
            ax.grid(True, alpha=0.3)
        if axes[row][0].get_legend_handles_labels()[0]:
            axes[row][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    return path
