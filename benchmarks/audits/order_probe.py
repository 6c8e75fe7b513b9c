"""Candidate-order probe of LLM next_item methods: does the answer depend on where the target is listed?

LLMs that rank a candidate list favour some positions over others (Hou et al., "Large Language Models
are Zero-Shot Rankers for Recommender Systems", ECIR 2024, Sec. 4.2). The frozen protocol lists the
candidates in a seeded random order (its audit tests the target's position against uniform); this
probe measures how much a method's answer moves when only that order changes. After the method has
scored the test samples, the harness re-scores a frozen subset of them (the suite's
``budget.order_probe_samples``, 200 by default; the same for every method and seed) twice: with every
candidate list reversed, and with a second seeded shuffle. The scores come back in each list's own
order and are put back in the frozen order, so that per ordering the record says:

* ``top1_changed``: the share of samples whose top-scored candidate (the method's answer) is another
  item than with the frozen order (an answer that matched no candidate counts as one more choice);
* ``delta_hr@1``: HR@1 under that ordering minus HR@1 under the frozen order on the same samples, with
  a 95% paired t interval over the per-sample differences.

The probe's calls are timed on their own (``timing.order_probe_seconds``) and never enter the method's
latency or throughput. A method that reads only the set of candidates (every conventional one) gives
the same scores in every order: both figures are zero by construction.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from benchmarks import metrics

ORDERINGS = ("reversed", "shuffled")


def applies(task: str, family: str) -> bool:
    """The probe runs for LLM methods on next_item (a conventional scorer is order-invariant by construction)."""
    return task == "next_item" and family == "llm"


def permutations(candidates: list[np.ndarray], key: str) -> dict[str, np.ndarray]:
    """Per ordering, ``[n, C]``: position j of the new list shows candidate ``perm[i, j]`` of the frozen one."""
    n, width = len(candidates), len(candidates[0]) if candidates else 0
    rng = np.random.default_rng(int(hashlib.sha256(f"{key}/order-probe".encode()).hexdigest()[:8], 16))
    shuffled = np.argsort(rng.random((n, width)), axis=1)
    return {"reversed": np.tile(np.arange(width)[::-1], (n, 1)), "shuffled": shuffled}


def rescore(score: Callable[[pd.DataFrame], np.ndarray], samples: pd.DataFrame,
            key: str) -> tuple[float, dict[str, np.ndarray]]:
    """Score ``samples`` (a frozen test subset, no labels) under each ordering.

    Returns:
        ``(seconds, {"sample_id", <ordering>: [n, C] scores in the frozen candidate order})``.
    """
    frozen = [np.asarray(c, dtype=np.int64) for c in samples["candidates"]]
    out: dict[str, np.ndarray] = {"sample_id": samples["sample_id"].to_numpy()}
    start = time.perf_counter()
    for name, perm in permutations(frozen, key).items():
        shown = samples.assign(candidates=[c[p] for c, p in zip(frozen, perm)])
        scores = np.asarray(score(shown), dtype=np.float64)
        back = np.empty_like(scores)
        np.put_along_axis(back, perm, scores, axis=1)  # back[i, perm[i, j]] = scores[i, j]
        out[name] = back
    return time.perf_counter() - start, out


def _choices(scores: np.ndarray) -> np.ndarray:
    """The top-scored candidate's position per row; -1 where the row is NaN (no candidate matched)."""
    invalid = np.isnan(scores).any(axis=1)
    return np.where(invalid, -1, np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1))


def _paired_interval(differences: np.ndarray) -> list[float]:
    """95% t interval of the mean of per-sample differences (a point when they are all equal)."""
    from scipy import stats

    mean = float(differences.mean())
    if len(differences) < 2 or np.all(differences == differences[0]):
        return [mean, mean]
    low, high = stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
    return [float(low), float(high)]


def summarize(frozen_scores: np.ndarray, probed: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """The record's ``order_probe``: samples, HR@1 in the frozen order, and per ordering the share of
    changed answers and ΔHR@1 with its paired interval. ``frozen_scores`` and ``labels`` are those of
    ``probed["sample_id"]``."""
    hit = metrics.METRICS["hr@1"].per_sample
    base_hits, base_choice = hit(labels, frozen_scores), _choices(frozen_scores)
    result = {"samples": int(len(labels)), "hr@1": float(base_hits.mean())}
    for name in ORDERINGS:
        scores = metrics.check_scores("next_item", probed[name], len(labels), frozen_scores.shape[1])
        difference = hit(labels, scores) - base_hits
        result[name] = {"top1_changed": float((_choices(scores) != base_choice).mean()),
                        "hr@1": float(hit(labels, scores).mean()), "delta_hr@1": float(difference.mean()),
                        "delta_interval": _paired_interval(difference)}
    return result
