"""Every metric the benchmark reports, in one module, for LLM and conventional methods alike.

Each metric is registered with its task, whether higher is better (the tables show an arrow from
it) and a per-sample form where one exists (for bootstrap confidence intervals). Methods never call
this module; the harness does, on the scores a method returned.

Ranking ties (next_item) are broken against the target: a candidate scored equal to the target
counts as ranked above it. A constant scorer therefore gets HR@k = 0 instead of 1, and no method
gains from ties.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

_EPS = 1e-7


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]
    #: per-sample values whose mean is the metric (None when the metric is not a mean, e.g. AUC)
    per_sample: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


METRICS: dict[str, Metric] = {}


def _register(name: str, task: str, higher_is_better: bool, per_sample=None):
    def wrap(fn):
        METRICS[name] = Metric(name, task, higher_is_better, fn, per_sample)
        return fn
    return wrap


# ---------------------------------------------------------------------------------------------- ctr


@_register("auc", "ctr", True)
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, the Mann-Whitney form with average ranks for ties:
    AUC = (sum of positive ranks - P(P+1)/2) / (P N). NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logloss_terms(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@_register("logloss", "ctr", False, per_sample=_logloss_terms)
def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary cross-entropy -mean(y log p + (1-y) log(1-p)), p clipped to [1e-7, 1-1e-7]."""
    return float(_logloss_terms(labels, scores).mean())


def _correct(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return ((np.asarray(scores) >= 0.5) == np.asarray(labels).astype(bool)).astype(np.float64)


@_register("accuracy", "ctr", True, per_sample=_correct)
def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Share of samples where (p >= 0.5) equals the label."""
    return float(_correct(labels, scores).mean())


# -------------------------------------------------------------------------------------- next_item


def target_rank(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """0-based rank of the target among the candidates (ties counted above it); -1 for invalid rows
    (any NaN score: a generation that matched no candidate)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    target = scores[np.arange(len(scores)), labels][:, None]
    others = np.ones_like(scores, dtype=bool)
    others[np.arange(len(scores)), labels] = False
    rank = ((scores >= target) & others).sum(axis=1)
    rank[np.isnan(scores).any(axis=1)] = -1
    return rank


def _hit(k: int):
    def per_sample(labels, scores):
        rank = target_rank(labels, scores)
        return ((rank >= 0) & (rank < k)).astype(np.float64)
    return per_sample


def _ndcg(k: int):
    def per_sample(labels, scores):
        rank = target_rank(labels, scores)
        gain = 1.0 / np.log2(np.maximum(rank, 0) + 2.0)
        return np.where((rank >= 0) & (rank < k), gain, 0.0)
    return per_sample


def _valid(labels, scores):
    return (~np.isnan(np.asarray(scores, dtype=np.float64)).any(axis=1)).astype(np.float64)


def _mean_of(per_sample):
    return lambda labels, scores: float(per_sample(labels, scores).mean())


for _k in (1, 5, 10):
    _register(f"hr@{_k}", "next_item", True, per_sample=_hit(_k))(_mean_of(_hit(_k)))
for _k in (5, 10):
    _register(f"ndcg@{_k}", "next_item", True, per_sample=_ndcg(_k))(_mean_of(_ndcg(_k)))
_register("valid_ratio", "next_item", True, per_sample=_valid)(_mean_of(_valid))

#: what the tables show per task, in order (HR@1 denominator = all samples, invalid = miss)
REPORTED = {
    "ctr": ("auc", "logloss", "accuracy"),
    "next_item": ("hr@1", "hr@5", "ndcg@5", "valid_ratio"),
}


def check_scores(task: str, scores: np.ndarray, n: int, n_candidates: int | None = None) -> np.ndarray:
    """The one rule for a method's scores, applied by the harness in every cell and by conformance:
    ctr: shape ``[n]``, probabilities in [0, 1], no NaN; next_item: shape ``[n, C]``, each row all
    finite, or all NaN (an answer that matched no candidate). Raises ValueError saying what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    if task == "ctr":
        if scores.shape != (n,):
            raise ValueError(f"ctr scores must have shape ({n},), got {scores.shape}")
        if np.isnan(scores).any() or (scores < 0).any() or (scores > 1).any():
            raise ValueError("ctr scores must be probabilities in [0, 1] with no NaN")
    else:
        if scores.shape != (n, n_candidates):
            raise ValueError(f"next_item scores must have shape ({n}, {n_candidates}), got {scores.shape}")
        if np.isinf(scores).any():
            raise ValueError("next_item scores must be finite (NaN marks an invalid answer)")
        partial = np.isnan(scores).any(axis=1) & ~np.isnan(scores).all(axis=1)
        if partial.any():
            raise ValueError(f"next_item rows {np.flatnonzero(partial)[:10].tolist()} mix NaN and numbers: a row "
                             "is all finite, or all NaN for an answer that matched no candidate")
    return scores


def compute(task: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """All metrics of ``task``."""
    return {name: m.fn(labels, scores) for name, m in METRICS.items() if m.task == task}
