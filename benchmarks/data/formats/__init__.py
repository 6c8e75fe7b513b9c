"""Raw-format parsers: each turns a card source's files into raw tables with the source's own ids.

A parser is ``parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables`` in a
module of this package, listed in ``PARSERS``. ``benchmarks.data.canonical`` turns raw tables into the
canonical ones (dense codes, clean titles, filtering); parsers only read.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: format name (as written in cards) -> "module:function"
PARSERS = {
    "recbole_atomic": "benchmarks.data.formats.recbole_atomic:parse",
    "movielens_100k_zip": "benchmarks.data.formats.movielens:parse_100k_zip",
    "movielens_1m_zip": "benchmarks.data.formats.movielens:parse_1m_zip",
    "movielens_25m_zip": "benchmarks.data.formats.movielens:parse_25m_zip",
    "amazon_2014": "benchmarks.data.formats.amazon:parse_2014",
    "amazon_2018": "benchmarks.data.formats.amazon:parse_2018",
    "amazon_2023": "benchmarks.data.formats.amazon:parse_2023",
    "steam": "benchmarks.data.formats.steam:parse",
    "hetrec_lastfm_zip": "benchmarks.data.formats.lastfm:parse",
}


@dataclass
class RawTables:
    """interactions: user_raw, item_raw (str, or int64 where the source's ids are integers), rating
    (float32; 1.0 for implicit feedback), timestamp (int64 seconds);
    items: item_raw (same type as in interactions), title (str, as published; None or "" when the
    source has none), year (Int64), genres (str, "|"-joined);
    users: user_raw (same type) and side features."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame


#: timestamps (unix seconds) outside [TIME_MIN, TIME_MAX) are bad values: before 1970 or from 2100 on
TIME_MIN, TIME_MAX = 0, 4_102_444_800

#: what a bad line was dropped for (the keys of :attr:`BadLines.kinds`)
BAD_KINDS = ("malformed", "not_utf8", "not_a_number", "empty_id", "nan_rating", "time_out_of_range")


@dataclass
class BadLines:
    """Counts malformed lines (every one is dropped), by kind, and keeps the first few locations for
    the error message. Every line a reader reads is counted in ``total``."""

    total: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    repeats: int = 0  # lines that repeat an earlier line of a ratings file (kept here, dropped later)
    repeat_examples: list[str] = field(default_factory=list)

    def add_lines(self, n: int) -> None:
        self.total += n

    def record(self, file: str, line_no: int, why: str, kind: str = "malformed") -> None:
        """Count line ``line_no`` of ``file`` as bad (``kind``: one of :data:`BAD_KINDS`)."""
        self.bad += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{file}:{line_no}: {why}")

    def record_repeat(self, file: str, line_no: int) -> None:
        """Note that line ``line_no`` of ``file`` repeats an earlier line; it counts against the budget."""
        self.repeats += 1
        if len(self.repeat_examples) < 5:
            self.repeat_examples.append(f"{file}:{line_no}: repeats an earlier line exactly")

    def check(self, max_ratio: float, dataset: str) -> None:
        """Raise if more than ``max_ratio`` of the lines were malformed or repeats.

        Raises:
            ValueError: one line naming the count, the budget and the first bad lines as file:line.
        """
        flawed = self.bad + self.repeats
        if self.total and flawed / self.total > max_ratio:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted({**self.kinds, "repeated_line": self.repeats}.items()) if n)
            raise ValueError(f"dataset '{dataset}': {flawed} of {self.total} lines malformed "
                             f"(> {max_ratio:.3%} allowed by the card; {kinds}), "
                             f"e.g. {'; '.join((self.examples + self.repeat_examples)[:5])}")


def value_problems(rating: pd.Series, timestamp: pd.Series) -> list[tuple[np.ndarray, str, str]]:
    """(mask, why, kind) for the interaction rows whose rating is not a finite float32 or whose
    timestamp (seconds) is outside [TIME_MIN, TIME_MAX). Inputs may be float or int."""
    r = pd.to_numeric(rating, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    t = pd.to_numeric(timestamp, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad_t = ~((t >= TIME_MIN) & (t < TIME_MAX))
        bad_r = ~np.isfinite(r) | (np.abs(r) > np.finfo(np.float32).max)  # ratings are stored as float32
    return [(bad_r, "the rating is NaN or infinite (as float32)", "nan_rating"),
            (bad_t, f"the timestamp is not a time in 1970-2099 (outside [{TIME_MIN}, {TIME_MAX}) seconds)",
             "time_out_of_range")]


INTERACTION_COLUMNS = ("user_raw", "item_raw", "rating", "timestamp")


def interaction_checks(frame: pd.DataFrame) -> list[tuple[np.ndarray, str, str]]:
    """Row checks of an interactions file (the :func:`value_problems` of its rating and timestamp)."""
    return value_problems(frame["rating"], frame["timestamp"])


def _packed_pairs(frame: pd.DataFrame, user: str, item: str) -> np.ndarray | None:
    """``user * (max item + 1) + item`` (int64) when both ids are non-negative integers that fit, else None."""
    u, i = frame[user].to_numpy(), frame[item].to_numpy()
    if not len(frame) or u.dtype.kind not in "iu" or i.dtype.kind not in "iu" or u.min() < 0 or i.min() < 0:
        return None
    width = int(i.max()) + 1
    if (int(u.max()) + 1) * width >= 2 ** 63:
        return None
    return u.astype(np.int64) * width + i.astype(np.int64)


def repeated_pair_count(frame: pd.DataFrame, user: str = "user_raw", item: str = "item_raw") -> int:
    """How many rows repeat the (user, item) pair of an earlier row. Integer ids are counted by one
    sort (half a second at 25M rows, where hashing the pairs takes ten)."""
    packed = _packed_pairs(frame, user, item)
    if packed is None:
        return int(frame.duplicated([user, item]).sum())
    packed.sort()
    return int((packed[1:] == packed[:-1]).sum())


def repeated_rows(frame: pd.DataFrame, columns: tuple[str, ...] = INTERACTION_COLUMNS) -> np.ndarray:
    """Mask of the rows equal on ``columns`` to an earlier row (the first of equal rows is unmasked).
    With integer ids (the first two columns), no repeated pair means no repeated row: the usual case
    costs one sort."""
    packed = _packed_pairs(frame, *columns[:2])
    if packed is not None:
        packed.sort()
        if not (packed[1:] == packed[:-1]).any():
            return np.zeros(len(frame), dtype=bool)
    return frame.duplicated(list(columns), keep="first").to_numpy()


def parser(name: str):
    from benchmarks.registry import did_you_mean

    if name not in PARSERS:
        raise did_you_mean("raw format", name, list(PARSERS))
    module, _, func = PARSERS[name].partition(":")
    return getattr(importlib.import_module(module), func)
