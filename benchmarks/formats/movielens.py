"""GroupLens MovieLens archives.

* ``ml-100k.zip``: ``u.data`` (user, item, rating, timestamp; tabs), ``u.item`` (latin-1, ``|``:
  id, "Title (Year)", release date, video date, IMDb URL, 19 genre flags named in ``u.genre``),
  ``u.user`` (id|age|gender|occupation|zip).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd

from benchmarks.cards import Source
from benchmarks.formats import BadLines, RawTables


def _split_lines(text: str, sep: str, n_fields: int, file: str, report: BadLines) -> list[list[str]]:
    rows = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        report.add_lines(1)
        fields = line.split(sep)
        if len(fields) != n_fields:
            report.record(file, no, f"expected {n_fields} fields, got {len(fields)}")
            continue
        rows.append(fields)
    return rows


def parse_100k_zip(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    with zipfile.ZipFile(next(iter(paths.values()))) as archive:
        def member(name: str) -> str:
            match = [m for m in archive.namelist() if m.endswith("/" + name) or m == name]
            return archive.read(match[0]).decode("latin-1")

        data = pd.read_csv(io.StringIO(member("u.data")), sep="\t", header=None, dtype=str,
                           names=["user_raw", "item_raw", "rating", "timestamp"])
        report.add_lines(len(data))
        genre_names = [line.split("|")[0] for line in member("u.genre").splitlines() if line.strip()]
        item_rows = _split_lines(member("u.item"), "|", 5 + len(genre_names), "u.item", report)
        user_rows = _split_lines(member("u.user"), "|", 5, "u.user", report)

    interactions = pd.DataFrame({
        "user_raw": data["user_raw"], "item_raw": data["item_raw"],
        "rating": pd.to_numeric(data["rating"]).astype("float32"),
        "timestamp": pd.to_numeric(data["timestamp"]).astype("int64"),
    })
    items = pd.DataFrame({
        "item_raw": [r[0] for r in item_rows],
        "title": [r[1] for r in item_rows],
        "year": pd.to_numeric(pd.Series([r[2][-4:] for r in item_rows]), errors="coerce").astype("Int64"),
        "genres": ["|".join(g for g, flag in zip(genre_names, r[5:]) if flag == "1") for r in item_rows],
    })
    users = pd.DataFrame(user_rows, columns=["user_raw", "age", "gender", "occupation", "zip_code"])
    return RawTables(interactions, items, users)
