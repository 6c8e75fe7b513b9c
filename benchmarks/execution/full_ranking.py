"""Full-ranking evaluation of next_item beside the sampled one (Krichene & Rendle, KDD 2020: sampled
metrics can reorder models against the full ranking).

In the cell's process, for a method of a family that can score any item (:data:`FAMILIES`; LLM
methods read their candidates from the prompt, so they stay candidate-based), the harness calls the
method's own ``score`` on the test samples with ``candidates`` replaced by the whole catalogue, in
batches, timed apart from the method's latency and throughput (``timing.full_ranking_seconds``).
The scores travel to the evaluation half as float32; catalogues too large for that
(:data:`MAX_SCORES` scores) are skipped, and the record says so.

In the evaluation half the user's other interactions (every item the user interacted with, except
the target) are excluded, the target's rank counts every remaining item scored at least as high
(ties count against the target, as for the sampled metrics), and HR@10, NDCG@10 and MRR follow.
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pandas as pd

from benchmarks.data import canonical

FAMILIES = ("conventional", "reference")
MAX_SCORES = 50_000_000  # float32 scores shipped from the cell: 200 MB
K = 10
METRIC_NAMES = (f"hr@{K}", f"ndcg@{K}", "mrr")


def applies(task: str, family: str) -> bool:
    return task == "next_item" and family in FAMILIES


def score_catalogue(method, samples: pd.DataFrame, n_items: int, batch_size: int) -> tuple[np.ndarray, float]:
    """``[n, n_items]`` float32 scores of every sample against every item, and the seconds it took."""
    everything = np.arange(n_items, dtype=np.int64)
    start = time.perf_counter()
    out = np.empty((len(samples), n_items), dtype=np.float32)
    for begin in range(0, len(samples), batch_size):
        part = samples.iloc[begin: begin + batch_size].copy()
        part["candidates"] = [everything] * len(part)
        out[begin: begin + len(part)] = np.asarray(method.score(part), dtype=np.float32)
    return out, time.perf_counter() - start


@lru_cache(maxsize=2)
def _interactions(dataset: str, tiny: bool) -> pd.DataFrame:
    inter = canonical.load(dataset, tiny=tiny).interactions
    return inter[["user", "item"]].drop_duplicates()


def seen_items(dataset: str, tiny: bool) -> dict[int, np.ndarray]:
    """user -> every item the user interacted with (from the canonical interactions)."""
    inter = _interactions(dataset, tiny)
    return {int(user): group.to_numpy() for user, group in inter.groupby("user")["item"]}


def target_ranks(scores: np.ndarray, users: np.ndarray, targets: np.ndarray, seen: dict[int, np.ndarray]) -> np.ndarray:
    """0-based rank of each target among all items, the user's other items excluded, ties counted above
    it; -1 where a row holds NaN."""
    scores = np.array(scores, dtype=np.float64)
    ranks = np.empty(len(scores), dtype=np.int64)
    for row, (user, target) in enumerate(zip(users, targets)):
        values = scores[row]
        if np.isnan(values).any():
            ranks[row] = -1
            continue
        other = seen.get(int(user), np.zeros(0, dtype=np.int64))
        values[other[other != target]] = -np.inf
        at_least = values >= values[target]
        ranks[row] = int(at_least.sum()) - 1  # the target itself is counted once
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@K, NDCG@K and MRR (an invalid row, rank -1, counts 0 in each)."""
    valid = ranks >= 0
    hit = valid & (ranks < K)
    ndcg = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    mrr = np.where(valid, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)
    return {f"hr@{K}": float(hit.mean()), f"ndcg@{K}": float(ndcg.mean()), "mrr": float(mrr.mean())}
