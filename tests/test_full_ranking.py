"""Full-ranking next_item metrics against scikit-learn's, and in the ci run's records and tables."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score, top_k_accuracy_score

from benchmarks.execution import full_ranking


def test_full_ranking_metrics_match_scikit_learn_with_the_users_other_items_excluded():
    rng = np.random.default_rng(0)
    n, n_items = 60, 45
    scores = rng.random((n, n_items))  # continuous: no ties, so every library ranks alike
    users = rng.integers(0, 12, n)
    targets = rng.integers(0, n_items, n)
    seen = {u: rng.choice(n_items, 8, replace=False) for u in range(12)}
    for row, (user, target) in enumerate(zip(users, targets)):
        scores[row, seen[user][seen[user] != target]] += 1.0  # seen items on top: excluding them matters
    got = full_ranking.metrics_from_ranks(full_ranking.target_ranks(scores, users, targets, seen))

    hits, gains, reciprocal = [], [], []
    for row, (user, target) in enumerate(zip(users, targets)):
        keep = np.setdiff1d(np.arange(n_items), seen[user][seen[user] != target])
        values, truth = scores[row, keep][None, :], (keep == target).astype(int)[None, :]
        label = int(np.flatnonzero(keep == target)[0])
        hits.append(top_k_accuracy_score([label], values, k=10, labels=np.arange(len(keep))))
        gains.append(ndcg_score(truth, values, k=10))
        reciprocal.append(label_ranking_average_precision_score(truth, values))
    assert got["hr@10"] == pytest.approx(np.mean(hits))
    assert got["ndcg@10"] == pytest.approx(np.mean(gains))
    assert got["mrr"] == pytest.approx(np.mean(reciprocal))
    no_exclusion = full_ranking.metrics_from_ranks(full_ranking.target_ranks(scores, users, targets, {}))
    assert no_exclusion["mrr"] < got["mrr"]  # the planted seen items push the targets down unless excluded


def test_ties_count_against_the_target_and_nan_rows_score_zero():
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [np.nan] * 4])
    ranks = full_ranking.target_ranks(scores, np.array([0, 1]), np.array([1, 0]), {})
    assert ranks.tolist() == [2, -1]
    assert full_ranking.metrics_from_ranks(ranks)["mrr"] == pytest.approx((1 / 3) / 2)


def test_ci_records_carry_full_ranking_for_catalogue_scorers_and_the_table_gives_kendalls_tau(ci_records, ci_run):
    for r in (r for r in ci_records if r["task"] == "next_item"):
        full = r["full_ranking"]
        if r["family"] == "llm":
            assert full is None
        else:
            assert set(full["metrics"]) == {"hr@10", "ndcg@10", "mrr"} and full["n_items"] > 20
            assert full["metrics"]["hr@10"] <= r["metrics"]["hr@10"]  # 20 candidates are easier than all items
    text = (ci_run[0] / "accuracy.md").read_text()
    assert "sampled against full ranking" in text and "Kendall's τ" in text
