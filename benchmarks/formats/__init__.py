"""Raw-format parsers: each turns a card source's files into raw tables with the source's own ids.

A parser is ``parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables`` in a
module of this package, listed in ``PARSERS``. ``benchmarks.canonical`` turns raw tables into the
canonical ones (dense codes, clean titles, filtering); parsers only read.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import pandas as pd

#: format name (as written in cards) -> "module:function"
PARSERS = {
    "recbole_atomic": "benchmarks.formats.recbole_atomic:parse",
    "movielens_100k_zip": "benchmarks.formats.movielens:parse_100k_zip",
    "movielens_1m_zip": "benchmarks.formats.movielens:parse_1m_zip",
    "movielens_25m_zip": "benchmarks.formats.movielens:parse_25m_zip",
    "amazon_2014": "benchmarks.formats.amazon:parse_2014",
    "amazon_2018": "benchmarks.formats.amazon:parse_2018",
    "amazon_2023": "benchmarks.formats.amazon:parse_2023",
    "steam": "benchmarks.formats.steam:parse",
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


@dataclass
class BadLines:
    """Counts malformed lines per file and keeps the first few locations for the error message."""

    total: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)

    def add_lines(self, n: int) -> None:
        self.total += n

    def record(self, file: str, line_no: int, why: str) -> None:
        self.bad += 1
        if len(self.examples) < 5:
            self.examples.append(f"{file}:{line_no}: {why}")

    def check(self, max_ratio: float, dataset: str) -> None:
        """Raise if more than ``max_ratio`` of the lines were malformed."""
        if self.total and self.bad / self.total > max_ratio:
            raise ValueError(f"dataset '{dataset}': {self.bad} of {self.total} lines malformed "
                             f"(> {max_ratio:.3%} allowed by the card), e.g. {'; '.join(self.examples)}")


def parser(name: str):
    from benchmarks.registry import did_you_mean

    if name not in PARSERS:
        raise did_you_mean("raw format", name, list(PARSERS))
    module, _, func = PARSERS[name].partition(":")
    return getattr(importlib.import_module(module), func)
