"""Answer-in-prompt check of every LLM prompt a cell renders, for training and for scoring.

RecRankerEval (arXiv 2507.05880) traced "abnormally high" scores of a published LLM recommender to
the ground truth leaking into its prompts. The shared prompt builders (:mod:`methods.prompting`,
:mod:`methods.next_item_prompts`) hand every prompt table they render to this module before they
tokenize it, so the check sees the real text, retrieved histories (RecLoRA) and hybrid item tokens
(iLoRA, LLaRA) included:

* ``answer_changes_prompt`` (both tasks): the prompt is rendered again with the answer columns
  (:data:`benchmarks.contract.ANSWER_COLUMNS`: ``label`` and ``rating`` for ctr, ``label`` and the
  target ``item`` for next_item) set to other values; any prompt whose text changes depends on the
  answer. Scoring prompts are rendered from samples the harness has already stripped of those
  columns, so for them this check has nothing to vary and counts nothing.
* next_item, on the rendered text: no candidate is one of the history items shown
  (``candidate_in_history``: the target never appears in the history part); the candidate list and the
  shown history each appear exactly once (``candidate_list_not_once``, ``history_list_not_once``); and
  the text outside the two lists is the same for every prompt of a template
  (``text_outside_lists_varies``): a template or builder that names the target (or anything of the
  sample) anywhere else changes it. Together they say the target's title is named once, inside the
  candidate list, without knowing which candidate is the target (scoring prompts carry no label).
* next_item, hybrid prompts: the item positions are exactly the sample's shown history followed by
  its candidates (``item_tokens_not_history_then_candidates``).

Counts accumulate per process (one cell per process, :func:`reset` at its start) and
:func:`result` gives the record's ``audit.prompts``. A builder that renders a leaking prompt raises
:class:`PromptLeakError` after counting, so the cell fails with one line and its record keeps the counts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.contract import ANSWER_COLUMNS
from benchmarks.data.audit import CheckTally

#: bumped whenever a check changes (it is in every record's ``audit.prompts``)
PROMPT_AUDIT_VERSION = 1


class PromptLeakError(RuntimeError):
    """A rendered prompt holds (or depends on) its own answer."""


class _PromptTally(CheckTally):
    """The protocol audit's tally, plus the prompts rendered and each template's reference skeleton."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts = 0
        #: (template, history shown?) -> the text outside the two lists of the first such prompt
        self.skeletons: dict[tuple[str, bool], str] = {}


_TALLY = _PromptTally()


def reset() -> None:
    """Forget every count (the harness calls it when a cell starts)."""
    global _TALLY
    _TALLY = _PromptTally()


def result() -> dict[str, Any] | None:
    """``{"version", "prompts", "checks": {name: {"count", "checked", "example"}}, "passed"}``; None when
    no prompt was rendered through the shared builders (conventional methods)."""
    if not _TALLY.prompts:
        return None
    return {"version": PROMPT_AUDIT_VERSION, "prompts": _TALLY.prompts, "checks": _TALLY.checks,
            "passed": all(c["count"] == 0 for c in _TALLY.checks.values())}


def _raise_on(found: dict[str, np.ndarray], sample_id: np.ndarray) -> None:
    for name, bad in found.items():
        if bad.any():
            raise PromptLeakError(f"answer in prompt: {name}: {int(bad.sum())} of {len(bad)} prompts, e.g. "
                                  f"sample_id {int(sample_id[np.argmax(bad)])}")


def _other_answers(samples: pd.DataFrame, task: str) -> pd.DataFrame | None:
    """``samples`` with every answer column set to another value; None when they carry none."""
    present = [c for c in ANSWER_COLUMNS[task] if c in samples.columns]
    if not present:
        return None
    changed = {}
    for column in present:
        values = samples[column].to_numpy()
        if column == "label" and task == "ctr":
            changed[column] = 1 - values.astype(np.int64)
        elif column == "label":  # next_item: another candidate position
            width = np.fromiter((len(c) for c in samples["candidates"]), dtype=np.int64, count=len(samples))
            changed[column] = (values.astype(np.int64) + 1) % np.maximum(width, 1)
        elif column == "rating":
            changed[column] = values.astype(np.float64) + 1.5  # no rating scale holds both x and x + 1.5
        else:  # the target item: any other code
            changed[column] = values.astype(np.int64) + 1
    return samples.assign(**changed)


def _answer_dependence(samples: pd.DataFrame, task: str, texts: Sequence[str],
                       render: Callable[[pd.DataFrame], Sequence[str]]) -> np.ndarray:
    other = _other_answers(samples, task)
    if other is None:
        return np.zeros(len(texts), dtype=bool)
    return np.fromiter((a != b for a, b in zip(texts, render(other))), dtype=bool, count=len(texts))


def check_ctr(samples: pd.DataFrame, texts: Sequence[str], render: Callable[[pd.DataFrame], Sequence[str]]) -> None:
    """Check ctr prompts ``texts`` (the per-sample parts ``render(samples)`` gave; the shared part reads
    no sample). Raises PromptLeakError on any violation, after counting."""
    found = {"answer_changes_prompt": _answer_dependence(samples, "ctr", texts, render)}
    _count(found, samples)


def check_next_item(samples: pd.DataFrame, texts: Sequence[str], render: Callable[[pd.DataFrame], Sequence[str]],
                    *, template: str, shared: str, title: Callable[[int], str], separator: str, history_len: int,
                    item_positions: Sequence[Sequence[int]] | None = None) -> None:
    """Check next_item prompts.

    Args:
        texts: each sample's rendered text (what the model reads after ``shared``), ``render(samples)``.
        template: the template's name: prompts of one template share their text outside the two lists.
        title: item code -> its title as the template writes it in a list.
        separator: between titles of a list.
        history_len: the last K history items the prompt shows.
        item_positions: hybrid prompts: the item codes of each prompt's item positions, in order.

    Raises:
        PromptLeakError: any violation, after counting.
    """
    n = len(texts)
    bad = {name: np.zeros(n, dtype=bool) for name in (
        "candidate_in_history", "candidate_list_not_once", "history_list_not_once", "text_outside_lists_varies")}
    if item_positions is not None:
        bad["item_tokens_not_history_then_candidates"] = np.zeros(n, dtype=bool)
    for row, (text, history, candidates) in enumerate(zip(texts, samples["history"], samples["candidates"])):
        history = [int(i) for i in np.asarray(history, dtype=np.int64)[-history_len:]]
        candidates = [int(i) for i in candidates]
        bad["candidate_in_history"][row] = not set(candidates).isdisjoint(history)
        skeleton = shared + text
        for name, items, mark in (("candidate_list_not_once", candidates, "\x00candidates\x00"),
                                  ("history_list_not_once", history, "\x00history\x00")):
            if not items:
                continue
            block = separator.join(title(i) for i in items)
            bad[name][row] = skeleton.count(block) != 1
            skeleton = skeleton.replace(block, mark, 1)
        key = (template, bool(history))
        reference = _TALLY.skeletons.setdefault(key, skeleton)
        bad["text_outside_lists_varies"][row] = skeleton != reference
        if item_positions is not None:
            bad["item_tokens_not_history_then_candidates"][row] = \
                [int(i) for i in item_positions[row]] != history + candidates
    _count({"answer_changes_prompt": _answer_dependence(samples, "next_item", texts, render), **bad}, samples)


def _count(found: dict[str, np.ndarray], samples: pd.DataFrame) -> None:
    sample_id = samples["sample_id"].to_numpy()
    _TALLY.prompts += len(sample_id)
    for name, bad in found.items():
        _TALLY.add(name, None, bad, sample_id)
    _raise_on(found, sample_id)
