"""The answer-in-prompt check (benchmarks/audits/prompts.py) on the shared prompt builders: real prompts of
ML-100K (tiny) pass with every count at zero; each planted leak (a builder that writes the label, a
template that names the candidates twice, a history that gains the target, hybrid item positions that
do) is counted and fails with one line."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("datasets")

from benchmarks.audits import prompts as prompt_audit  # noqa: E402
from benchmarks.contract import without_labels  # noqa: E402
from benchmarks.data import canonical, protocols  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_tokenizer  # noqa: E402
from methods.next_item_prompts import NextItemPrompts, NextItemTemplate, with_training_candidates  # noqa: E402
from methods.prompting import CtrPrompts, PromptTemplate  # noqa: E402
from methods.reclora import RatedHistoryPrompts  # noqa: E402
from methods.retrieval import select_history  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return canonical.load("movielens-100k", tiny=True)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def fresh_counts():
    prompt_audit.reset()
    yield
    prompt_audit.reset()


def ctr_samples(data):
    protocol = protocols.load(data, "ctr")
    return protocol.few_shot(64, 1), protocol.test.head(50)


def next_item_samples(data):
    protocol = protocols.load(data, "next_item")
    train = with_training_candidates(protocol.few_shot(32, 1), 20, data.catalog.n_items, np.random.default_rng(0))
    return train, protocol.test


def test_real_prompts_pass_with_every_check_counted(data, tokenizer):
    train, test = ctr_samples(data)
    tallrec = CtrPrompts(PromptTemplate.load("tallrec"), tokenizer, data.catalog, 10, liked_above=3)
    tallrec.build(train)
    tallrec.build(without_labels(test))
    rella = RatedHistoryPrompts(PromptTemplate.load("rella"), tokenizer, data.catalog, 10, liked_above=3)
    rella.build(select_history(train, 10, "recent"))  # RecLoRA's retrieved histories
    nxt_train, nxt_test = next_item_samples(data)
    for base in (None, tokenizer.vocab_size + 10):  # text-only and hybrid (iLoRA / LLaRA item positions)
        builder = NextItemPrompts(NextItemTemplate.load("llara"), tokenizer, data.catalog, 10, item_token_base=base)
        builder.build(nxt_train)
        builder.build(without_labels(nxt_test))
    report = prompt_audit.result()
    assert report["passed"]
    assert report["prompts"] == 2 * len(train) + len(test) + 2 * (len(nxt_train) + len(nxt_test))
    assert set(report["checks"]) == {"answer_changes_prompt", "candidate_in_history", "candidate_list_not_once",
                                     "history_list_not_once", "text_outside_lists_varies",
                                     "item_tokens_not_history_then_candidates"}
    assert all(c["count"] == 0 for c in report["checks"].values())
    assert report["checks"]["item_tokens_not_history_then_candidates"]["checked"] == len(nxt_train) + len(nxt_test)


def test_nothing_rendered_gives_no_prompt_audit():
    assert prompt_audit.result() is None


class LabelWritingPrompts(CtrPrompts):
    """A builder that writes the training label into the prompt (the leak RecRankerEval found)."""

    def sample_texts(self, samples):
        texts = super().sample_texts(samples)
        if "label" not in samples.columns:
            return texts
        return [t + f" (the user {'liked' if y else 'disliked'} it)" for t, y in zip(texts, samples["label"])]


def test_a_builder_that_writes_the_label_fails_with_one_line_and_is_counted(data, tokenizer):
    train, _ = ctr_samples(data)
    leaky = LabelWritingPrompts(PromptTemplate.load("tallrec"), tokenizer, data.catalog, 10, liked_above=3)
    with pytest.raises(prompt_audit.PromptLeakError) as err:
        leaky.build(train)
    assert "answer_changes_prompt" in str(err.value) and "\n" not in str(err.value)
    assert f"{len(train)} of {len(train)} prompts" in str(err.value)
    report = prompt_audit.result()
    assert not report["passed"] and report["checks"]["answer_changes_prompt"]["count"] == len(train)


class RatingWritingPrompts(RatedHistoryPrompts):
    """ReLLa-style prompts that add the target's own rating to the retrieved history."""

    def sample_texts(self, samples):
        texts = super().sample_texts(samples)
        if "rating" not in samples.columns:
            return texts
        return [t.replace("***", f"*** ({r:g} stars)", 1) for t, r in zip(texts, samples["rating"])]


def test_the_target_rating_in_a_retrieved_history_prompt_fails(data, tokenizer):
    train, _ = ctr_samples(data)
    leaky = RatingWritingPrompts(PromptTemplate.load("rella"), tokenizer, data.catalog, 10, liked_above=3)
    with pytest.raises(prompt_audit.PromptLeakError, match="answer_changes_prompt"):
        leaky.build(select_history(train, 10, "recent"))


def test_a_template_that_repeats_the_candidates_fails(data, tokenizer, tmp_path):
    source = (NextItemTemplate.load("llara").sample)
    (tmp_path / "leaky.yaml").write_text((prompt_dir() / "llara.yaml").read_text().replace(
        f"sample: {quoted(source)}", f"sample: {quoted(source + 'Hint: it is one of {candidates}. ')}"))
    _, test = next_item_samples(data)
    leaky = NextItemPrompts(NextItemTemplate.load("leaky", tmp_path), tokenizer, data.catalog, 10)
    with pytest.raises(prompt_audit.PromptLeakError, match="candidate_list_not_once"):
        leaky.build(without_labels(test))  # no label needed: every candidate is named twice


def prompt_dir():
    from methods.prompting import PROMPT_DIR

    return PROMPT_DIR


def quoted(text: str) -> str:
    return '"' + text + '"'


class TargetInHistoryPrompts(NextItemPrompts):
    """A builder whose history slice is off by one: it shows the target as the last history item."""

    def sample_text(self, history, candidates):
        target = getattr(self, "_target", None)
        return super().sample_text(np.append(history, target) if target is not None else history, candidates)

    def build(self, samples):
        texts_by_row = []
        for row in range(len(samples)):
            self._target = int(samples["candidates"].iloc[row][samples["label"].iloc[row]])
            texts_by_row.append(super().build(samples.iloc[[row]]))
        return texts_by_row


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_history_that_shows_the_target_fails(data, tokenizer, hybrid):
    train, _ = next_item_samples(data)
    base = tokenizer.vocab_size + 10 if hybrid else None
    # a clean prompt first, so the text outside the lists has its reference
    NextItemPrompts(NextItemTemplate.load("llara"), tokenizer, data.catalog, 10, item_token_base=base).build(train)
    leaky = TargetInHistoryPrompts(NextItemTemplate.load("llara"), tokenizer, data.catalog, 10, item_token_base=base)
    with pytest.raises(prompt_audit.PromptLeakError, match="text_outside_lists_varies"):
        leaky.build(train)


def test_hybrid_item_positions_that_hold_the_target_in_the_history_fail(data, tokenizer):
    train, _ = next_item_samples(data)
    builder = NextItemPrompts(NextItemTemplate.load("llara"), tokenizer, data.catalog, 10)
    row = train.iloc[[0]]
    history = [int(i) for i in np.asarray(row["history"].iloc[0])[-10:]]
    candidates = [int(i) for i in row["candidates"].iloc[0]]
    target = candidates[int(row["label"].iloc[0])]
    shown = [history + candidates, history[1:] + [target] + candidates]  # the second: the target as history
    for positions, fails in zip(shown, (False, True)):
        check = lambda positions=positions: prompt_audit.check_next_item(  # noqa: E731
            row, builder.texts(row), builder.texts, template="llara", shared=builder.shared_text(),
            title=builder._title, separator=", ", history_len=10, item_positions=[positions])
        if fails:
            with pytest.raises(prompt_audit.PromptLeakError, match="item_tokens_not_history_then_candidates"):
                check()
        else:
            check()


def test_a_candidate_inside_the_history_is_counted(data, tokenizer):
    train, _ = next_item_samples(data)
    row = train.iloc[[0]].copy()
    history = np.asarray(row["history"].iloc[0])
    candidates = np.asarray(row["candidates"].iloc[0]).copy()
    candidates[(row["label"].iloc[0] + 1) % len(candidates)] = history[-1]  # a "negative" the user has seen
    row["candidates"] = [candidates]
    builder = NextItemPrompts(NextItemTemplate.load("llara"), tokenizer, data.catalog, 10)
    with pytest.raises(prompt_audit.PromptLeakError, match="candidate_in_history"):
        builder.build(row)
