"""GroupLens MovieLens archives.

* ``ml-100k.zip``: ``u.data`` (user, item, rating, timestamp; tabs), ``u.item`` (latin-1, ``|``:
  id, "Title (Year)", release date, video date, IMDb URL, 19 genre flags named in ``u.genre``),
  ``u.user`` (id|age|gender|occupation|zip).
* ``ml-1m.zip``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat`` (latin-1,
  ``MovieID::Title (Year)::Genre|Genre``), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip``).
* ``ml-25m.zip``: ``ratings.csv`` (``userId,movieId,rating,timestamp``, half stars, header line) and
  ``movies.csv`` (``movieId,title,genres``, UTF-8, titles with commas in double quotes); no user file.

The ids are integers and stay integers (faster canonical tables at 25M rows). Every line of every
file read is counted; malformed ones (and ratings lines with a NaN rating or an impossible
timestamp) are recorded in the report and dropped; ratings lines that repeat an earlier line are
noted in the report (canonical tables drop them).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa

from benchmarks.data.cards import Source
from benchmarks.data.formats import INTERACTION_COLUMNS, BadLines, RawTables, interaction_checks
from benchmarks.data.formats.delimited import read_delimited

_RATING_TYPES = {"user_raw": pa.int64(), "item_raw": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
_NO_GENRES = "(no genres listed)"


def _split_lines(text: str, sep: str, n_fields: int, file: str, report: BadLines,
                 int_fields: tuple[int, ...] = ()) -> list[list[str]]:
    """The lines of a small side file split into ``n_fields`` fields; others are recorded as bad, and
    so are lines whose fields at ``int_fields`` are not integers."""
    rows = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        report.add_lines(1)
        fields = line.split(sep)
        if len(fields) != n_fields:
            report.record(file, no, f"expected {n_fields} fields, got {len(fields)}")
            continue
        if not all(fields[i].strip().isdigit() for i in int_fields):
            report.record(file, no, "an id is not an integer")
            continue
        rows.append(fields)
    return rows


def zip_member(archive: zipfile.ZipFile, name: str) -> str:
    """The archive member called ``name``, at the top (HetRec) or in the archive's folder (``ml-1m/``)."""
    match = [m for m in archive.namelist() if m.endswith("/" + name) or m == name]
    if not match:
        raise ValueError(f"{archive.filename}: no member '{name}' (is this the right archive?)")
    return match[0]


def _year_from_title(titles: pd.Series) -> pd.Series:
    """The "(1995)" suffix of MovieLens titles as Int64 (NA when absent)."""
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").astype("Int64")


def parse_100k_zip(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    with zipfile.ZipFile(next(iter(paths.values()))) as archive:
        def member(name: str) -> str:
            return archive.read(zip_member(archive, name)).decode("latin-1")

        interactions = read_delimited(lambda: archive.open(zip_member(archive, "u.data")), "u.data", _RATING_TYPES,
                                      report, sep="\t", encoding="latin-1", checks=interaction_checks,
                                      repeats=INTERACTION_COLUMNS)
        genre_names = [r[0] for r in _split_lines(member("u.genre"), "|", 2, "u.genre", report)]
        item_rows = _split_lines(member("u.item"), "|", 5 + len(genre_names), "u.item", report, int_fields=(0,))
        user_rows = _split_lines(member("u.user"), "|", 5, "u.user", report, int_fields=(0,))

    items = pd.DataFrame({
        "item_raw": pd.Series([int(r[0]) for r in item_rows], dtype="int64"),
        "title": [r[1] for r in item_rows],
        "year": pd.to_numeric(pd.Series([r[2][-4:] for r in item_rows]), errors="coerce").astype("Int64"),
        "genres": ["|".join(g for g, flag in zip(genre_names, r[5:]) if flag == "1") for r in item_rows],
    })
    users = pd.DataFrame(user_rows, columns=["user_raw", "age", "gender", "occupation", "zip_code"])
    users["user_raw"] = pd.to_numeric(users["user_raw"]).astype("int64")
    return RawTables(interactions, items, users)


def parse_1m_zip(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    with zipfile.ZipFile(next(iter(paths.values()))) as archive:
        interactions = read_delimited(lambda: archive.open(zip_member(archive, "ratings.dat")), "ratings.dat",
                                      _RATING_TYPES, report, sep="::", checks=interaction_checks,
                                      repeats=INTERACTION_COLUMNS)

        def rows(name: str, n_fields: int) -> list[list[str]]:
            text = archive.read(zip_member(archive, name)).decode("latin-1")
            return _split_lines(text, "::", n_fields, name, report, int_fields=(0,))

        movie_rows, user_rows = rows("movies.dat", 3), rows("users.dat", 5)
    movies = pd.DataFrame(movie_rows, columns=["item_raw", "title", "genres"])
    items = pd.DataFrame({
        "item_raw": pd.to_numeric(movies["item_raw"]).astype("int64"),
        "title": movies["title"],
        "year": _year_from_title(movies["title"]),
        "genres": movies["genres"],
    })
    users = pd.DataFrame(user_rows, columns=["user_raw", "gender", "age", "occupation", "zip_code"])
    users["user_raw"] = pd.to_numeric(users["user_raw"]).astype("int64")
    return RawTables(interactions, items, users)


def parse_25m_zip(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    with zipfile.ZipFile(next(iter(paths.values()))) as archive:
        interactions = read_delimited(lambda: archive.open(zip_member(archive, "ratings.csv")), "ratings.csv",
                                      _RATING_TYPES, report, header=True, checks=interaction_checks,
                                      repeats=INTERACTION_COLUMNS)
        movies = read_delimited(lambda: archive.open(zip_member(archive, "movies.csv")), "movies.csv",
                                {"item_raw": pa.int64(), "title": pa.string(), "genres": pa.string()},
                                report, header=True, quoted=True)
    items = movies.assign(year=_year_from_title(movies["title"]),
                          genres=movies["genres"].replace(_NO_GENRES, ""))
    users = pd.DataFrame({"user_raw": interactions["user_raw"].unique()})
    return RawTables(interactions, items[["item_raw", "title", "year", "genres"]], users)
