"""Leakage audit of a frozen protocol: run when it is built, stored with it, checked by every cell.

Temporal leakage is the most common flaw of published recommender comparisons (Ji et al., "A Critical
Study on Data Leakage in Recommender System Offline Evaluation", TOIS 2023). Each check here re-derives
one promise of :mod:`benchmarks.data.protocols` from the canonical interactions, independently of
how the builder computed it, and counts the samples that break it:

* ``ctr``: every history item is strictly before its target (``history_before_target``) and one of
  the user's interactions (``history_is_users``); every train sample precedes every valid and test
  sample, and valid precedes test, under the global order (timestamp, user, item)
  (``train_before_eval``); no test sample's (user, item) appears in train (``test_pair_in_train``).
* ``next_item``: the test target is the user's last interaction and the valid target the second last
  by (timestamp, item id) (``target_is_last``); every history item is before its target by that order
  and the user's own (``history_before_target``, ``history_is_users``); the candidates are unique
  (``candidates_unique``), hold the target exactly once, at ``label`` (``target_once``), and the
  negatives are items the user never interacted with (``negatives_unseen``); no training sample's
  target or history reaches the user's valid or test interactions (``eval_not_in_training``).

A (user, item) pair interacted with more than once (cards without ``deduplicate``) is dated by its
earliest interaction, so a count is a certain leak, never a guess. The checks that look up listed
items (histories, candidates) read every sample of a split up to ``MAX_LISTS_CHECKED`` samples and a
seeded uniform subset of that size beyond (ML-25M scale); the others read every sample. Each yields
``{"count", "checked", "example"}`` (``example``: the first offending sample's split and id). The
next_item audit also reports where the target sits among the candidates, with a chi-square test
against uniform (a biased position would reward a method for the order, Hou et al., ECIR 2024). It is
informational: the order is a seeded shuffle, so it does not fail the audit.

:func:`audit_few_shot` checks, per cell, that the few-shot subsets are nested and disjoint from valid
and test. Any non-zero count fails the cell (:func:`require_passed`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: bumped whenever a check changes, so that cached protocols are audited again (it is in their header)
AUDIT_VERSION = 1
SPLITS = ("train", "valid", "test")
#: the history and candidate checks of a split look up every listed item; past this many samples they
#: check a seeded uniform subset (``checked`` says how many), so 25M interactions audit in seconds
MAX_LISTS_CHECKED = 1 << 18
_BLOCK_ROWS = 1 << 17


class ProtocolAuditError(RuntimeError):
    """A protocol or few-shot subset failed a leakage check."""


class CheckTally:
    """The counts of one audit, check by check, in the order they are run: ``{name: {"count", "checked",
    "example"}}``, the example being the first offending sample (with its split when one is given).
    Also the tally of the answer-in-prompt check (:mod:`benchmarks.audits.prompts`)."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}

    def add(self, name: str, split: str | None, bad: np.ndarray, sample_id: np.ndarray) -> None:
        entry = self.checks.setdefault(name, {"count": 0, "checked": 0, "example": None})
        entry["count"] += int(bad.sum())
        entry["checked"] += len(bad)
        if entry["example"] is None and bad.any():
            where = {"split": split} if split is not None else {}
            entry["example"] = {**where, "sample_id": int(sample_id[np.argmax(bad)])}

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"version": AUDIT_VERSION, "passed": all(c["count"] == 0 for c in self.checks.values()),
                "checks": self.checks, **extra}


class _PairTimes:
    """The earliest timestamp of every (user, item) pair of the canonical interactions."""

    def __init__(self, interactions: pd.DataFrame, n_items: int) -> None:
        self.n_items = n_items
        codes = interactions["user"].to_numpy(np.int64) * n_items + interactions["item"].to_numpy(np.int64)
        stamps = interactions["timestamp"].to_numpy(np.int64)
        order = np.lexsort((stamps, codes))
        codes, stamps = codes[order], stamps[order]
        first = np.ones(len(codes), dtype=bool)
        first[1:] = codes[1:] != codes[:-1]
        self.codes, self.stamps = codes[first], stamps[first]

    def lookup(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether the user interacted with the item, the earliest timestamp; -1 where not)."""
        codes = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        if not len(self.codes):
            return np.zeros(codes.shape, dtype=bool), np.full(codes.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        found = self.codes[at] == codes
        return found, np.where(found, self.stamps[at], -1)


def _sampled(table: Mapping[str, Any]) -> Mapping[str, Any]:
    """``table``, or a seeded uniform subset of ``MAX_LISTS_CHECKED`` of its rows."""
    n = len(table["user"])
    if n <= MAX_LISTS_CHECKED:
        return table
    rows = np.sort(np.random.default_rng(0).choice(n, size=MAX_LISTS_CHECKED, replace=False))
    return {name: values.take(rows) if hasattr(values, "length") else _array(table, name)[rows]
            for name, values in table.items()}


def _list_blocks(column: Any, n: int):
    """(lo, hi, each row's length, the rows' values concatenated) of a list column, block by block:
    windows (``values`` / ``length``, as the builder makes them) or an object column of arrays."""
    for lo in range(0, n, _BLOCK_ROWS):
        hi = min(n, lo + _BLOCK_ROWS)
        if hasattr(column, "length"):
            lengths, values = np.asarray(column.length[lo:hi], dtype=np.int64), column.values(lo, hi)
        else:
            arrays = [np.asarray(a) for a in column[lo:hi]]
            lengths = np.array([len(a) for a in arrays], dtype=np.int64)
            values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        yield lo, hi, lengths, values.astype(np.int64, copy=False)


def _array(table: Mapping[str, Any], name: str) -> np.ndarray:
    values = table[name]
    return values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)


def _any_per_row(bad_values: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(row[bad_values], minlength=n).astype(bool) if n else np.zeros(0, dtype=bool)


def _check_histories(tally: CheckTally, split: str, table: Mapping[str, Any], pairs: _PairTimes, ties_by_item: bool,
                     cutoff: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """``history_before_target`` and ``history_is_users`` (and, with ``cutoff``: per sample the
    (timestamp, item) from which the user's interactions are evaluation, ``eval_not_in_training``)."""
    users, target, stamp = _array(table, "user"), _array(table, "item"), _array(table, "timestamp")
    sample_id, n = _array(table, "sample_id"), len(users)
    late, foreign, leaked = (np.zeros(n, dtype=bool) for _ in range(3))
    for lo, hi, lengths, items in _list_blocks(table["history"], n):
        row = np.repeat(np.arange(hi - lo), lengths)
        user, t_target, i_target = users[lo:hi][row], stamp[lo:hi][row], target[lo:hi][row]
        found, t_item = pairs.lookup(user, items)
        after = (t_item > t_target) | ((t_item == t_target) & ((items >= i_target) if ties_by_item else True))
        late[lo:hi] = _any_per_row(found & after, row, hi - lo)
        foreign[lo:hi] = _any_per_row(~found, row, hi - lo)
        if cutoff is not None:
            t_cut, i_cut = cutoff[0][lo:hi][row], cutoff[1][lo:hi][row]
            leaked[lo:hi] = _any_per_row(found & ((t_item > t_cut) | ((t_item == t_cut) & (items >= i_cut))),
                                         row, hi - lo)
    tally.add("history_before_target", split, late, sample_id)
    tally.add("history_is_users", split, foreign, sample_id)
    if cutoff is not None:
        t_cut, i_cut = cutoff
        leaked |= (stamp > t_cut) | ((stamp == t_cut) & (target >= i_cut))  # the target itself
        tally.add("eval_not_in_training", split, leaked, sample_id)


def _after(keys: Sequence[np.ndarray], first: Sequence) -> np.ndarray:
    """Which rows of the lexicographic ``keys`` are at or after the key ``first``."""
    at_or_after = np.ones(len(keys[0]), dtype=bool)
    for column, value in zip(reversed(keys), reversed(first)):
        at_or_after = (column > value) | ((column == value) & at_or_after)
    return at_or_after


def _first(keys: Sequence[np.ndarray]) -> tuple:
    """The smallest key of the lexicographic columns ``keys``."""
    row = np.lexsort(keys[::-1])[0]
    return tuple(int(column[row]) for column in keys)


def _audit_ctr(splits: Mapping[str, Mapping[str, Any]], pairs: _PairTimes) -> dict[str, Any]:
    tally = CheckTally()
    for split in SPLITS:
        _check_histories(tally, split, _sampled(splits[split]), pairs, ties_by_item=False)
    keys = {s: [_array(splits[s], c) for c in ("timestamp", "user", "item")] for s in SPLITS}
    for earlier, later in (("train", ("valid", "test")), ("valid", ("test",))):
        firsts = [_first(keys[s]) for s in later if len(keys[s][0])]
        bad = _after(keys[earlier], min(firsts)) if firsts else np.zeros(len(keys[earlier][0]), dtype=bool)
        tally.add("train_before_eval", earlier, bad, _array(splits[earlier], "sample_id"))
    n_items = pairs.n_items
    train_pairs = np.unique(keys["train"][1].astype(np.int64) * n_items + keys["train"][2])
    test_pairs = keys["test"][1].astype(np.int64) * n_items + keys["test"][2]
    at = np.minimum(np.searchsorted(train_pairs, test_pairs), max(len(train_pairs) - 1, 0))
    in_train = (train_pairs[at] == test_pairs) if len(train_pairs) else np.zeros(len(test_pairs), dtype=bool)
    tally.add("test_pair_in_train", "test", in_train, _array(splits["test"], "sample_id"))
    return tally.result()


def _last_two(interactions: pd.DataFrame, n_users: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per user: (timestamp, item, whether it exists) of the last and the second-last interaction by
    (timestamp, item id)."""
    user = interactions["user"].to_numpy(np.int64)
    stamp, item = interactions["timestamp"].to_numpy(np.int64), interactions["item"].to_numpy(np.int64)
    order = np.lexsort((item, stamp, user))
    user, stamp, item = user[order], stamp[order], item[order]
    out = {}
    for split, back in (("test", 1), ("valid", 2)):
        is_last = np.zeros(len(user), dtype=bool)
        if len(user) >= back:
            is_last[: len(user) - back + 1] = True
            shifted = np.append(user[back - 1:], np.full(back - 1, -1))
            is_last &= (user == shifted) & (np.append(user[back:], np.full(back, -1)) != user)
        t, i, ok = np.full(n_users, -1), np.full(n_users, -1), np.zeros(n_users, dtype=bool)
        rows = np.flatnonzero(is_last)
        t[user[rows]], i[user[rows]], ok[user[rows]] = stamp[rows], item[rows], True
        out[split] = (t, i, ok)
    return out


def _check_candidates(tally: CheckTally, split: str, table: Mapping[str, Any], pairs: _PairTimes) -> None:
    """``candidates_unique``, ``target_once``, ``negatives_unseen``."""
    users, target, label = _array(table, "user"), _array(table, "item"), _array(table, "label")
    sample_id, n = _array(table, "sample_id"), len(users)
    repeated, misplaced, seen = (np.zeros(n, dtype=bool) for _ in range(3))
    for lo, hi, lengths, items in _list_blocks(table["candidates"], n):
        row = np.repeat(np.arange(hi - lo), lengths)
        key = np.sort(row * (pairs.n_items + 1) + items)  # rows apart, items sorted within a row
        repeated[lo:hi] = _any_per_row(key[1:] == key[:-1], key[1:] // (pairs.n_items + 1), hi - lo)
        is_target = items == target[lo:hi][row]
        at_label = np.cumsum(lengths) - lengths + np.clip(label[lo:hi], 0, np.maximum(lengths - 1, 0))
        label_ok = (label[lo:hi] >= 0) & (label[lo:hi] < lengths)
        label_ok[label_ok] &= items[at_label[label_ok]] == target[lo:hi][label_ok]
        misplaced[lo:hi] = (np.bincount(row[is_target], minlength=hi - lo) != 1) | ~label_ok
        found, _ = pairs.lookup(users[lo:hi][row], items)
        seen[lo:hi] = _any_per_row(found & ~is_target, row, hi - lo)
    tally.add("candidates_unique", split, repeated, sample_id)
    tally.add("target_once", split, misplaced, sample_id)
    tally.add("negatives_unseen", split, seen, sample_id)


def _position_test(labels: np.ndarray, n_candidates: int) -> dict[str, Any]:
    """Where the target sits among the candidates, and the chi-square test of that against uniform."""
    from scipy.stats import chisquare

    labels = labels[(labels >= 0) & (labels < n_candidates)]  # the others fail target_once
    counts = np.bincount(labels, minlength=n_candidates)
    if len(labels) == 0:
        return {"n": 0, "counts": counts.tolist(), "chi2": None, "p_value": None}
    chi2, p_value = chisquare(counts)
    return {"n": int(len(labels)), "counts": counts.tolist(), "chi2": float(chi2), "p_value": float(p_value)}


def _audit_next_item(splits: Mapping[str, Mapping[str, Any]], interactions: pd.DataFrame, pairs: _PairTimes,
                     n_candidates: int, min_interactions: int) -> dict[str, Any]:
    tally = CheckTally()
    n_users = int(interactions["user"].max()) + 1 if len(interactions) else 0
    last = _last_two(interactions, n_users)
    for split in ("valid", "test"):
        table = splits[split]
        users = _array(table, "user")
        t, i, ok = last[split]
        wrong = ~ok[users] | (t[users] != _array(table, "timestamp")) | (i[users] != _array(table, "item"))
        tally.add("target_is_last", split, wrong, _array(table, "sample_id"))
    # the users the builder evaluates: from their valid interaction on, nothing may feed training
    counts = np.bincount(interactions["user"].to_numpy(np.int64), minlength=n_users)
    evaluated = (counts >= int(min_interactions)) & last["valid"][2]
    t_cut = np.where(evaluated, last["valid"][0], np.iinfo(np.int64).max)
    i_cut = np.where(evaluated, last["valid"][1], 0)
    for split in SPLITS:
        table = _sampled(splits[split])
        users = _array(table, "user")
        cutoff = (t_cut[users], i_cut[users]) if split == "train" else None
        _check_histories(tally, split, table, pairs, ties_by_item=True, cutoff=cutoff)
    positions = {}
    for split in ("valid", "test"):
        _check_candidates(tally, split, _sampled(splits[split]), pairs)
        positions[split] = _position_test(_array(splits[split], "label"), n_candidates)
    return tally.result(candidate_position=positions)


def audit_protocol(task: str, splits: Mapping[str, Mapping[str, Any]], interactions: pd.DataFrame, n_items: int,
                   params: Mapping[str, Any]) -> dict[str, Any]:
    """The leakage audit of a protocol's ``splits`` (column mappings or frames) built from the
    canonical ``interactions``: ``{"version", "passed", "checks": {name: {"count", "checked",
    "example"}}}`` (next_item adds ``candidate_position``)."""
    pairs = _PairTimes(interactions, n_items)
    if task == "ctr":
        return _audit_ctr(splits, pairs)
    return _audit_next_item(splits, interactions, pairs, int(params["n_candidates"]),
                            int(params["min_interactions"]))


def audit_few_shot(subsets: Mapping[Any, pd.DataFrame], valid: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """Few-shot subsets (shots -> the train rows of one seed) are nested, each inside the next larger
    one (``few_shot_nested``), and hold no interaction (user, item, timestamp) of valid or test
    (``few_shot_disjoint``)."""
    tally = CheckTally()
    held_out = pd.concat([valid, test])[["user", "item", "timestamp"]].drop_duplicates()
    ordered = sorted(subsets.items(), key=lambda kv: len(kv[1]))
    for k, (_, subset) in enumerate(ordered):
        ids = subset["sample_id"].to_numpy()
        larger = ordered[k + 1][1]["sample_id"].to_numpy() if k + 1 < len(ordered) else ids
        tally.add("few_shot_nested", "train", ~np.isin(ids, larger), ids)
        overlap = subset[["user", "item", "timestamp"]].merge(held_out, how="left", indicator=True)
        tally.add("few_shot_disjoint", "train", (overlap["_merge"] == "both").to_numpy(), ids)
    return tally.result(shots=[shots for shots, _ in ordered])


def require_passed(audits: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Raise one line naming the first failed check, its count and an example sample id."""
    for scope, report in audits.items():
        if not isinstance(report, Mapping) or report["passed"]:
            continue
        name, check = next((n, c) for n, c in report["checks"].items() if c["count"])
        example = check["example"]
        raise ProtocolAuditError(f"{scope} audit failed: {name}: {check['count']} of {check['checked']} samples, "
                                 f"e.g. sample_id {example['sample_id']} ({example['split']})")
