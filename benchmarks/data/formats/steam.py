"""Steam reviews and games (Kang & McAuley, SASRec, ICDM 2018), both files of Python dict literals.

* ``steam_reviews.json.gz``: one review per line: ``username``, ``product_id``, ``date``
  (``YYYY-MM-DD``), ``hours``, ``text``, ... A review is an implicit positive: rating 1.0, and the
  timestamp is the date's midnight UTC (many same-day ties; canonical order breaks them by item id).
* ``steam_games.json.gz``: one game per line: ``id``, ``app_name`` (or ``title``), ``genres``,
  ``tags``, ``release_date``.

Users are identified by ``username`` as in SASRec's preprocessing. Repeated (user, game) reviews are
kept here; the card's ``filtering.deduplicate`` keeps the earliest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.data.cards import Source
from benchmarks.data.formats import BadLines, RawTables
from benchmarks.data.formats.line_records import drop_bad_values, drop_invalid, read_records

REVIEWS, GAMES = "steam_reviews.json.gz", "steam_games.json.gz"


def _file(paths: dict[str, Path], name: str) -> Path:
    for listed, path in paths.items():
        if Path(listed).name == name:
            return path
    raise ValueError(f"a steam source lists {REVIEWS} and {GAMES}, got {sorted(paths)}")


def _interactions(path: Path, report: BadLines) -> pd.DataFrame:
    keys = ("username", "product_id", "date")
    rows = read_records(path, REVIEWS, "python", keys, keys, report)
    day = pd.to_datetime(rows["date"].astype(str), format="%Y-%m-%d", errors="coerce")
    rows = drop_invalid(rows, day.isna(), "date is not YYYY-MM-DD", REVIEWS, report)
    seconds = pd.Series(day[rows.index].to_numpy().astype("datetime64[s]").astype(np.int64), index=rows.index)
    rows = drop_bad_values(rows, pd.Series(1.0, index=rows.index), seconds, REVIEWS, report)
    seconds = seconds[rows.index].to_numpy()
    return pd.DataFrame({
        "user_raw": rows["username"].astype(str).to_numpy(),
        "item_raw": rows["product_id"].astype(str).to_numpy(),
        "rating": np.ones(len(rows), dtype=np.float32),
        "timestamp": seconds,
    })


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _items(path: Path, report: BadLines) -> pd.DataFrame:
    rows = read_records(path, GAMES, "python", ("id", "app_name", "title", "genres", "release_date"),
                        ("id",), report)
    names = rows["app_name"].map(_text).where(rows["app_name"].notna(), rows["title"].map(_text))
    year = pd.to_numeric(rows["release_date"].map(_text).str.extract(r"^(\d{4})")[0], errors="coerce")
    return pd.DataFrame({
        "item_raw": rows["id"].astype(str).to_numpy(),
        "title": names.to_numpy(),
        "year": year.astype("Int64").to_numpy(),
        "genres": rows["genres"].map(lambda g: "|".join(map(str, g)) if isinstance(g, list) else "").to_numpy(),
    })


def parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    interactions = _interactions(_file(paths, REVIEWS), report)
    items = _items(_file(paths, GAMES), report)
    users = pd.DataFrame({"user_raw": interactions["user_raw"].unique()})
    return RawTables(interactions, items, users)
