"""What RecLoRA's whole-history retrieval pool costs at MovieLens-1M size.

    python -m benchmarks.perf.history_pool                 # ML-1M-sized synthetic ratings, 70,000 + 30,000 samples
    python -m benchmarks.perf.history_pool --samples 2000  # a quick look

The ratings are synthetic with MovieLens-1M's shape (6,040 users, 3,706 items, 1,000,209 ratings, each
user at least 20, per-user counts log-normal around ML-1M's mean of 165.6): the raw file is not on this
machine, and the cost depends on the counts, not on which items they are. Samples are drawn as the ctr
protocol's are (a user's interaction with at least ``min_history`` earlier ones), as many as RecLoRA's
Few2Many trains on (70,000) and its authors score (30,000). Timed, median of ``--repeats``:

* the lookup (:func:`benchmarks.data.protocols.with_full_histories`), which the harness runs once per cell;
* retrieval of K = 10 relevant items (:func:`methods.retrieval.select_history`) from the whole history
  and, for comparison, from the newest 60 (what a card stores), with 30-d item vectors (DIN's size).

Prints the pool sizes (mean, median, p95, max), seconds, and the pool columns' memory.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from benchmarks.data.protocols import with_full_histories
from methods.retrieval import select_history


def synthetic_ratings(users: int = 6040, items: int = 3706, total: int = 1_000_209, seed: int = 0) -> pd.DataFrame:
    """Ratings with MovieLens-1M's per-user count shape, ordered by (user, timestamp, item)."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(20, rng.lognormal(mean=np.log(96.0), sigma=1.0, size=users)).astype(np.int64)
    counts = np.maximum(20, np.round(counts * (total / counts.sum()))).astype(np.int64)
    user = np.repeat(np.arange(users), counts)
    offsets = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    stamp = 956_703_932 + np.repeat(rng.integers(0, 10**7, users), counts) + offsets * 600
    return pd.DataFrame({"user": user, "item": rng.integers(0, items, len(user)),
                         "rating": rng.integers(1, 6, len(user)).astype(np.float32), "timestamp": stamp})


def ctr_samples(ratings: pd.DataFrame, n: int, min_history: int = 5, window: int = 60, seed: int = 1) -> pd.DataFrame:
    """``n`` ctr-like samples with the stored ``history`` window (the newest ``window`` earlier items)."""
    rng = np.random.default_rng(seed)
    user = ratings["user"].to_numpy()
    first = np.searchsorted(user, user, "left")
    eligible = np.flatnonzero(np.arange(len(user)) - first >= min_history)
    rows = np.sort(rng.choice(eligible, size=n, replace=False))
    items, rates = ratings["item"].to_numpy(), ratings["rating"].to_numpy()
    history = [items[max(first[r], r - window): r] for r in rows]
    history_ratings = [rates[max(first[r], r - window): r] for r in rows]
    return pd.DataFrame({"sample_id": np.arange(n), "user": user[rows], "item": items[rows],
                         "timestamp": ratings["timestamp"].to_numpy()[rows], "history": history,
                         "history_ratings": history_ratings})


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.history_pool", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs=2, default=[70_000, 30_000], metavar=("TRAIN", "TEST"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ratings = synthetic_ratings()
    vectors = np.random.default_rng(2).standard_normal((int(ratings["item"].max()) + 1, 30)).astype(np.float32)
    print(f"ratings: {len(ratings):,} from {ratings['user'].nunique():,} users "
          f"(mean {len(ratings) / ratings['user'].nunique():.1f} per user)")
    for label, n in zip(("train", "test"), args.samples):
        samples = ctr_samples(ratings, n)
        lookup, pooled = _median_seconds(lambda s=samples: with_full_histories(ratings, s), args.repeats)
        sizes = pooled["full_history"].str.len().to_numpy()
        memory = sum(a.nbytes for c in ("full_history", "full_history_ratings") for a in pooled[c]) / 2**20
        whole, _ = _median_seconds(lambda p=pooled: select_history(p, 10, "relevant", vectors, "full_history"),
                                   args.repeats)
        window, _ = _median_seconds(lambda p=pooled: select_history(p, 10, "relevant", vectors, "history"),
                                    args.repeats)
        print(f"{label}: {n:,} samples; pool size mean {sizes.mean():.1f}, median {np.median(sizes):.0f}, "
              f"p95 {np.percentile(sizes, 95):.0f}, max {sizes.max()}; {np.mean(sizes > 60):.1%} longer than 60; "
              f"pool columns {memory:.0f} MiB")
        print(f"  lookup {lookup:.2f} s ({lookup / n * 1e6:.1f} us/sample); retrieval of 10 from the whole "
              f"history {whole:.2f} s, from the newest 60 {window:.2f} s (ratio {whole / window:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
