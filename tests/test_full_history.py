"""The uncapped history pool (``history_pool: full``): each ctr sample's whole past, nothing later."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmarks.contract import wants_full_history, without_labels
from benchmarks.data import canonical, protocols


@pytest.fixture(scope="module")
def tiny_ctr():
    data = canonical.load("movielens-100k", tiny=True)
    return data, protocols.load(data, "ctr")


def _expected(inter: pd.DataFrame, user: int, timestamp: int) -> tuple[np.ndarray, np.ndarray]:
    """Independently: the user's rows strictly before the target's second, by (timestamp, item)."""
    mine = inter[(inter["user"] == user) & (inter["timestamp"] < timestamp)].sort_values(["timestamp", "item"],
                                                                                          kind="stable")
    return mine["item"].to_numpy(), mine["rating"].to_numpy(dtype=np.float32)


@pytest.mark.parametrize("split", protocols.SPLITS)
def test_the_pool_is_the_users_whole_past_and_ends_with_the_stored_window(tiny_ctr, split):
    data, proto = tiny_ctr
    samples = without_labels(proto.split(split))
    pooled = protocols.with_full_histories(data.interactions, samples)
    width = int(proto.info.params["max_history"])
    lengths = pooled["full_history"].str.len().to_numpy()
    assert (lengths > width).any(), "the fixture must have histories longer than the stored window"
    for stored, ratings, pool, pool_ratings in zip(pooled["history"], pooled["history_ratings"],
                                                   pooled["full_history"], pooled["full_history_ratings"]):
        np.testing.assert_array_equal(pool[-width:], stored)
        np.testing.assert_array_equal(pool_ratings[-width:], ratings)
    rows = np.random.default_rng(0).choice(len(pooled), size=min(60, len(pooled)), replace=False)
    for row in rows:
        sample = pooled.iloc[row]
        items, ratings = _expected(data.interactions, int(sample["user"]), int(sample["timestamp"]))
        np.testing.assert_array_equal(sample["full_history"], items)
        np.testing.assert_array_equal(sample["full_history_ratings"], ratings)
    assert list(pooled.columns[:len(samples.columns)]) == list(samples.columns), "the sample columns are kept"


def test_the_pool_follows_the_sample_rows_in_any_order_and_works_on_an_empty_frame(tiny_ctr):
    data, proto = tiny_ctr
    samples = without_labels(proto.test).iloc[::-7]
    pooled = protocols.with_full_histories(data.interactions, samples)
    for (_, sample), pool in zip(samples.iterrows(), pooled["full_history"]):
        np.testing.assert_array_equal(pool, _expected(data.interactions, sample["user"], sample["timestamp"])[0])
    shuffled = protocols.with_full_histories(data.interactions.sample(frac=1.0, random_state=3), samples)
    assert all(np.array_equal(a, b) for a, b in zip(shuffled["full_history"], pooled["full_history"]))
    empty = protocols.with_full_histories(data.interactions, samples.iloc[:0])
    assert len(empty) == 0 and set(protocols.FULL_HISTORY_COLUMNS) <= set(empty.columns)


def test_only_a_ctr_method_that_asks_gets_the_pool():
    assert not wants_full_history(SimpleNamespace(), "ctr")
    assert not wants_full_history(SimpleNamespace(history_pool="stored"), "next_item")
    assert wants_full_history(SimpleNamespace(history_pool="full"), "ctr")
    with pytest.raises(ValueError, match="ctr protocols only"):
        wants_full_history(SimpleNamespace(history_pool="full"), "next_item")
    with pytest.raises(ValueError, match="history_pool must be one of"):
        wants_full_history(SimpleNamespace(history_pool="everything"), "ctr")


def test_the_pool_cost_benchmark_runs_on_ml_1m_shaped_data(capsys):
    from benchmarks.perf import history_pool

    ratings = history_pool.synthetic_ratings()
    counts = ratings.groupby("user").size()
    assert len(counts) == 6040 and counts.min() >= 20 and abs(len(ratings) - 1_000_209) < 0.01 * 1_000_209
    assert (ratings.groupby("user")["timestamp"].diff().dropna() > 0).all()
    samples = history_pool.ctr_samples(ratings, 300)
    pooled = protocols.with_full_histories(ratings, samples)
    assert all(np.array_equal(p[-60:], h) for p, h in zip(pooled["full_history"], pooled["history"]))
    assert history_pool.main(["--samples", "300", "200", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: 300 samples; pool size mean" in out and "test: 200 samples" in out
