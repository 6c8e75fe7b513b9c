"""Metrics against independent implementations (scikit-learn, hand-computed ranking cases)."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from benchmarks import metrics


@pytest.mark.parametrize("seed", range(5))
def test_ctr_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 1)  # heavy ties
    assert metrics.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.logloss(labels, scores) == pytest.approx(
        log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)), rel=1e-9)
    assert metrics.accuracy(labels, scores) == pytest.approx(accuracy_score(labels, scores >= 0.5))


def test_auc_single_class_is_nan():
    assert np.isnan(metrics.auc(np.ones(5), np.linspace(0, 1, 5)))


def test_ranking_by_hand():
    # target index per row: 0, 2, 1, 3(invalid row)
    labels = np.array([0, 2, 1, 3])
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],     # target best -> rank 0
        [0.9, 0.8, 0.7, 0.1],     # target third -> rank 2
        [0.5, 0.5, 0.1, 0.0],     # tie with target -> counted above it -> rank 1
        [np.nan] * 4,             # generation matched nothing
    ])
    assert metrics.target_rank(labels, scores).tolist() == [0, 2, 1, -1]
    out = metrics.compute("next_item", labels, scores)
    assert out["hr@1"] == pytest.approx(1 / 4)          # denominator = all samples
    assert out["hr@5"] == pytest.approx(3 / 4)
    assert out["valid_ratio"] == pytest.approx(3 / 4)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 4)


def test_ranking_matches_argsort_without_ties():
    rng = np.random.default_rng(3)
    scores = rng.random((200, 20))
    labels = rng.integers(0, 20, 200)
    order = np.argsort(-scores, axis=1)
    ranks = np.array([np.flatnonzero(order[i] == labels[i])[0] for i in range(200)])
    for k in (1, 5, 10):
        assert metrics.METRICS[f"hr@{k}"].fn(labels, scores) == pytest.approx(np.mean(ranks < k))
    assert metrics.METRICS["ndcg@10"].fn(labels, scores) == pytest.approx(
        np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0)))


def test_constant_scores_get_no_credit():
    labels = np.zeros(10, dtype=int)
    assert metrics.METRICS["hr@1"].fn(labels, np.ones((10, 20))) == 0.0


def test_check_scores_rejects_bad_shapes_and_ranges():
    with pytest.raises(ValueError, match="shape"):
        metrics.check_scores("ctr", np.zeros((3, 1)), 3)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.check_scores("ctr", np.array([0.2, 1.5]), 2)
    with pytest.raises(ValueError, match="finite"):
        metrics.check_scores("next_item", np.full((2, 3), np.inf), 2, 3)
