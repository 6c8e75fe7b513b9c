"""The worked example baseline ``itemknn``: its parts against direct computations, and that it works.

(The contract checks every method must pass are in test_conformance.py, which finds it by itself.)
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from baselines.itemknn import ItemKNN, top_k_cosine, user_item_matrix
from benchmarks import registry
from benchmarks.contract import CellContext, FitData, without_labels
from benchmarks.data import canonical, protocols


def fit_on_tiny(task: str, **config) -> tuple[ItemKNN, protocols.FrozenProtocol]:
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, task)
    method = ItemKNN(registry.resolve_config(registry.discover()["itemknn"], config), CellContext(seed=1))
    method.fit(FitData(task=task, train=proto.train, train_full=proto.train, valid=without_labels(proto.valid),
                       validate=lambda scores: {}, catalog=data.catalog, protocol=proto.info))
    return method, proto


def dense_cosine(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.nan_to_num(matrix.T @ matrix / np.outer(norms, norms))
    np.fill_diagonal(cosine, 0.0)
    return cosine


@pytest.mark.parametrize("k", [0, 4])
def test_top_k_cosine_keeps_the_k_largest_true_cosines_per_row(k):
    rng = np.random.default_rng(0)
    matrix = (rng.random((30, 25)) < 0.3).astype(float)
    matrix[:, 3] = 0.0  # an item nobody has
    expected = dense_cosine(matrix)
    got = top_k_cosine(sp.csr_matrix(matrix), k, block=7).toarray()  # 7: rows come in uneven blocks
    if k == 0:
        np.testing.assert_allclose(got, expected, atol=1e-12)
        return
    for row in range(25):
        kept = np.flatnonzero(got[row])
        assert len(kept) <= k
        np.testing.assert_allclose(got[row, kept], expected[row, kept], atol=1e-12)
        dropped = np.setdiff1d(np.arange(25), kept)
        if len(kept):
            assert expected[row, dropped].max(initial=0.0) <= got[row, kept].min() + 1e-12


def test_user_item_matrix_marks_targets_and_histories():
    import pandas as pd

    train = pd.DataFrame({"user": [0, 0, 2], "item": [1, 2, 0], "history": [[3], [3, 1], []]})
    got = user_item_matrix(train, n_items=5).toarray()
    expected = np.zeros((3, 5))
    expected[0, [1, 2, 3]] = 1.0
    expected[2, 0] = 1.0
    np.testing.assert_array_equal(got, expected)


def test_next_item_score_sums_similarities_to_the_recent_history():
    method, proto = fit_on_tiny("next_item", popularity_weight=0.5)
    samples = without_labels(proto.test.iloc[:6])
    got = method.score(samples)
    window = proto.info.params["history_len"]
    similarity = method.similarity.toarray()
    counts = np.bincount(proto.train["item"], minlength=similarity.shape[0])
    for row, (history, candidates) in enumerate(zip(samples["history"], samples["candidates"])):
        for col, candidate in enumerate(candidates):
            expected = sum(similarity[j, candidate] for j in list(history)[-window:])
            expected += 0.5 * counts[candidate] / counts.max()
            assert got[row, col] == pytest.approx(expected, abs=1e-9)


def test_ctr_features_are_the_shrunk_rating_deviation_of_the_neighbours():
    method, proto = fit_on_tiny("ctr", rating_shrinkage=2.0)
    samples = without_labels(proto.test.iloc[:5])
    features = method._ctr_features(samples)
    window = proto.info.params["history_len"]
    similarity = method.similarity.toarray()
    for row, (item, history, rated) in enumerate(zip(samples["item"], samples["history"], samples["history_ratings"])):
        history, rated = list(history)[-window:], np.asarray(rated)[-window:]
        weights = np.array([similarity[j, item] for j in history])
        mean = rated.mean()
        assert features[row, 0] == pytest.approx(mean)
        assert features[row, 1] == pytest.approx((weights * (rated - mean)).sum() / (weights.sum() + 2.0))
    probabilities = method.score(samples)
    assert probabilities.shape == (5,) and np.all((probabilities > 0) & (probabilities < 1))


def test_ctr_refuses_training_samples_of_one_class():
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, "ctr")
    positives = proto.train[proto.train["label"] == 1].reset_index(drop=True)
    method = ItemKNN(ItemKNN.Config(), CellContext(seed=1))
    with pytest.raises(ValueError, match="one class only"):
        method.fit(FitData(task="ctr", train=positives, train_full=positives, valid=without_labels(proto.valid),
                           validate=lambda scores: {}, catalog=data.catalog, protocol=proto.info))


@pytest.mark.slow
def test_itemknn_clears_popularity_on_full_movielens_100k(tmp_path):
    """It really works: on the full protocols (not the 40-user subset) it beats ``pop`` clearly."""
    from benchmarks import suite as suites
    from benchmarks.execution.cell import run_cell

    raw = {"name": "itemknn-check", "version": 1, "description": "", "datasets": ["movielens-100k"],
           "methods": ["itemknn", "pop"], "budget": {"latency_samples": 1, "warmup": 0, "eval_cap": 2000}}
    suite = suites.parse(raw, "test_itemknn")
    (tmp_path / "work").mkdir()
    got = {(c.task, c.method): run_cell(suite, c, tmp_path, "check").metrics for c in suites.cells(suite)}
    assert got["next_item", "itemknn"]["hr@1"] > got["next_item", "pop"]["hr@1"] + 0.1
    assert got["ctr", "itemknn"]["auc"] > got["ctr", "pop"]["auc"] + 0.03
