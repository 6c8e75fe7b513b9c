"""Prompt tables: samples -> prompt text -> token ids, as Hugging Face ``datasets`` (Arrow).

Templates are data (``methods/prompts/<name>.yaml``). A prompt is split where the prefix cache
needs it: the *shared* part (chat head + instruction, identical for every sample) is tokenized once
into ``PromptSet.prefix_ids``; each sample's own part (history, target, chat tail) becomes a row of
``PromptSet.table["suffix_ids"]``. The two are tokenized separately and concatenated, and every
path (training, one-pass scoring with or without the prefix cache, the generate reference) uses
exactly these ids, so they all see the same tokens.

Tokenization is a ``datasets.map`` whose Arrow file is cached under ``<cache>/hf-datasets/`` and keyed
by the sha256 of the template, the tokenizer and the prompt texts, so a rerun skips it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.audits import prompts as prompt_audit
from benchmarks.contract import Catalog

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
_SENTINEL = "\x00PROMPT\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt file (see ``methods/prompts/tallrec.yaml`` for the meaning of each field)."""

    name: str
    version: int
    use_chat_template: bool
    shared: str
    sample: str
    title: str
    separator: str
    answers: dict[str, str]

    @classmethod
    def load(cls, name: str, folder: Path = PROMPT_DIR) -> PromptTemplate:
        """Read ``<folder>/<name>.yaml``; unknown or missing fields raise ValueError naming the file."""
        path = folder / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in folder.glob("*.yaml"))
            raise ValueError(f"no prompt template '{name}' in {folder} (known: {known})")
        raw = yaml.safe_load(path.read_text())
        try:
            return cls(name=name, **raw)
        except TypeError as err:
            raise ValueError(f"{path}: {err}") from err


def chat_frame(tokenizer, use_chat_template: bool) -> tuple[str, str]:
    """(head, tail) text around the user turn in the tokenizer's chat template ("" without one)."""
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        return "", ""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    head, _, tail = rendered.partition(_SENTINEL)
    return head, tail


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the serialized fast tokenizer (or the vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256((text + str(tokenizer.chat_template)).encode()).hexdigest()


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids of the two answers: ``yes``/``no`` are the scored first tokens; ``positive``/``negative``
    the full training targets (answer text + end-of-sequence)."""

    yes: int
    no: int
    positive: list[int]
    negative: list[int]


@dataclass
class PromptSet:
    """Prompts for a sample table: one shared prefix and a ``datasets.Dataset`` of per-sample parts.

    ``table`` columns: ``sample_id``, ``user``, ``item``, ``suffix_ids`` (list of int), and when built
    with answers ``label`` and ``answer_ids``.
    """

    prefix_ids: list[int]
    table: Any  # datasets.Dataset

    def __len__(self) -> int:
        return len(self.table)

    def suffix_lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.table["suffix_ids"]), dtype=np.int64, count=len(self.table))

    def full_ids(self, row: int) -> list[int]:
        """The whole prompt of row ``row`` as the model reads it without a prefix cache."""
        return self.prefix_ids + list(self.table[row]["suffix_ids"])


@contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """Show ``datasets``' progress bars only for tables large enough to wait for."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if show else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


class CtrPrompts:
    """A template bound to a tokenizer and a catalog: builds ctr prompt sets.

    Args:
        history_len: the last K history items shown (the protocol's ``history_len``).
        liked_above: a history item is "liked" when its rating is above this (the card's
            ``label_threshold``); None puts every history item in the liked list.
    """

    def __init__(self, template: PromptTemplate, tokenizer, catalog: Catalog, history_len: int,
                 liked_above: float | None):
        self.template = template
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.history_len = int(history_len)
        self.liked_above = liked_above
        self.head, self.tail = chat_frame(tokenizer, template.use_chat_template)

    @cached_property
    def answers(self) -> AnswerTokens:
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        positive, negative = encode(self.template.answers["positive"]), encode(self.template.answers["negative"])
        if positive[0] == negative[0]:
            raise ValueError(f"prompt '{self.template.name}': the answers {self.template.answers} start with the "
                             f"same token, so P(yes) cannot be read from one position")
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return AnswerTokens(positive[0], negative[0], positive + eos, negative + eos)

    def shared_text(self) -> str:
        return self.head + self.template.shared.format(**self.catalog.domain)

    def _quoted(self, items: np.ndarray) -> str:
        return self.template.separator.join(self.template.title.format(title=t) for t in self.catalog.titles(items))

    def sample_texts(self, samples: pd.DataFrame) -> list[str]:
        """The per-sample part of each prompt (history split into liked / disliked, then the target)."""
        texts = []
        targets = self.catalog.titles(samples["item"].to_numpy())
        for history, ratings, target in zip(samples["history"], samples["history_ratings"], targets):
            history = np.asarray(history)[-self.history_len:]
            ratings = np.asarray(ratings)[-self.history_len:]
            liked = ratings > self.liked_above if self.liked_above is not None else np.ones(len(history), bool)
            texts.append(self._sample_text(self._quoted(history[liked]), self._quoted(history[~liked]), target))
        return texts

    def _sample_text(self, liked: str, disliked: str, target: str) -> str:
        return self.template.sample.format(liked=liked, disliked=disliked,
                                           target=self.template.title.format(title=target),
                                           **self.catalog.domain) + self.tail

    @cached_property
    def _fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([asdict(self.template), tokenizer_fingerprint(self.tokenizer)],
                                         sort_keys=True).encode()).hexdigest()

    def build(self, samples: pd.DataFrame, cache_dir: Path | None = None) -> PromptSet:
        """Tokenize ``samples`` (with answers when they carry ``label``); cached when ``cache_dir``."""
        import datasets

        texts = self.sample_texts(samples)
        prompt_audit.check_ctr(samples, texts, self.sample_texts)
        columns: dict[str, Any] = {
            "sample_id": samples["sample_id"].to_numpy(), "user": samples["user"].to_numpy(),
            "item": samples["item"].to_numpy(), "text": texts}
        labeled = "label" in samples.columns
        if labeled:
            columns["label"] = samples["label"].to_numpy()
        answers = self.answers

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            out = {"suffix_ids": self.tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}
            if labeled:
                out["answer_ids"] = [answers.positive if y else answers.negative for y in batch["label"]]
            return out

        key = hashlib.sha256(json.dumps([self._fingerprint, texts, columns.get("label", np.zeros(0)).tolist()])
                             .encode()).hexdigest()[:24]
        cache_file = None
        if cache_dir is not None:
            folder = Path(cache_dir) / "hf-datasets" / "prompts"
            folder.mkdir(parents=True, exist_ok=True)
            cache_file = str(folder / f"{self.template.name}-{key}.arrow")
        with _progress_bars(len(texts) >= 1000):
            table = datasets.Dataset.from_dict(columns).map(
                tokenize, batched=True, remove_columns=["text"], cache_file_name=cache_file,
                load_from_cache_file=cache_file is not None, new_fingerprint=key, desc="tokenizing prompts")
        prefix = self.tokenizer(self.shared_text(), add_special_tokens=False)["input_ids"]
        return PromptSet(prefix, table.with_format(None))
