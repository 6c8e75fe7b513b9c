"""The candidate-order probe (benchmarks/audits/order_probe.py): a conventional method is order-invariant (both
figures exactly zero), a scorer that favours the first listed candidate is caught, and the scores come back
in the frozen candidate order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import registry
from benchmarks.audits import order_probe
from benchmarks.contract import CellContext, FitData, without_labels
from benchmarks.data import canonical, protocols


@pytest.fixture(scope="module")
def tiny():
    data = canonical.load("movielens-100k", tiny=True)
    return data, protocols.load(data, "next_item")


def fitted(name: str, tiny):
    data, proto = tiny
    entry = registry.discover()[name]
    method = entry.load_class()(registry.resolve_config(entry, {}), CellContext(seed=1))
    method.fit(FitData(task="next_item", train=proto.train, train_full=proto.train, valid=without_labels(proto.valid),
                       validate=lambda scores: {}, catalog=data.catalog, protocol=proto.info))
    return method


def probe(score, proto) -> dict:
    test = proto.test
    _, probed = order_probe.rescore(score, without_labels(test), proto.info.hash)
    assert np.array_equal(probed["sample_id"], test["sample_id"].to_numpy())
    return order_probe.summarize(np.asarray(score(without_labels(test)), dtype=np.float64), probed,
                                 test["label"].to_numpy())


@pytest.mark.parametrize("name", ["itemknn", "pop"])
def test_a_method_that_reads_the_set_of_candidates_is_order_invariant(name, tiny):
    report = probe(fitted(name, tiny).score, tiny[1])
    for ordering in order_probe.ORDERINGS:
        assert report[ordering]["top1_changed"] == 0.0
        assert report[ordering]["delta_hr@1"] == 0.0 and report[ordering]["delta_interval"] == [0.0, 0.0]
        assert report[ordering]["hr@1"] == report["hr@1"]


def first_listed(samples: pd.DataFrame) -> np.ndarray:
    """A position-biased 'recommender': the earlier a candidate is listed, the higher its score."""
    width = len(samples["candidates"].iloc[0])
    return np.tile(np.arange(width, 0, -1, dtype=np.float64), (len(samples), 1))


def test_a_position_biased_scorer_changes_its_answer_under_both_orders(tiny):
    proto = tiny[1]
    report = probe(first_listed, proto)
    labels = proto.test["label"].to_numpy()
    assert report["hr@1"] == pytest.approx(np.mean(labels == 0))  # it always answers position 0
    # reversed: it answers the frozen list's last candidate, so its answer always changes
    assert report["reversed"]["top1_changed"] == 1.0
    last = len(proto.test["candidates"].iloc[0]) - 1
    assert report["reversed"]["hr@1"] == pytest.approx(np.mean(labels == last))
    assert report["shuffled"]["top1_changed"] > 0.8  # a random first candidate is rarely the same one
    low, high = report["reversed"]["delta_interval"]
    assert low <= report["reversed"]["delta_hr@1"] <= high


def test_scores_come_back_in_the_frozen_order(tiny):
    proto = tiny[1]
    test = without_labels(proto.test)

    def by_item(samples):  # reads the items, not their positions
        return np.stack(samples["candidates"].to_numpy()).astype(np.float64)

    _, probed = order_probe.rescore(by_item, test, proto.info.hash)
    for ordering in order_probe.ORDERINGS:
        assert np.array_equal(probed[ordering], by_item(test))
    perms = order_probe.permutations([np.asarray(c) for c in test["candidates"]], proto.info.hash)
    assert not np.array_equal(perms["shuffled"], np.tile(np.arange(perms["shuffled"].shape[1]), (len(test), 1)))
    assert (np.sort(perms["shuffled"], axis=1) == np.arange(perms["shuffled"].shape[1])).all()


def test_the_applies_rule():
    assert order_probe.applies("next_item", "llm")
    assert not order_probe.applies("ctr", "llm") and not order_probe.applies("next_item", "conventional")
