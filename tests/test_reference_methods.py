"""The reference methods say what their names say: ``pop`` ranks by how often an item occurs,
``item-rate`` by each item's shrunk positive rate, ``majority`` knows nothing about the sample."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from benchmarks import metrics, registry
from benchmarks.contract import CellContext, FitData, without_labels
from benchmarks.data import canonical, protocols


@pytest.fixture(scope="module")
def ctr():
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, "ctr")
    fit = FitData(task="ctr", train=proto.train, train_full=proto.train, valid=without_labels(proto.valid),
                  validate=lambda scores: {}, catalog=data.catalog, protocol=proto.info)
    return fit, proto.test


def _scores(name: str, fit: FitData, test) -> np.ndarray:
    entry = registry.get_entry(name)
    method = entry.load_class()(registry.resolve_config(entry, None), CellContext(seed=1))
    method.fit(fit)
    return np.asarray(method.score(without_labels(test)))


def test_pop_ranks_ctr_samples_by_the_items_training_count(ctr):
    fit, test = ctr
    counts = np.bincount(fit.train["item"], minlength=fit.catalog.n_items)[test["item"]]
    scores = _scores("pop", fit, test)
    assert roc_auc_score(test["label"], scores) == pytest.approx(roc_auc_score(test["label"], counts))
    # calibrated: at least as good a LogLoss on the training samples as the constant positive rate
    train_scores = _scores("pop", fit, fit.train)
    rate = fit.train["label"].mean()
    assert log_loss(fit.train["label"], train_scores) <= log_loss(fit.train["label"], np.full(len(fit.train), rate))


def test_item_rate_is_the_shrunk_positive_rate_of_each_item(ctr):
    fit, test = ctr
    scores = _scores("item-rate", fit, test)
    item = int(test["item"].iloc[0])
    rows = fit.train[fit.train["item"] == item]
    prior, m = fit.train["label"].mean(), 10.0
    assert scores[0] == pytest.approx((rows["label"].sum() + m * prior) / (len(rows) + m))


def test_majority_scores_every_sample_alike_at_the_training_positive_rate(ctr):
    fit, test = ctr
    scores = _scores("majority", fit, test)
    labels = test["label"].to_numpy()
    assert np.all(scores == fit.train["label"].mean())
    got = metrics.compute("ctr", labels, scores)
    assert got["auc"] == 0.5
    majority_label = int(fit.train["label"].mean() >= 0.5)
    assert got["accuracy"] == pytest.approx(np.mean(labels == majority_label))
