"""next_item prompt tables (LLaRA / iLoRA): a history and C candidates -> token ids, text-only or hybrid.

The template is data (``methods/prompts/llara.yaml``). Each sample's prompt names the last K history
titles and the C candidate titles; the answer is the target's title followed by end-of-sequence.

Hybrid prompts (LLaRA, Liao et al. SIGIR 2024, Sec. 3.2): one extra token position follows every
history and candidate title. Its id is ``item_token_base + item`` (``item_token_base`` = the number of
rows of the backbone's token embedding, so no tokenizer can produce it); the model's embedding layer
(:class:`methods.hybrid_prompt.HybridEmbedding`) turns it into ``projector(item vector)``. Text-only
prompts have exactly the same tokens without those positions: the text is tokenized in pieces cut
after every title in both modes, so the ablation changes nothing but the item positions.

The result is a :class:`methods.prompting.PromptSet` (``prefix_ids`` = the chat head, shared by every
sample) whose table has ``sample_id``, ``suffix_ids`` and ``candidates``, plus ``label`` and
``answer_ids`` (the target's answer tokens) when the samples carry labels, so the shared training
loop (:mod:`methods.training`) trains on it as it is.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.audits import prompts as prompt_audit
from benchmarks.contract import Catalog
from methods.prompting import PromptSet, PromptTemplate, chat_frame

#: cuts the rendered text after every title (never part of a title or a template)
_ITEM_MARK = "\x00"


@dataclass(frozen=True)
class NextItemTemplate(PromptTemplate):
    """A next_item prompt file: the ctr fields plus ``present_tense`` (card verb -> "will ..." form)."""

    present_tense: dict[str, str] = field(default_factory=dict)


class NextItemPrompts:
    """A template bound to a tokenizer and a catalog: builds next_item prompt sets.

    Args:
        history_len: the last K history items named in the prompt (the protocol's ``history_len``).
        item_token_base: the first id that stands for an item (hybrid prompts); None = text-only.

    Raises:
        ValueError: the card's verb has no present tense in the template.
    """

    def __init__(self, template: NextItemTemplate, tokenizer, catalog: Catalog, history_len: int,
                 item_token_base: int | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.history_len = int(history_len)
        self.item_token_base = item_token_base
        self.head, self.tail = chat_frame(tokenizer, template.use_chat_template)
        self._answers: dict[int, list[int]] = {}

    @cached_property
    def words(self) -> dict[str, str]:
        """The card's domain words plus ``verb_now``."""
        verb = self.catalog.domain["verb"]
        if verb not in self.template.present_tense:
            raise ValueError(f"prompt '{self.template.name}': no present tense for the card's verb '{verb}'; add it "
                             f"under present_tense in methods/prompts/{self.template.name}.yaml")
        return {**self.catalog.domain, "verb_now": self.template.present_tense[verb]}

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def answer_texts(self, items: Sequence[int]) -> list[str]:
        """The answer text of each item (its formatted title), as generation is matched against."""
        return [self.template.answers["target"].format(title=t) for t in self.catalog.titles(items)]

    def answers(self, items: Sequence[int]) -> dict[int, list[int]]:
        """Answer token ids (title + end-of-sequence) of each item, tokenized once per item."""
        missing = sorted({int(i) for i in items} - self._answers.keys())
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        for item, ids in zip(missing, self._encode(self.answer_texts(missing))):
            self._answers[item] = ids + eos
        return {int(i): self._answers[int(i)] for i in items}

    def _titles(self, items: np.ndarray) -> str:
        return self.template.separator.join(self.template.title.format(title=t) + _ITEM_MARK
                                            for t in self.catalog.titles(items))

    def _title(self, item: int) -> str:
        return self.template.title.format(title=self.catalog.titles([item])[0])

    def texts(self, samples: pd.DataFrame) -> list[str]:
        """Each sample's rendered text as the model reads it (chat tail included, no marks)."""
        return [self.sample_text(np.asarray(h, dtype=np.int64)[-self.history_len:], np.asarray(c, dtype=np.int64))
                .replace(_ITEM_MARK, "") for h, c in zip(samples["history"], samples["candidates"])]

    def sample_text(self, history: np.ndarray, candidates: np.ndarray) -> str:
        """The per-sample part of one prompt (chat tail included), a mark after every title."""
        return self.template.sample.format(history=self._titles(history), candidates=self._titles(candidates),
                                           n_candidates=len(candidates), **self.words) + self.tail

    def shared_text(self) -> str:
        return self.head + self.template.shared.format(**self.words)

    def build(self, samples: pd.DataFrame) -> PromptSet:
        """Tokenize ``samples`` (columns ``sample_id``, ``history``, ``candidates``; with answers when
        they carry ``label``, the target's index in ``candidates``)."""
        import datasets

        histories = [np.asarray(h, dtype=np.int64)[-self.history_len:] for h in samples["history"]]
        candidates = [np.asarray(c, dtype=np.int64) for c in samples["candidates"]]
        pieces = [self.sample_text(h, c).split(_ITEM_MARK) for h, c in zip(histories, candidates)]
        texts = ["".join(parts) for parts in pieces]
        flat = self._encode([p for parts in pieces for p in parts])
        suffixes, start = [], 0
        for parts, items in zip(pieces, (np.concatenate([h, c]) for h, c in zip(histories, candidates))):
            ids: list[int] = []
            for k, piece_ids in enumerate(flat[start: start + len(parts)]):
                ids += piece_ids
                if k < len(items) and self.item_token_base is not None:
                    ids.append(self.item_token_base + int(items[k]))
            suffixes.append(ids)
            start += len(parts)
        base = self.item_token_base
        prompt_audit.check_next_item(
            samples, texts, self.texts, template=self.template.name, shared=self.shared_text(), title=self._title,
            separator=self.template.separator, history_len=self.history_len,
            item_positions=None if base is None else [[i - base for i in ids if i >= base] for ids in suffixes])
        columns: dict[str, Any] = {"sample_id": samples["sample_id"].to_numpy(), "suffix_ids": suffixes,
                                   "candidates": [c.tolist() for c in candidates]}
        if "label" in samples.columns:
            labels = samples["label"].to_numpy()
            targets = [int(c[y]) for c, y in zip(candidates, labels)]
            answers = self.answers(targets)
            columns["label"] = labels
            columns["answer_ids"] = [answers[t] for t in targets]
        prefix = self._encode([self.shared_text()])[0]
        return PromptSet(prefix, datasets.Dataset.from_dict(columns))


def with_training_candidates(train: pd.DataFrame, n_candidates: int, n_items: int,
                             rng: np.random.Generator) -> pd.DataFrame:
    """Training samples with ``candidates`` and ``label`` as in the frozen valid/test samples.

    The train split carries no candidates; as the authors' data loaders do (LLaRA / iLoRA
    ``negative_sampling``), each sample gets its target plus ``n_candidates - 1`` items drawn
    uniformly from those outside its history and target, in a random order; ``label`` is the
    target's index. Drawn once per call from ``rng`` (the authors redraw every epoch).

    Raises:
        ValueError: the catalog has too few items outside some sample's history.
    """
    candidates, labels = [], []
    for history, target in zip(train["history"], train["item"].to_numpy()):
        seen = set(np.asarray(history, dtype=np.int64).tolist()) | {int(target)}
        if n_items - len(seen) < n_candidates - 1:
            raise ValueError(f"{n_items} items leave fewer than {n_candidates - 1} negatives outside a history "
                             f"of {len(seen) - 1}")
        negatives: list[int] = []
        while len(negatives) < n_candidates - 1:
            for item in rng.integers(0, n_items, size=2 * n_candidates).tolist():
                if item not in seen and len(negatives) < n_candidates - 1:
                    seen.add(item)
                    negatives.append(item)
        row = np.asarray([int(target)] + negatives, dtype=np.int64)[rng.permutation(n_candidates)]
        candidates.append(row)
        labels.append(int(np.flatnonzero(row == target)[0]))
    return train.assign(candidates=candidates, label=np.asarray(labels, dtype=np.int64))
