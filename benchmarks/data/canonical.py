"""Canonical tables: every dataset, whatever its raw format, becomes the same three tables.

``interactions(user, item, rating, timestamp)``, ``items(item, raw_id, title, year, genres)`` and
``users(user, raw_id, ...)`` with dense int64 codes (0..n-1, assigned in the order of the raw ids),
titles cleaned for prompts, and the card's filtering applied. Prepared tables are cached as parquet
under the cache root, keyed by the card digest and the sha256 of the raw files; a cached file whose
hash no longer matches, or a ``meta.json`` that cannot be read, is rebuilt (one warning line names
the file).

Data quality: every raw line read is counted; malformed ones (bad fields, values that are not
numbers, non-UTF-8 text, NaN ratings, timestamps outside 1970-2099) are dropped, and they and the
lines of a ratings file that repeat an earlier line count against the card's ``max_bad_line_ratio``.
Rows equal in all four columns are dropped (one kept); other repeated (user, item) pairs are dropped
by ``filtering.deduplicate`` (the earliest kept) or else kept. The counts are
:attr:`CanonicalData.data_quality`.
"""
from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.contract import Catalog
from benchmarks.data.cache import atomic_dir, cache_root, sha256_file
from benchmarks.data.cards import Card, canonical_hash, load_card
from benchmarks.data.formats import BAD_KINDS, BadLines, parser, repeated_pair_count, repeated_rows, value_problems
from benchmarks.data.sources import resolve

_log = logging.getLogger(__name__)

PLACEHOLDER_TITLE = "Unknown {item}"
_ARTICLES = "The|A|An|La|Le|Les|L'|Il|Lo|Das|Der|Die|El|Los|Las|Det|Den"
_TRAILING_ARTICLE = re.compile(rf"^(?P<main>.+?), (?P<art>{_ARTICLES})(?P<rest>\s*\(.*\))?$")
_TRAILING_YEAR = re.compile(r"\s*\((?P<year>\d{4})\)\s*$")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def clean_title(raw: str) -> str:
    """Prompt-ready title: HTML tags dropped and entities decoded, whitespace folded, year suffix
    removed, and a trailing article moved to the front ("Usual Suspects, The (1995)" -> "The Usual
    Suspects")."""
    title = " ".join(html.unescape(_HTML_TAG.sub(" ", str(raw))).split())
    title = _TRAILING_YEAR.sub("", title)
    match = _TRAILING_ARTICLE.match(title)
    if match:
        art = match["art"]
        title = f"{art}{'' if art.endswith(chr(39)) else ' '}{match['main']}{match['rest'] or ''}"
    return title


@dataclass(frozen=True)
class CanonicalData:
    """The canonical tables of one dataset card, plus where they came from."""

    card: Card
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    source_sha256: dict[str, str]
    tiny: bool
    #: what loading found and did, in counts: ``lines_read``; ``bad_lines`` (malformed, all dropped)
    #: and ``bad_<kind>`` for each kind in ``benchmarks.data.formats.BAD_KINDS``; ``repeated_lines`` (ratings
    #: lines repeating an earlier one; both count against the card's max_bad_line_ratio); with
    #: ``filtering.deduplicate``: ``repeated_pairs_dropped``, else ``duplicate_rows_dropped`` (rows
    #: equal in user, item, rating and timestamp) and ``repeated_pairs_kept`` (a (user, item) pair
    #: again, at another time or rating); ``k_core_dropped`` with ``filtering.k_core``; ``interactions``
    data_quality: dict[str, int] = field(default_factory=dict)

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.card.name, self.items, self.users, dict(self.card.domain))

    def statistics(self) -> dict[str, float]:
        """Counts for the dataset table, including last-item timestamp ties (see the card)."""
        inter = self.interactions
        user, timestamp = inter["user"].to_numpy(), inter["timestamp"].to_numpy()
        order = stable_order(user, timestamp, inter["item"].to_numpy())
        user, timestamp = user[order], timestamp[order]
        last = np.flatnonzero(np.append(user[1:] != user[:-1], len(user) > 0))  # each user's last row
        last = last[last > 0]
        last = last[user[last - 1] == user[last]]  # users with two rows or more
        ties = int((timestamp[last] == timestamp[last - 1]).sum())
        n_u, n_i = len(pd.unique(user)), inter["item"].nunique()
        return {
            "users": n_u, "items": n_i, "interactions": len(inter),
            "density": len(inter) / max(1, n_u * n_i),
            "users_with_tied_last_two": ties,
            "untitled_items": int((self.items["title"] == PLACEHOLDER_TITLE.format(
                item=self.card.domain.get("item", "item")) + " " + self.items["raw_id"].astype(str)).sum()),
        }


def stable_order(*keys: np.ndarray) -> np.ndarray:
    """Row indices that sort by ``keys`` (the first key first), stably: rows with equal keys keep
    their order. The same permutation as ``np.lexsort(keys[::-1])`` or pandas' stable multi-column
    sort, computed by Arrow several times faster (25M rows by three keys: about 3 s)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({f"k{i}": key for i, key in enumerate(keys)})
    order = pc.sort_indices(table, sort_keys=[(f"k{i}", "ascending") for i in range(len(keys))])
    return order.to_numpy().astype(np.int64)


def _dense_codes(raw_ids: pd.Series) -> pd.Index:
    if pd.api.types.is_integer_dtype(raw_ids):
        return pd.Index(np.sort(pd.unique(raw_ids.to_numpy())))
    unique = pd.Index(raw_ids.astype(str).unique())
    numeric = pd.to_numeric(pd.Series(unique), errors="coerce")
    if numeric.notna().all():
        return unique[np.argsort(numeric.to_numpy(), kind="stable")]
    return unique.sort_values()


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep users and items with at least ``k`` interactions, iterated until stable."""
    while True:
        user_ok = inter.groupby("user_raw")["item_raw"].transform("size") >= k
        item_ok = inter.groupby("item_raw")["user_raw"].transform("size") >= k
        keep = user_ok & item_ok
        if keep.all():
            return inter
        inter = inter[keep]


def _with_ids(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``column`` as str, unless the parser gave integer ids (kept: much faster at 25M rows)."""
    if pd.api.types.is_integer_dtype(frame[column]):
        return frame
    return frame.astype({column: str})


def _earliest(inter: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): the earliest (the first in file order among equal timestamps)."""
    return inter.sort_values("timestamp", kind="stable").drop_duplicates(["user_raw", "item_raw"])


def _tiny_users(inter: pd.DataFrame, spec: dict) -> pd.DataFrame:
    users = np.sort(inter["user_raw"].unique())
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    chosen = rng.choice(users, size=min(int(spec["n_users"]), len(users)), replace=False)
    return inter[inter["user_raw"].isin(chosen)]


def _check_parsed(inter: pd.DataFrame, fmt: str) -> None:
    """A parser must leave no NaN rating or impossible timestamp (it drops them as bad lines)."""
    for mask, why, _ in value_problems(inter["rating"], inter["timestamp"]):
        if mask.any():
            raise ValueError(f"the '{fmt}' parser kept {int(mask.sum())} interactions where {why}: a bug in "
                             f"benchmarks/data/formats (its readers must record such lines as bad)")


def build(card: Card, tiny: bool = False) -> CanonicalData:
    """Parse the raw files of ``card`` and build its canonical tables (no cache).

    Raises:
        ValueError: more malformed lines than the card allows (names file:line of the first ones), or
            no interaction left after filtering (names the raw files).
    """
    resolved = resolve(card)
    report = BadLines()
    raw = parser(resolved.source.format)(resolved.paths, resolved.source, report)
    report.check(card.max_bad_line_ratio, card.name)
    _check_parsed(raw.interactions, resolved.source.format)
    quality = {"lines_read": report.total, "bad_lines": report.bad,
               **{f"bad_{kind}": report.kinds.get(kind, 0) for kind in BAD_KINDS}, "repeated_lines": report.repeats}
    steps = [f"{report.total} lines read, {report.bad} malformed, {len(raw.interactions)} interactions parsed"]

    inter = _with_ids(_with_ids(raw.interactions, "user_raw"), "item_raw")
    before = len(inter)
    if card.filtering.get("deduplicate"):
        inter = _earliest(inter)
        quality["repeated_pairs_dropped"] = before - len(inter)
        steps.append(f"{len(inter)} after deduplicate")
    else:
        repeats = repeated_rows(inter)
        if repeats.any():
            inter = inter[~repeats]
        quality["duplicate_rows_dropped"] = before - len(inter)
    if card.filtering.get("k_core"):
        before = len(inter)
        inter = k_core(inter, int(card.filtering["k_core"]))
        quality["k_core_dropped"] = before - len(inter)
        steps.append(f"{len(inter)} after k_core {card.filtering['k_core']}")
    if tiny:
        inter = _tiny_users(inter, card.tiny)
    if not len(inter):
        files = ", ".join(str(path) for path in resolved.paths.values())
        raise ValueError(f"no interactions after filtering in {files} (dataset '{card.name}': {'; '.join(steps)})")

    user_index, item_index = _dense_codes(inter["user_raw"]), _dense_codes(inter["item_raw"])
    columns = {
        "user": user_index.get_indexer(inter["user_raw"]).astype("int64", copy=False),
        "item": item_index.get_indexer(inter["item_raw"]).astype("int64", copy=False),
        "rating": inter["rating"].to_numpy(dtype="float32"),
        "timestamp": inter["timestamp"].to_numpy(dtype="int64"),
    }
    if not card.filtering.get("deduplicate"):
        quality["repeated_pairs_kept"] = repeated_pair_count(pd.DataFrame(columns, copy=False), "user", "item")
    quality["interactions"] = len(inter)
    order = stable_order(columns["user"], columns["timestamp"], columns["item"])
    # copy=False: one block per column, no second copy of 25M rows into a 2-D block
    interactions = pd.DataFrame({name: values[order] for name, values in columns.items()}, copy=False)

    meta = _with_ids(raw.items, "item_raw").drop_duplicates("item_raw").set_index("item_raw")
    meta = meta.reindex(item_index)
    titles = meta["title"].fillna("").map(clean_title)
    missing = titles.str.len() == 0
    titles[missing] = [PLACEHOLDER_TITLE.format(item=card.domain.get("item", "item")) + f" {rid}"
                       for rid in item_index[missing.to_numpy()]]
    items = pd.DataFrame({
        "item": np.arange(len(item_index), dtype="int64"),
        "raw_id": item_index.astype(str),
        "title": titles.to_numpy(),
        "year": meta["year"].astype("Int64").array if "year" in meta else pd.NA,
        "genres": meta["genres"].fillna("").to_numpy() if "genres" in meta else "",
    })
    user_meta = _with_ids(raw.users, "user_raw").drop_duplicates("user_raw").set_index("user_raw")
    users = user_meta.reindex(user_index).reset_index(names="raw_id").astype({"raw_id": str})
    users.insert(0, "user", np.arange(len(user_index), dtype="int64"))
    return CanonicalData(card, interactions, items, users, resolved.sha256, tiny, quality)


_TABLES = ("interactions", "items", "users")


def _cache_folder(card: Card, tiny: bool) -> Path:
    key = canonical_hash({"card": card.digest(), "tiny": tiny})[:16]
    return cache_root() / "tables" / f"{card.name}-{key}"


def _same_sources(card: Card, built_from: dict[str, str], meta_path: Path) -> bool:
    """Whether the cached tables were built from the raw files present now. Files the card pins by
    sha256 cannot have changed: the recorded sums must be one source's pinned ones (else the
    meta.json is corrupt: one warning line); the others (sources that publish no checksum) are
    hashed again."""
    if all(sha is not None for source in card.sources for sha in source.files.values()):
        if any(dict(source.files) == built_from for source in card.sources):
            return True
        _corrupt(meta_path, "its source_sha256 are not the sums the card pins")
        return False
    return resolve(card).sha256 == built_from


def _corrupt(path: Path, why: str) -> None:
    _log.warning("corrupt cache: %s (%s); rebuilding it", path, why)


def _read_meta(meta_path: Path) -> dict[str, Any] | None:
    """The tables' meta.json, or None (with one warning line) when it cannot be used."""
    try:
        meta = json.loads(meta_path.read_text())
        sums, built_from, quality = meta["sha256"], meta["source_sha256"], meta["data_quality"]
        if not (all(isinstance(sums.get(t), str) for t in _TABLES) and isinstance(built_from, dict)
                and all(isinstance(v, str) for v in built_from.values())
                and all(isinstance(v, int) for v in quality.values())):
            raise TypeError("a field has the wrong type")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        why = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        if str(err) == "'data_quality'":
            why += " (written by an older version)"
        _corrupt(meta_path, " ".join(why.split())[:200])
        return None
    return meta


def _cached(card: Card, folder: Path, tiny: bool) -> CanonicalData | None:
    """The cached tables of ``card`` when their meta.json and files verify, else None."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        if folder.exists():
            _corrupt(meta_path, "the file is missing")
        return None
    meta = _read_meta(meta_path)
    if meta is None or not _same_sources(card, meta["source_sha256"], meta_path):
        return None
    for t in _TABLES:
        path = folder / f"{t}.parquet"
        if not path.exists() or sha256_file(path) != meta["sha256"][t]:
            _corrupt(path, "missing, or its sha256 differs from meta.json")
            return None
    tables = {t: pd.read_parquet(folder / f"{t}.parquet") for t in _TABLES}
    return CanonicalData(card, **tables, source_sha256=meta["source_sha256"], tiny=tiny,
                         data_quality=dict(meta["data_quality"]))


def load(name: str | Card, tiny: bool = False) -> CanonicalData:
    """Canonical tables of a card (its name, or a loaded :class:`Card`; the ``ci`` subset when
    ``tiny``), from cache when valid, else built (see :func:`build` for what it raises) and cached."""
    card = name if isinstance(name, Card) else load_card(name)
    folder = _cache_folder(card, tiny)
    cached = _cached(card, folder, tiny)
    if cached is not None:
        return cached
    data = build(card, tiny)
    with atomic_dir(folder) as tmp:
        sums = {}
        for t in _TABLES:
            getattr(data, t).to_parquet(tmp / f"{t}.parquet", index=False)
            sums[t] = sha256_file(tmp / f"{t}.parquet")
        (tmp / "meta.json").write_text(json.dumps({"sha256": sums, "source_sha256": data.source_sha256,
                                                   "statistics": data.statistics(),
                                                   "data_quality": data.data_quality}, indent=1))
    return data
