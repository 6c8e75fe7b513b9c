"""Statistics for reports: mean ± std over seeds, bootstrap confidence intervals over test samples, and
paired comparisons between two methods scored on the same samples.

Bootstrap (percentile method, Efron & Tibshirani 1993, ch. 13): ``N_RESAMPLES`` resamples of the test
samples, drawn with replacement from a generator seeded with ``SEED``, so the same scores always give
the same interval. A resample is a row of counts (how often each sample was drawn), and every metric is
evaluated as a count-weighted metric for all resamples at once:

* metrics that are a mean of per-sample values (LogLoss, accuracy, HR@k, NDCG@k, ValidRatio):
  ``counts @ values / n``;
* AUC, which is not a mean over samples: the Mann-Whitney statistic over every (positive, negative)
  pair of the resample, each pair weighted by ``w_i * w_j`` and ties counted 1/2 (the pairs of the
  resampled set, not a per-sample mean). A resample with a single class gives NaN and is skipped.

Seeds (a two-level bootstrap: test samples, then seeds). With S > 1 seeds scored on the same test
samples, every resample draws the samples' counts (shared by all seeds: they scored the same samples)
and S seeds with replacement. The statistic is the seed mean; the drawn seeds enter through their
deviations from that resample's seed mean, scaled by sqrt(S / (S - 1)), so that the seed part of the
bootstrap variance is the unbiased s^2 / S rather than the plain bootstrap's (S - 1) / S of it (which
is a third too small at S = 3). The interval so covers both the test samples a researcher happened to
score and the training seeds they happened to use. With one seed it is the test-sample bootstrap.

Paired comparison: both methods are evaluated on the SAME resampled counts (samples matched by
``sample_id``), so the interval of the difference keeps the correlation between the methods. Their
seeds are drawn independently (two methods' seeds are separate training runs), or, with
``paired_seeds``, as one draw of seed indices for both: for two runs of one method that differ in one
setting, where seed i of A and of B share the few-shot subset and the initialization.

p-value of a paired comparison: two-sided, from the bootstrap distribution of the difference,
``min(1, 2 (min(#{diff <= 0}, #{diff >= 0}) + 1) / (B + 1))`` (the +1 keeps it above zero with B
resamples). A table of many comparisons reports Holm-Bonferroni-adjusted p-values (:func:`holm`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmarks import records
from benchmarks.metrics import METRICS, REPORTED

N_RESAMPLES = 1000
SEED = 20240601
LEVEL = 0.95

#: the metric that plots, "best" marks and paired comparisons use for each task
PRIMARY_METRIC = {"ctr": "auc", "next_item": "hr@1"}


def shots_order(shots) -> tuple:
    """Sort key for a few-shot size as records and group keys carry it (int or its string, or "full"):
    numeric order, "full" last, so a curve reads 16, 64, 256, full rather than 16, 256, 64."""
    text = str(shots)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def mean_std(values: list[float | None]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of the non-missing values; std is None below 2 values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return float("nan"), None
    return float(np.mean(arr)), (float(np.std(arr, ddof=1)) if arr.size > 1 else None)


@lru_cache(maxsize=2)
def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Counts of each of ``n`` samples in each bootstrap resample: a read-only float64 array of shape
    [n_resamples, n], every row summing to ``n``. A pure function of (n, n_resamples, seed), cached
    because every group and metric of a table with the same ``n`` reuses it."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n), dtype=np.int64)
    flat = (draws + np.arange(n_resamples, dtype=np.int64)[:, None] * n).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def weighted_auc(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of every resample: ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``.

    Args:
        labels: [n] 0/1; scores: [n]; counts: [B, n] sample weights.
    Returns:
        [B] AUC per resample, NaN where a resample holds a single class.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    positive = np.asarray(labels)[order].astype(bool)
    w = counts[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]   # first position of each tie group
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)   # [B, groups]
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg                                 # negatives strictly below
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_metric(name: str, labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Metric ``name`` on every resample ([B] values) given per-sample ``counts`` [B, n]."""
    metric = METRICS[name]
    if name == "auc":
        return weighted_auc(labels, scores, counts)
    if metric.per_sample is None:
        raise ValueError(f"metric '{name}' has no per-sample form and no weighted form in "
                         "benchmarks/reporting/stats.py")
    values = metric.per_sample(labels, scores)
    return counts @ values / counts.shape[1]


@lru_cache(maxsize=8)
def seed_draws(n_seeds: int, n_resamples: int = N_RESAMPLES, seed: int = SEED, stream: int = 0) -> np.ndarray:
    """[n_resamples, n_seeds] indices of the seeds each resample draws, with replacement (read-only).
    ``stream`` gives an independent draw (method B of a comparison whose seeds are not paired)."""
    draws = np.random.default_rng([seed, n_seeds, stream]).integers(0, n_seeds, size=(n_resamples, n_seeds))
    draws.flags.writeable = False
    return draws


def resampled_seed_mean(per_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """[B] seed means of ``per_seed`` ([S, B]: each seed's metric on each resample) with the seeds of
    ``draws`` ([B, S]): the resample's seed mean plus the drawn seeds' mean deviation from it, scaled
    by sqrt(S / (S - 1)) (module docstring). One seed: its values."""
    n_seeds = per_seed.shape[0]
    mean = per_seed.mean(axis=0)
    if n_seeds == 1:
        return mean
    deviations = (per_seed - mean).T  # [B, S]
    return mean + np.sqrt(n_seeds / (n_seeds - 1)) * np.take_along_axis(deviations, draws, axis=1).mean(axis=1)


def _per_seed(name: str, labels: np.ndarray, runs: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    return np.stack([weighted_metric(name, labels, scores, counts) for scores in runs])


@dataclass(frozen=True)
class Interval:
    """A point estimate (seed mean on the full test set) and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    n: int          # test samples
    resamples: int  # resamples with a defined value (AUC drops single-class resamples)


def bootstrap_interval(name: str, labels: np.ndarray, runs: list[np.ndarray], *, n_resamples: int = N_RESAMPLES,
                       seed: int = SEED, level: float = LEVEL) -> Interval:
    """Percentile interval of metric ``name`` (mean over the seeds' ``runs``, each scored on the same
    ``labels``, in the same sample order), over test samples and seeds (module docstring)."""
    labels = np.asarray(labels)
    estimate = float(np.mean([METRICS[name].fn(labels, scores) for scores in runs]))
    per_seed = _per_seed(name, labels, runs, resample_counts(len(labels), n_resamples, seed))
    values = resampled_seed_mean(per_seed, seed_draws(len(runs), n_resamples, seed))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(estimate, float("nan"), float("nan"), len(labels), 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), len(labels), int(values.size))


@dataclass(frozen=True)
class Paired:
    """A versus B on the same samples. ``delta`` = metric(A) - metric(B) on the full test set, with its
    bootstrap percentile interval; ``p_a_better`` = share of resamples where A is better in the metric's
    direction (ties count one half, so identical inputs give 0.5 and a zero-width interval at 0);
    ``p_value`` the two-sided bootstrap p-value of Δ = 0 (module docstring), ``p_holm`` the same
    Holm-adjusted within the table it is shown in (None until :func:`holm_adjusted` sets it)."""

    metric: str
    delta: float
    low: float
    high: float
    p_a_better: float
    n: int
    p_value: float = float("nan")
    p_holm: float | None = None


def paired_bootstrap(name: str, labels: np.ndarray, runs_a: list[np.ndarray], runs_b: list[np.ndarray], *,
                     paired_seeds: bool = False, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> Paired:
    """Paired bootstrap of metric ``name`` between methods A and B (seed means), same samples, same order;
    seeds drawn independently for A and B, or (``paired_seeds``: runs_a[i] and runs_b[i] share seed i)
    as one draw of seed indices applied to the per-seed differences.

    Raises:
        ValueError: ``paired_seeds`` with different numbers of seeds in A and B.
    """
    labels = np.asarray(labels)
    counts = resample_counts(len(labels), n_resamples, seed)
    delta = float(np.mean([METRICS[name].fn(labels, s) for s in runs_a])
                  - np.mean([METRICS[name].fn(labels, s) for s in runs_b]))
    per_a, per_b = _per_seed(name, labels, runs_a, counts), _per_seed(name, labels, runs_b, counts)
    if paired_seeds:
        if len(runs_a) != len(runs_b):
            raise ValueError(f"paired seeds need as many runs in A as in B ({len(runs_a)} and {len(runs_b)})")
        diff = resampled_seed_mean(per_a - per_b, seed_draws(len(runs_a), n_resamples, seed))
    else:
        diff = (resampled_seed_mean(per_a, seed_draws(len(runs_a), n_resamples, seed))
                - resampled_seed_mean(per_b, seed_draws(len(runs_b), n_resamples, seed, stream=1)))
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return Paired(name, delta, float("nan"), float("nan"), float("nan"), len(labels))
    better = diff > 0 if METRICS[name].higher_is_better else diff < 0
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    extreme = min(int((diff <= 0).sum()), int((diff >= 0).sum()))
    p_value = min(1.0, 2 * (extreme + 1) / (diff.size + 1))
    return Paired(name, delta, float(low), float(high), float(better.mean() + 0.5 * (diff == 0).mean()), len(labels),
                  p_value)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order: the i-th smallest of m is
    multiplied by m - i + 1 (i from 1), then made non-decreasing in that order and capped at 1. A
    comparison is significant at level alpha, with the family-wise error rate kept at alpha, when its
    adjusted p-value is at most alpha. NaN stays NaN and does not count in m."""
    values = np.asarray(p_values, dtype=float)
    adjusted = np.full(values.shape, np.nan)
    known = np.flatnonzero(~np.isnan(values))
    order = known[np.argsort(values[known], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def holm_adjusted(rows: list[PairedRow]) -> list[PairedRow]:
    """``rows`` with ``result.p_holm`` set: the Holm adjustment over every comparison in ``rows`` (one table)."""
    adjusted = holm([row.result.p_value for row in rows])
    return [replace(row, result=replace(row.result, p_holm=None if np.isnan(p) else p))
            for row, p in zip(rows, adjusted)]


@dataclass(frozen=True)
class GroupScores:
    """Per-sample scores of the seeds of one (dataset, task, method, shots) group, aligned on ``sample_id``."""

    sample_id: np.ndarray
    labels: np.ndarray
    runs: list[np.ndarray]


def load_group(run_dir: Path, group: list[dict]) -> GroupScores | None:
    """The score files of ``group`` (records of one group, ok status), restricted to the sample ids every
    seed scored and put in sample-id order. None if any score file is missing.

    Raises:
        ValueError: if two seeds disagree on the label of a sample (their protocols differ).
    """
    loaded = []
    for record in group:
        try:
            loaded.append(records.load_scores(run_dir, record["cell"]))
        except FileNotFoundError:
            return None
    common = loaded[0]["sample_id"]
    for data in loaded[1:]:
        common = np.intersect1d(common, data["sample_id"])
    common = np.sort(common)
    labels, runs = None, []
    for record, data in zip(group, loaded):
        order = np.argsort(data["sample_id"])
        position = order[np.searchsorted(data["sample_id"], common, sorter=order)]
        if labels is None:
            labels = data["label"][position]
        elif not np.array_equal(labels, data["label"][position]):
            raise ValueError(f"{run_dir}: {record['cell']}: labels differ from the other seeds of its group")
        runs.append(data["score"][position])
    return GroupScores(common, labels, runs)


def align(a: GroupScores, b: GroupScores) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Labels and runs of A and B restricted to the samples both scored, in the same order.

    Raises:
        ValueError: if a shared sample has different labels in A and B (they ran different protocols).
    """
    common, ia, ib = np.intersect1d(a.sample_id, b.sample_id, return_indices=True)
    if not np.array_equal(a.labels[ia], b.labels[ib]):
        raise ValueError("the two groups disagree on labels of shared samples: different protocols")
    return a.labels[ia], [r[ia] for r in a.runs], [r[ib] for r in b.runs]


@dataclass(frozen=True)
class PairedRow:
    """A paired comparison of methods ``a`` and ``b`` in one (dataset, task, shots); ``a_group`` and
    ``b_group`` are their (dataset, task, method, shots) group keys."""

    dataset: str
    task: str
    shots: str
    a: str
    b: str
    result: Paired
    a_group: tuple = ()
    b_group: tuple = ()


@dataclass(frozen=True)
class RunStatistics:
    """Bootstrap intervals per group and metric, and paired comparisons, of one run folder.

    ``paired``: within each (dataset, task, shots), the best method against every other.
    ``llm_vs_conventional``: the benchmark's question, per (dataset, task): the best LLM group (any
    shots) against the best conventional group (any shots), on the same test samples; their shots go
    in the method names (``tallrec@64``)."""

    intervals: dict[tuple, dict[str, Interval]]
    paired: list[PairedRow]
    llm_vs_conventional: list[PairedRow]
    health: dict[tuple, list[str]] = field(default_factory=dict)  # group -> marks (benchmarks.reporting.health)


def _badness(metric: str, value: float) -> float:
    """Sort key: the better the value in the metric's direction, the smaller; NaN last."""
    if np.isnan(value):
        return np.inf
    return -value if METRICS[metric].higher_is_better else value


def run_statistics(run_dir: Path, groups: dict[tuple, list[dict]]) -> RunStatistics:
    """Intervals for every group (key: dataset, task, method, shots) whose score files exist; in each
    (dataset, task, shots) the best method by ``PRIMARY_METRIC`` paired against every other; and in
    each (dataset, task) the best LLM group paired against the best conventional one."""
    scores = {key: load_group(run_dir, rs) for key, rs in groups.items()}
    scores = {key: s for key, s in scores.items() if s is not None}
    intervals = {key: {name: bootstrap_interval(name, s.labels, s.runs) for name in REPORTED[key[1]]}
                 for key, s in scores.items()}
    by_setting: dict[tuple, list[tuple]] = {}
    for key in scores:
        by_setting.setdefault((key[0], key[1], key[3]), []).append(key)
    paired = []
    for (dataset, task, shots), keys in sorted(by_setting.items(), key=lambda kv: (*kv[0][:2], shots_order(kv[0][2]))):
        metric = PRIMARY_METRIC[task]
        ranked = sorted(keys, key=lambda k: _badness(metric, intervals[k][metric].estimate))
        best = ranked[0]
        for other in ranked[1:]:
            labels, runs_a, runs_b = align(scores[best], scores[other])
            paired.append(PairedRow(dataset, task, shots, best[2], other[2],
                                    paired_bootstrap(metric, labels, runs_a, runs_b), best, other))
    from benchmarks.reporting import health

    headline = _llm_vs_conventional(scores, intervals, groups)
    marks = {key: health.flags(PRIMARY_METRIC[key[1]], intervals[key].get(PRIMARY_METRIC[key[1]]), s.runs, key[1])
             for key, s in scores.items()}
    return RunStatistics(intervals, holm_adjusted(paired), holm_adjusted(headline), marks)


def _llm_vs_conventional(scores: dict, intervals: dict, groups: dict[tuple, list[dict]]) -> list[PairedRow]:
    best: dict[tuple, dict[str, tuple]] = {}
    for key in scores:
        family = groups[key][0].get("family")
        if family not in ("llm", "conventional"):
            continue
        metric = PRIMARY_METRIC[key[1]]
        current = best.setdefault((key[0], key[1]), {}).get(family)
        if current is None or _badness(metric, intervals[key][metric].estimate) < \
                _badness(metric, intervals[current][metric].estimate):
            best[(key[0], key[1])][family] = key
    rows = []
    for (dataset, task), by_family in sorted(best.items()):
        if len(by_family) < 2:
            continue
        llm, conventional = by_family["llm"], by_family["conventional"]
        labels, runs_a, runs_b = align(scores[llm], scores[conventional])
        a_name, b_name = f"{llm[2]}@{llm[3]}", f"{conventional[2]}@{conventional[3]}"
        rows.append(PairedRow(dataset, task, "best of each", a_name, b_name,
                              paired_bootstrap(PRIMARY_METRIC[task], labels, runs_a, runs_b), llm, conventional))
    return rows
