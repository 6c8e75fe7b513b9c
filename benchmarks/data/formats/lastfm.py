"""HetRec 2011 Last.fm (GroupLens ``hetrec2011-lastfm-2k.zip``): tab-separated files with a header line,
at the root of the archive.

* ``user_taggedartists-timestamps.dat``: ``userID, artistID, tagID, timestamp`` (milliseconds since the
  epoch; the dates of ``user_taggedartists.dat``, so days). Every tag assignment becomes one implicit
  interaction (rating 1.0) at its time in seconds; a pair tagged several times stays several rows here
  (the card's ``filtering.deduplicate`` keeps the earliest).
* ``artists.dat``: ``id, name, url, pictureURL`` (UTF-8): the names are the item titles, as published
  (canonical tables clean them). There is no year and no genre.

Not read: ``user_artists.dat`` (listening counts without a time), ``tags.dat``, ``user_taggedartists.dat``
(the same assignments with day, month, year) and ``user_friends.dat``. The ids are integers and stay
integers. Every line read is counted; malformed ones (and tag assignments whose time is not in 1970-2099)
are recorded in the report and dropped; lines that repeat an earlier tag assignment exactly are noted.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from benchmarks.data.cards import Source
from benchmarks.data.formats import BadLines, RawTables, value_problems
from benchmarks.data.formats.delimited import read_delimited
from benchmarks.data.formats.movielens import zip_member

TAGGINGS, ARTISTS = "user_taggedartists-timestamps.dat", "artists.dat"
_TAGGING_TYPES = {"user_raw": pa.int64(), "item_raw": pa.int64(), "tag": pa.int64(), "time_ms": pa.int64()}
_ARTIST_TYPES = {"item_raw": pa.int64(), "title": pa.string(), "url": pa.string(), "picture_url": pa.string()}


def _seconds(time_ms: pd.Series) -> pd.Series:
    return time_ms // 1000


def _tagging_checks(frame: pd.DataFrame) -> list[tuple[np.ndarray, str, str]]:
    """The time of each tag assignment, in seconds, must be a time in 1970-2099."""
    return value_problems(pd.Series(1.0, index=frame.index), _seconds(frame["time_ms"]))


def parse(paths: dict[str, Path], source: Source, report: BadLines) -> RawTables:
    with zipfile.ZipFile(next(iter(paths.values()))) as archive:
        taggings = read_delimited(lambda: archive.open(zip_member(archive, TAGGINGS)), TAGGINGS, _TAGGING_TYPES,
                                  report, sep="\t", header=True, checks=_tagging_checks,
                                  repeats=tuple(_TAGGING_TYPES))
        artists = read_delimited(lambda: archive.open(zip_member(archive, ARTISTS)), ARTISTS, _ARTIST_TYPES,
                                 report, sep="\t", header=True)
    interactions = pd.DataFrame({
        "user_raw": taggings["user_raw"].to_numpy(dtype="int64"),
        "item_raw": taggings["item_raw"].to_numpy(dtype="int64"),
        "rating": np.ones(len(taggings), dtype=np.float32),
        "timestamp": _seconds(taggings["time_ms"]).to_numpy(dtype="int64"),
    })
    items = pd.DataFrame({
        "item_raw": artists["item_raw"].to_numpy(dtype="int64"),
        "title": artists["title"].to_numpy(dtype=object),
        "year": pd.array([pd.NA] * len(artists), dtype="Int64"),
        "genres": "",
    })
    users = pd.DataFrame({"user_raw": pd.unique(interactions["user_raw"])})
    return RawTables(interactions, items, users)
