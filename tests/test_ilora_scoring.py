"""next_item prompts, candidate-title likelihood and generate-and-match scoring (issue F4), against
independent computations on a tiny random Llama and a tiny trained tokenizer (no download)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

from benchmarks.contract import Catalog  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_llama, tiny_tokenizer  # noqa: E402
from methods.candidate_scoring import (  # noqa: E402
    candidate_log_likelihoods,
    first_line,
    greedy_answers,
    match_candidate,
    one_hot_choices,
)
from methods.next_item_prompts import NextItemPrompts, NextItemTemplate, with_training_candidates  # noqa: E402

TITLES = ["Toy Story", "Heat", "Heat Wave", "Fargo", "Babe", "Star Wars", "Crash", "Sleeper"]
BASE = 1000  # first item position id in the tests (any id beyond the tokenizer's vocabulary)


def catalog(verb: str = "watched") -> Catalog:
    items = pd.DataFrame({"item": np.arange(len(TITLES)), "title": TITLES})
    return Catalog("toy", items, pd.DataFrame({"user": [0, 1, 2]}), {"item": "movie", "items": "movies", "verb": verb})


def samples(labeled: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({
        "sample_id": [0, 1, 2], "user": [0, 1, 2], "item": [2, 0, 7],
        # the protocol's promise, which the prompt audit holds every prompt to: no candidate in the history
        "history": [np.array([0, 3, 4, 7]), np.array([5]), np.array([6, 3])],
        "history_ratings": [np.ones(4, np.float32), np.ones(1, np.float32), np.ones(2, np.float32)],
        "candidates": [np.array([1, 2, 5, 6]), np.array([0, 7, 3, 2]), np.array([7, 4, 0, 1])],
    })
    if labeled:
        frame["label"] = [1, 0, 0]
    return frame


def builder(item_token_base=None, tokenizer=None, verb="watched") -> NextItemPrompts:
    return NextItemPrompts(NextItemTemplate.load("llara"), tokenizer or tiny_tokenizer(), catalog(verb), history_len=3,
                           item_token_base=item_token_base)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok), seed=4)


# ------------------------------------------------------------------------------------------ prompts


def test_text_prompt_is_the_authors_wording_with_the_last_k_titles(tok):
    prompts = builder(tokenizer=tok).build(samples())
    text = tok.decode(prompts.full_ids(0))
    expected = ("This user has watched Fargo, Babe, Sleeper in the previous. Please predict the next movie this user "
                "will watch. Choose the answer from the following 4 movie titles: Heat, Heat Wave, Star Wars, Crash. "
                "Answer: ")
    assert text == f"<|im_start|>user\n{expected}<|im_end|>\n<|im_start|>assistant\n"
    assert prompts.prefix_ids == tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]


def test_hybrid_prompt_is_the_text_prompt_plus_one_item_position_after_each_title(tok):
    text = builder(tokenizer=tok).build(samples())
    hybrid = builder(BASE, tokenizer=tok).build(samples())
    frame = samples()
    for row in range(len(frame)):
        ids = hybrid.table[row]["suffix_ids"]
        assert [i for i in ids if i < BASE] == text.table[row]["suffix_ids"], "same tokens, item positions aside"
        items = [i - BASE for i in ids if i >= BASE]
        assert items == list(frame["history"][row][-3:]) + list(frame["candidates"][row])
        positions = [p for p, i in enumerate(ids) if i >= BASE]
        starts = [0] + [p + 1 for p in positions[:-1]]
        for start, end, item in zip(starts, positions, items):  # the item follows its own title's tokens
            assert tok.decode(ids[start:end]).endswith(TITLES[item])


def test_answers_are_the_target_title_then_end_of_sequence(tok):
    prompts = builder(tokenizer=tok).build(samples())
    for row, target in enumerate([2, 0, 7]):  # candidates[label]
        answer = prompts.table[row]["answer_ids"]
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]) == TITLES[target]
    assert "answer_ids" not in builder(tokenizer=tok).build(samples(labeled=False)).table.column_names


def test_a_card_verb_without_present_tense_is_one_actionable_line(tok):
    with pytest.raises(ValueError, match="no present tense for the card's verb 'rated'.*llara.yaml"):
        builder(tokenizer=tok, verb="rated").build(samples())


def test_training_candidates_hold_the_target_once_and_no_history_item():
    n_items, n_candidates = 12, 6
    train = pd.DataFrame({"sample_id": np.arange(40), "item": np.arange(40) % n_items,
                          "history": [np.array([(i + 1) % n_items, (i + 2) % n_items]) for i in range(40)],
                          "label": np.zeros(40, int)})
    out = with_training_candidates(train, n_candidates, n_items, np.random.default_rng(3))
    positions = []
    for row in out.itertuples():
        cands = np.asarray(row.candidates)
        assert len(cands) == n_candidates == len(set(cands.tolist()))
        assert cands[row.label] == row.item
        assert not set(cands.tolist()) & set(np.asarray(row.history).tolist())
        positions.append(row.label)
    assert len(set(positions)) > 3, "the target's position is shuffled"
    again = with_training_candidates(train, n_candidates, n_items, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(out["candidates"], again["candidates"]))
    with pytest.raises(ValueError, match="fewer than 10 negatives"):
        with_training_candidates(train, 11, n_items, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------- likelihood


def independent_log_likelihood(model, prompt: list[int], answer: list[int], **inputs) -> float:
    """log P(answer | prompt) from one full forward pass (``inputs``: per-sample model inputs), in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer]), **inputs).logits[0].double()
    steps = logits[len(prompt) - 1: len(prompt) - 1 + len(answer)].log_softmax(-1)
    return float(steps[torch.arange(len(answer)), torch.tensor(answer)].sum())


@pytest.fixture(scope="module")
def likelihood_case(tok, model):
    """(prompts, answers, expected [3, 4]) with the expectation from one full pass per candidate."""
    b = builder(tokenizer=tok)
    prompts = b.build(samples(labeled=False))
    answers = b.answers(range(len(TITLES)))
    expected = np.array([[independent_log_likelihood(model, prompts.full_ids(row), answers[item])
                          for item in prompts.table[row]["candidates"]] for row in range(len(prompts))])
    return prompts, answers, expected


@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_candidate_likelihoods_match_a_full_pass_per_candidate(tok, model, likelihood_case, reuse_prefix, batch_size):
    prompts, answers, expected = likelihood_case
    got = candidate_log_likelihoods(model, prompts, answers, batch_size=batch_size, pad_id=tok.pad_token_id,
                                    reuse_prefix=reuse_prefix, max_answer_tokens=70)
    assert got.shape == expected.shape == (3, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_likelihood_counts_the_end_of_the_title(tok, model):
    """A title that begins a longer one ("Heat" / "Heat Wave") is not favoured for being shorter."""
    b = builder(tokenizer=tok)
    answers = b.answers(range(len(TITLES)))
    assert answers[2][: len(answers[1]) - 1] == answers[1][:-1], "the tokenizer shares Heat's tokens"
    prompts = b.build(samples(labeled=False).iloc[:1])
    scores = candidate_log_likelihoods(model, prompts, answers, pad_id=tok.pad_token_id)[0]
    heat_alone = independent_log_likelihood(model, prompts.full_ids(0), answers[1][:-1])
    assert scores[0] < heat_alone, "P(Heat<eos>) < P(Heat as the start of anything)"


# ------------------------------------------------------------------------------------------ generate


def test_match_handles_titles_containing_each_other():
    titles = ["Heat", "Heat Wave", "Star Wars", "Crash"]
    assert match_candidate("Heat Wave", titles) == 1
    assert match_candidate("  heat wave (1990)\nHeat", titles) == 1, "lower-cased, first line only"
    assert match_candidate("Heat", titles) == 0
    assert match_candidate("Heat and Heat Wave", titles) is None, "Heat is named outside Heat Wave too"
    assert match_candidate("Heat Wave or Crash", titles) is None, "two titles"
    assert match_candidate("Casablanca", titles) is None
    assert match_candidate("\nStar Wars", titles) == 2, "stripped before the first line is taken"
    assert match_candidate("Crash", ["Crash", "Heat", "Crash"]) is None, "two candidates with one title"
    assert first_line("  Fargo\nBabe ") == "Fargo"


def test_one_hot_rows_and_nan_rows():
    scores = one_hot_choices(["Babe", "nothing", "Fargo!"], [["Fargo", "Babe"], ["Fargo", "Babe"], ["Fargo", "Babe"]])
    np.testing.assert_array_equal(scores[0], [0.0, 1.0])
    assert np.isnan(scores[1]).all()
    np.testing.assert_array_equal(scores[2], [1.0, 0.0])


def test_batched_left_padded_greedy_matches_generate_one_prompt_at_a_time(tok, model):
    from transformers import GenerationConfig

    prompts = builder(tokenizer=tok).build(samples(labeled=False))
    ours = greedy_answers(model, tok, prompts, batch_size=3, pad_id=tok.pad_token_id, max_new_tokens=12)
    config = GenerationConfig(do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    for row, answer in enumerate(ours):
        ids = torch.tensor([prompts.full_ids(row)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        reference = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert first_line(answer) == first_line(reference)
        assert answer, "a random model still says something"
