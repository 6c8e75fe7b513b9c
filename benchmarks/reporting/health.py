"""Marks beside a number a reader should not take at face value, and where to read why.

Per group (dataset, task, method, shots), on the task's primary metric:

* ``below chance``: the whole 95% interval (test samples and seeds) is below the chance level (AUC
  0.5; HR@1 one over the candidates); ``below chance, within its interval``: the seed mean is below
  it, the interval reaches it;
* ``interval includes chance``: the seed mean is at or above it, the interval reaches it;
* ``one-sided scores`` (ctr): every score of a seed lies on one side of 0.5, so accuracy is the share
  of one class and the model's threshold says nothing (RecLoRA once scored every sample in
  [0.713, 0.866]).

A flagged in-tree method whose file ``methods/<name>.py`` or ``baselines/<name>.py`` has a page
``docs/methods/<name>.md`` gets a footnote pointing to it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.registry import ROOT

#: primary metric -> chance level given the number of candidates (None for ctr)
CHANCE = {"auc": lambda n_candidates: 0.5, "hr@1": lambda n_candidates: 1.0 / n_candidates}


def chance_level(metric: str, n_candidates: int | None) -> float | None:
    level = CHANCE.get(metric)
    return None if level is None or (metric != "auc" and not n_candidates) else level(n_candidates)


def flags(metric: str, interval, runs: list[np.ndarray], task: str) -> list[str]:
    """The marks of one group: its primary ``metric``'s ``interval`` and its seeds' score arrays."""
    out = []
    chance = chance_level(metric, runs[0].shape[1] if task == "next_item" and runs else None)
    if chance is not None and interval is not None:
        if interval.high < chance:
            out.append("below chance")
        elif interval.estimate < chance:
            out.append("below chance, within its interval")
        elif interval.low <= chance:
            out.append("interval includes chance")
    if task == "ctr" and any((scores >= 0.5).all() or (scores < 0.5).all() for scores in runs):
        out.append("one-sided scores")
    return out


def method_page(record: dict) -> str | None:
    """``docs/methods/<module>.md`` of an in-tree method's record, when that page exists."""
    provenance = record.get("provenance") or {}
    if provenance.get("kind") != "in-tree" or not provenance.get("module"):
        return None
    page = Path("docs") / "methods" / f"{Path(provenance['module']).stem}.md"
    return str(page) if (ROOT / page).is_file() else None


def footnotes(health: dict[tuple, list[str]], groups: dict[tuple, list[dict]]) -> list[str]:
    """One line per flagged method with a page that explains its results."""
    pages: dict[str, str] = {}
    for key, marks in health.items():
        page = method_page(groups[key][0]) if marks else None
        if page:
            pages.setdefault(key[2], page)
    return [f"{method}: flagged above; {page} explains its results" for method, page in sorted(pages.items())]
