"""Prompt templates and prompt tables (tiny trained tokenizer, no download)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("datasets")

from benchmarks.contract import Catalog  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_tokenizer  # noqa: E402
from methods.prompting import CtrPrompts, PromptTemplate, chat_frame  # noqa: E402

TITLES = ["Toy Story", "Heat", "Star Wars", "The Usual Suspects", "Fargo", "Babe"]


def catalog() -> Catalog:
    items = pd.DataFrame({"item": np.arange(len(TITLES)), "title": TITLES})
    domain = {"item": "movie", "items": "movies", "verb": "watched"}
    return Catalog("toy", items, pd.DataFrame({"user": [0, 1]}), domain)


def samples(labeled: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({
        "sample_id": [0, 1], "user": [0, 1], "item": [5, 0],
        "history": [np.array([0, 1, 2, 3, 4]), np.array([3])],
        "history_ratings": [np.array([5, 1, 4, 3, 2], dtype=np.float32), np.array([1], dtype=np.float32)],
    })
    if labeled:
        frame["label"] = [1, 0]
    return frame


@pytest.fixture(scope="module")
def builder():
    return CtrPrompts(PromptTemplate.load("tallrec"), tiny_tokenizer(), catalog(), history_len=4, liked_above=3)


def test_history_split_by_threshold_and_cut_to_k(builder):
    text = builder.sample_texts(samples())[0]
    # last 4 of [0..4]: Heat(1) Star Wars(4) Usual Suspects(3) Fargo(2); liked = rating > 3
    assert 'User Preference: "Star Wars"\n' in text
    assert 'User Unpreference: "Heat", "The Usual Suspects", "Fargo"\n' in text
    assert "Toy Story" not in text  # outside the last K = 4
    assert 'target movie "Babe"?' in text


def test_shared_plus_sample_text_is_the_chat_rendered_prompt(builder):
    tok = builder.tokenizer
    shared = builder.template.shared.format(**catalog().domain)
    sample = builder.template.sample.format(liked="", disliked='"The Usual Suspects"',
                                            target='"Toy Story"', **catalog().domain)
    rendered = tok.apply_chat_template([{"role": "user", "content": shared + sample}], tokenize=False,
                                       add_generation_prompt=True)
    assert builder.shared_text() + builder.sample_texts(samples())[1] == rendered


def test_table_ids_are_the_separately_tokenized_parts(builder, tmp_path):
    prompts = builder.build(samples(), cache_dir=tmp_path)
    tok = builder.tokenizer
    assert prompts.prefix_ids == tok(builder.shared_text(), add_special_tokens=False)["input_ids"]
    for row, text in enumerate(builder.sample_texts(samples())):
        assert prompts.table[row]["suffix_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    answers = builder.answers
    assert prompts.table[0]["answer_ids"] == tok("Yes.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert prompts.table[1]["answer_ids"][0] == answers.no != answers.yes
    assert list(tmp_path.glob("hf-datasets/prompts/tallrec-*.arrow")), "tokenization was not cached"


def test_unlabeled_samples_get_no_answers(builder):
    prompts = builder.build(samples(labeled=False))
    assert "answer_ids" not in prompts.table.column_names and "label" not in prompts.table.column_names


def test_chat_frame_without_template_is_empty():
    tok = tiny_tokenizer()
    tok.chat_template = None
    assert chat_frame(tok, True) == ("", "")


def test_bad_template_names_the_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("version: 1\nshared: x\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        PromptTemplate.load("broken", tmp_path)
    with pytest.raises(ValueError, match="no prompt template 'nope'"):
        PromptTemplate.load("nope", tmp_path)
