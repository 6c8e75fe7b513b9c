"""RecLoRA's long-short modality retriever (methods/retrieval.py) on the real tiny ML-100K ctr protocol,
checked against the canonical interactions and a brute-force cosine, not against its own helpers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.data import canonical, protocols
from methods.retrieval import select_history

K = 10


@pytest.fixture(scope="module")
def tiny():
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, "ctr")
    samples = pd.concat([proto.train.iloc[::7], proto.test]).reset_index(drop=True)
    vectors = np.random.default_rng(0).normal(size=(data.catalog.n_items, 6))
    return data, samples, vectors


def brute_cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.parametrize("strategy", ["relevant", "recent"])
def test_returns_k_of_the_users_own_earlier_items_in_time_order(tiny, strategy):
    data, samples, vectors = tiny
    inter = data.interactions
    when = {(u, i): t for u, i, t in zip(inter["user"], inter["item"], inter["timestamp"])}
    order = inter.sort_values(["user", "timestamp", "item"], kind="stable")
    rank = {(u, i): r for r, (u, i) in enumerate(zip(order["user"], order["item"]))}  # the card's per-user order
    chosen = select_history(samples, K, strategy, vectors)
    assert (samples["history"].str.len() > K).sum() > 50, "the fixture must exercise histories longer than K"
    for sample, picked, ratings, full_ratings in zip(samples.itertuples(), chosen["history"],
                                                     chosen["history_ratings"], samples["history_ratings"]):
        assert len(picked) == min(K, len(sample.history))
        assert sample.item not in set(picked)
        for item in picked:
            assert (sample.user, item) in when, "a chosen item is not one of the user's interactions"
            assert when[sample.user, item] <= sample.timestamp, "a chosen item comes after the target"
            assert rank[sample.user, item] < rank[sample.user, sample.item], "a chosen item is not earlier"
        assert [rank[sample.user, i] for i in picked] == sorted(rank[sample.user, i] for i in picked)
        rating_of = dict(zip(sample.history, full_ratings))
        assert list(ratings) == [rating_of[i] for i in picked], "ratings must travel with their items"


def test_relevant_keeps_the_k_most_similar_items_by_cosine(tiny):
    _, samples, vectors = tiny
    long = samples[samples["history"].str.len() > K].iloc[:40]
    chosen = select_history(long, K, "relevant", vectors)
    for history, target, picked in zip(long["history"], long["item"], chosen["history"]):
        similarity = {int(i): brute_cosine(vectors[i], vectors[target]) for i in history}
        left_out = [similarity[int(i)] for i in history if i not in set(picked)]
        assert min(similarity[int(i)] for i in picked) >= max(left_out) - 1e-12


def test_recent_keeps_the_last_k_and_short_histories_keep_everything(tiny):
    _, samples, vectors = tiny
    chosen = select_history(samples, K, "recent")
    for history, picked in zip(samples["history"], chosen["history"]):
        assert list(picked) == list(history[-K:])
    short = samples[samples["history"].str.len() <= K]
    assert len(short) and all(list(a) == list(b) for a, b in
                              zip(select_history(short, K, "relevant", vectors)["history"], short["history"]))


def test_never_the_target_and_ties_go_to_the_more_recent_item():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [2.0, 0.0]])
    frame = pd.DataFrame({"item": [4], "history": [np.array([0, 4, 2, 1, 3])],
                          "history_ratings": [np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)]})
    # item 4 is the target, seen before (cosine 1 with itself): never chosen; items 0 and 1 tie at cosine 1
    one = select_history(frame, 1, "relevant", vectors).iloc[0]
    assert list(one["history"]) == [1] and list(one["history_ratings"]) == [4.0]
    assert list(select_history(frame, 2, "relevant", vectors).iloc[0]["history"]) == [0, 1]
    assert list(select_history(frame, 3, "relevant", vectors).iloc[0]["history"]) == [0, 1, 3]
    assert list(select_history(frame, 2, "recent").iloc[0]["history"]) == [1, 3]
    assert list(select_history(frame, 9, "recent").iloc[0]["history"]) == [0, 2, 1, 3]


def test_unknown_strategy_or_missing_vectors_fail_with_one_clear_line():
    frame = pd.DataFrame({"item": [0], "history": [np.array([1])], "history_ratings": [np.array([1.0])]})
    with pytest.raises(ValueError, match="one of"):
        select_history(frame, 2, "similar")
    with pytest.raises(ValueError, match="needs item vectors"):
        select_history(frame, 2, "relevant")


def test_title_embeddings_average_each_texts_own_hidden_states():
    """Batched, padded, length-sorted pooling equals running every text alone."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from benchmarks.perf.tiny_llama import tiny_llama, tiny_tokenizer
    from methods.retrieval import title_embeddings

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=2)
    texts = ["Here is a movie. Its title is Heat.", "Toy Story", "Star Wars, The Usual Suspects and Heat", "No."]
    got = title_embeddings(SimpleNamespace(model=model, tokenizer=tok), texts, batch_size=3)
    with torch.no_grad():
        for row, text in enumerate(texts):
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            np.testing.assert_allclose(got[row], hidden.mean(0).numpy(), atol=1e-5)
    assert not np.allclose(got[0], got[1])
