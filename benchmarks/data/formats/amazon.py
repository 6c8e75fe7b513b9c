"""Amazon review data (McAuley lab), three releases; a card picks one with its source ``format``.

=============  =========================================  ==========================================
format         reviews file: one record per line          meta file: one record per line
=============  =========================================  ==========================================
amazon_2014    ``reviews_<Cat>_5.json.gz``: JSON (read as  ``meta_<Cat>.json.gz``: Python dict
               JSON, else as a Python literal): reviewerID, literals: asin, title, categories
               asin, overall, unixReviewTime (seconds)     (list of category paths)
amazon_2018    ``<Cat>_5.json.gz``: JSON: reviewerID, asin, ``meta_<Cat>.json.gz``: JSON: asin,
               overall, unixReviewTime (seconds)           title, category (one path)
amazon_2023    ``<Cat>.jsonl.gz``: JSON: user_id,           ``meta_<Cat>.jsonl.gz``: JSON:
               parent_asin, rating, timestamp (ms)         parent_asin, title, categories,
                                                           main_category
=============  =========================================  ==========================================

The meta file is the one of the source's files whose name starts with ``meta_``. Ratings are the
1-5 stars. Items without a meta record, or with an empty title, get the canonical placeholder title.
Reviews whose rating is not a finite number or whose time is not in 1970-2099 are bad lines.
The source publishes no checksums: cards list the files with ``null`` and the sha256 of what was read
is recorded instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.data.cards import Source
from benchmarks.data.formats import BadLines, RawTables
from benchmarks.data.formats.line_records import drop_bad_values, drop_invalid, read_records


@dataclass(frozen=True)
class _Release:
    """Field names and line decoders of one release."""

    review_decoder: str
    user: str
    item: str
    rating: str
    time: str
    time_per_second: int  # timestamp units per second
    meta_decoder: str
    meta_item: str
    meta_categories: str


_RELEASES = {
    "2014": _Release("json_or_python", "reviewerID", "asin", "overall", "unixReviewTime", 1,
                     "python", "asin", "categories"),
    "2018": _Release("json", "reviewerID", "asin", "overall", "unixReviewTime", 1,
                     "json", "asin", "category"),
    "2023": _Release("json", "user_id", "parent_asin", "rating", "timestamp", 1000,
                     "json", "parent_asin", "categories"),
}


def _files(paths: dict[str, Path]) -> tuple[tuple[str, Path], tuple[str, Path]]:
    meta = [(n, p) for n, p in paths.items() if Path(n).name.startswith("meta_")]
    reviews = [(n, p) for n, p in paths.items() if not Path(n).name.startswith("meta_")]
    if len(meta) != 1 or len(reviews) != 1:
        raise ValueError(f"an Amazon source lists one reviews file and one meta_ file, got {sorted(paths)}")
    return reviews[0], meta[0]


def _genres(value: object) -> str:
    """Categories as "|"-joined text: a path (2018, 2023) or the first of several paths (2014)."""
    if not isinstance(value, list) or not value:
        return ""
    path = value[0] if isinstance(value[0], list) else value
    return "|".join(str(c).strip() for c in path if str(c).strip())


def _interactions(name: str, path: Path, release: _Release, report: BadLines) -> pd.DataFrame:
    keys = (release.user, release.item, release.rating, release.time)
    rows = read_records(path, name, release.review_decoder, keys, keys, report)
    rating = pd.to_numeric(rows[release.rating], errors="coerce")
    time = pd.to_numeric(rows[release.time], errors="coerce")
    rows = drop_invalid(rows, rating.isna() | time.isna(), "rating or time is not a number", name, report)
    seconds = time[rows.index] // release.time_per_second
    rows = drop_bad_values(rows, rating[rows.index], seconds, name, report)
    return pd.DataFrame({
        "user_raw": rows[release.user].astype(str).to_numpy(),
        "item_raw": rows[release.item].astype(str).to_numpy(),
        "rating": rating[rows.index].astype("float32").to_numpy(),
        "timestamp": seconds[rows.index].astype("int64").to_numpy(),
    })


def _items(name: str, path: Path, release: _Release, report: BadLines) -> pd.DataFrame:
    keys = (release.meta_item, "title", release.meta_categories)
    rows = read_records(path, name, release.meta_decoder, keys, (release.meta_item,), report)
    return pd.DataFrame({
        "item_raw": rows[release.meta_item].astype(str).to_numpy(),
        "title": rows["title"].map(lambda t: "" if t is None else str(t)).to_numpy(),
        "year": pd.array([pd.NA] * len(rows), dtype="Int64"),
        "genres": rows[release.meta_categories].map(_genres).to_numpy(),
    })


def _parse(release: str, paths: dict[str, Path], report: BadLines) -> RawTables:
    (review_name, review_path), (meta_name, meta_path) = _files(paths)
    spec = _RELEASES[release]
    interactions = _interactions(review_name, review_path, spec, report)
    items = _items(meta_name, meta_path, spec, report)
    users = pd.DataFrame({"user_raw": interactions["user_raw"].unique()})
    return RawTables(interactions, items, users)


def parse_2014(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    return _parse("2014", paths, report)


def parse_2018(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    return _parse("2018", paths, report)


def parse_2023(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    return _parse("2023", paths, report)
