"""Hostile input and faults in the data path (issue G8, faults 8 and 14): corrupt cache metadata, a
stored protocol whose hash or params were edited, bad raw lines within and over a card's budget in
every file every reader reads, empty data, and values that must be counted with their policy
(non-UTF-8 ids, repeated lines, NaN ratings, impossible timestamps)."""
from __future__ import annotations

import gzip
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.data import canonical, protocols
from benchmarks.data.cache import sha256_file
from benchmarks.registry import ROOT
from tests.fixtures.raw_formats import (  # noqa: F401
    Written,
    expected_after_filtering,
    fixture_card,
    raw_env_fixture,
    raw_interactions,
    write_amazon,
    write_lastfm,
    write_ml_1m,
    write_ml_25m,
    write_steam,
)

GENRES = ["Action", "Comedy", "Drama"]


def _rows_100k() -> list[tuple[int, int, float, int]]:
    """250 users x 15 of 60 movies: 3,750 ratings, so 3 bad lines are under the 0.1% budget."""
    return [(u, i, float(1 + (u + i) % 5), 880_000_000 + 1000 * u + i)
            for u in range(1, 251) for i in range(1, 61) if (u * 7 + i) % 4 == 0]


def write_100k(raw: Path, extra_data_lines: tuple[str, ...] = (), data: bool = True) -> Written:
    """``ml-100k.zip`` (u.data, u.item, u.user, u.genre) under ``raw``; ``extra_data_lines`` are
    inserted into u.data after its 10th line."""
    rows = _rows_100k() if data else []
    lines = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in rows]
    lines[10:10] = list(extra_data_lines)
    path = raw / "ml-100k.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "".join(line + "\n" for line in lines))
        z.writestr("ml-100k/u.item", "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|1|0|{i % 2}\n"
                                             for i in range(1, 61)))
        z.writestr("ml-100k/u.user", "".join(f"{u}|20|M|x|0\n" for u in range(1, 251)))
        z.writestr("ml-100k/u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)))
    return Written({"ml-100k.zip": path}, [(str(u), str(i), r, t) for u, i, r, t in rows])


def write_atomic(raw: Path) -> Written:
    """RecBole atomic files (``.inter``, ``.item``, ``.user``) of the same ratings under ``raw/atomic``."""
    rows = _rows_100k()
    folder = raw / "atomic"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ml-100k.inter": ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
             + [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in rows],
             "ml-100k.item": ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
             + [f"{i}\tMovie {i}\t1995\tAction Drama" for i in range(1, 61)],
             "ml-100k.user": ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
             + [f"{u}\t20\tM\tx\t0" for u in range(1, 251)]}
    for name, lines in files.items():
        (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Written({name: folder / name for name in files}, [(str(u), str(i), r, t) for u, i, r, t in rows])


def atomic_card(env, written: Written, max_bad_line_ratio: float = 0.001) -> str:
    """A card reading ``write_atomic``'s files with the ``recbole_atomic`` format."""
    raw = yaml.safe_load((ROOT / "datasets" / "movielens-100k.yaml").read_text())
    (source,) = [s for s in raw["sources"] if s["format"] == "recbole_atomic"]
    source["location"] = "raw:atomic/ml-100k.inter"
    source["files"] = {name: sha256_file(path) for name, path in written.files.items()}
    raw.update(name="atomic-100k", sources=[source], max_bad_line_ratio=max_bad_line_ratio)
    (env.cards / "atomic-100k.yaml").write_text(yaml.safe_dump(raw))
    return "atomic-100k"


def _append_line(path: Path, member: str, line: bytes) -> int:
    """Append ``line`` to ``member`` of the zip, gzip or text file ``path``; its line number."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            contents = {name: z.read(name) for name in z.namelist()}
        (name,) = [n for n in contents if n.endswith("/" + member) or n == member]
        text = contents[name]
        contents[name] = text + line + b"\n"
        with zipfile.ZipFile(path, "w") as z:
            for n, data in contents.items():
                z.writestr(n, data)
    elif path.suffix == ".gz":
        text = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(text + line + b"\n"))
    else:
        text = path.read_bytes()
        path.write_bytes(text + line + b"\n")
    return text.count(b"\n") + 1


def _cards_of(env, card: str, written: Written, fmt: str, ratio: float, **kw) -> str:
    if fmt == "recbole_atomic":
        return atomic_card(env, written, ratio)
    return fixture_card(env, card, written, fmt, max_bad_line_ratio=ratio, **kw)


def _error_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------- 14: every file of every reader

EVERY_FILE = [
    ("movielens-100k", write_100k, "movielens_100k_zip", "u.data"),
    ("movielens-100k", write_100k, "movielens_100k_zip", "u.item"),
    ("movielens-100k", write_100k, "movielens_100k_zip", "u.user"),
    ("movielens-100k", write_100k, "movielens_100k_zip", "u.genre"),
    ("movielens-1m", write_ml_1m, "movielens_1m_zip", "ratings.dat"),
    ("movielens-1m", write_ml_1m, "movielens_1m_zip", "movies.dat"),
    ("movielens-1m", write_ml_1m, "movielens_1m_zip", "users.dat"),
    ("movielens-25m", write_ml_25m, "movielens_25m_zip", "ratings.csv"),
    ("movielens-25m", write_ml_25m, "movielens_25m_zip", "movies.csv"),
    ("movielens-100k", write_atomic, "recbole_atomic", "ml-100k.inter"),
    ("movielens-100k", write_atomic, "recbole_atomic", "ml-100k.item"),
    ("movielens-100k", write_atomic, "recbole_atomic", "ml-100k.user"),
    ("amazon-beauty", lambda raw: write_amazon(raw, "2018"), "amazon_2018", "All_Beauty_5.json.gz"),
    ("amazon-beauty", lambda raw: write_amazon(raw, "2018"), "amazon_2018", "meta_All_Beauty.json.gz"),
    ("steam", write_steam, "steam", "steam_reviews.json.gz"),
    ("steam", write_steam, "steam", "steam_games.json.gz"),
    ("lastfm", write_lastfm, "hetrec_lastfm_zip", "user_taggedartists-timestamps.dat"),
    ("lastfm", write_lastfm, "hetrec_lastfm_zip", "artists.dat"),
]


@pytest.mark.parametrize("card, write, fmt, member", EVERY_FILE, ids=[f"{c[2]}-{c[3]}" for c in EVERY_FILE])
def test_a_bad_line_in_any_file_a_reader_reads_is_named_by_file_and_line(raw_env, card, write, fmt, member):
    written = write(raw_env.raw)
    path = next((p for n, p in written.files.items() if n == member), next(iter(written.files.values())))
    line_no = _append_line(path, member, b"garbage")
    name = _cards_of(raw_env, card, written, fmt, ratio=0.0)
    with pytest.raises(ValueError, match=r"lines malformed \(> 0\.000% allowed by the card") as err:
        canonical.load(name)
    assert f"{member}:{line_no}: " in _error_line(err)


# ------------------------------------------------------------- 14: bad values within the budget

def test_three_bad_u_data_lines_under_the_budget_are_dropped_and_counted(raw_env):
    written = write_100k(raw_env.raw, ("7\t4\tfive\t881250949", "8\t4\t3\t", "\t4\t3\t881250949"))
    data = canonical.load(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip"))
    assert sorted(raw_interactions(data)) == sorted(written.interactions)
    quality = data.data_quality
    assert (quality["bad_lines"], quality["bad_not_a_number"], quality["interactions"]) == (3, 3, 3750)
    assert quality["lines_read"] == 3753 + 60 + 250 + len(GENRES)
    for task in ("ctr", "next_item"):
        assert len(protocols.load(data, task).test)
    assert canonical.load("movielens-100k").data_quality == quality  # from the cache, the same counts


def test_the_budget_error_names_the_file_and_line_in_one_line(raw_env):
    bad = tuple(f"{u}\t4\tfive\t881250949" for u in range(1, 6))
    written = write_100k(raw_env.raw, bad)
    with pytest.raises(ValueError) as err:
        canonical.load(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip"))
    message = _error_line(err)
    assert "5 of 4068 lines malformed" in message and "not_a_number 5" in message
    assert "u.data:11: rating 'five' is not a number" in message


@pytest.mark.parametrize("line, kind", [
    ("7\t4\tnan\t881250949", "bad_not_a_number"),     # NaN: was label 0
    ("7\t4\tinf\t881250949", "bad_nan_rating"),
    ("7\t4\t3\t-5", "bad_time_out_of_range"),
    ("7\t4\t3\t99999999999", "bad_time_out_of_range"),  # year 5138
    ("7\t4\t3\t99999999999999999999", "bad_not_a_number"),  # beyond int64: never wrapped around
    ("7\t4\t3\t881250949.5", "bad_not_a_number"),  # never truncated to an int
    ("7\t4\t1e300\t881250949", "bad_not_a_number"),  # never rounded to an infinite float32
])
def test_nan_ratings_and_impossible_timestamps_are_bad_lines_never_kept(raw_env, line, kind):
    written = write_100k(raw_env.raw, (line,))
    data = canonical.load(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip"))
    assert data.data_quality[kind] == 1 and data.data_quality["bad_lines"] == 1
    assert sorted(raw_interactions(data)) == sorted(written.interactions)
    assert np.isfinite(data.interactions.rating).all()
    with pytest.raises(ValueError, match=r"u\.data:11: "):
        canonical.build(canonical.load_card(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip",
                                                         max_bad_line_ratio=0.0)))


def test_repeated_lines_are_dropped_and_counted_and_many_fail_the_budget(raw_env):
    some = tuple(f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in _rows_100k()[:3])
    data = canonical.load(fixture_card(raw_env, "movielens-100k", write_100k(raw_env.raw, some), "movielens_100k_zip"))
    quality = data.data_quality
    assert (quality["repeated_lines"], quality["duplicate_rows_dropped"], quality["interactions"]) == (3, 3, 3750)
    assert quality["bad_lines"] == 0 and quality["repeated_pairs_kept"] == 0
    assert not data.interactions.duplicated(["user", "item"]).any()

    many = tuple(f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in _rows_100k()[:400])
    written = write_100k(raw_env.raw, many)
    with pytest.raises(ValueError) as err:
        canonical.load(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip"))
    message = _error_line(err)
    assert "400 of" in message and "repeated_line 400" in message
    assert "u.data:11: repeats an earlier line exactly" in message


def test_a_pair_rated_again_is_kept_and_counted_without_deduplicate(raw_env):
    u, i, r, t = _rows_100k()[0]
    data = canonical.load(fixture_card(raw_env, "movielens-100k", write_100k(raw_env.raw, (f"{u}\t{i}\t5\t{t + 9}",)),
                                       "movielens_100k_zip"))
    assert data.data_quality["repeated_pairs_kept"] == 1 and data.data_quality["interactions"] == 3751


def test_non_utf8_ids_are_counted_as_such(raw_env):
    written = write_amazon(raw_env.raw, "2018")
    review = written.files["All_Beauty_5.json.gz"]
    line_no = _append_line(review, review.name, b'{"overall": 5.0, "reviewerID": "Z\xff\xfe", "asin": "P1", '
                                                b'"unixReviewTime": 1400000000}')
    _append_line(review, review.name, b'{"overall": NaN, "reviewerID": "A", "asin": "P7", "unixReviewTime": 1}')
    data = canonical.load(fixture_card(raw_env, "amazon-beauty", written, "amazon_2018", max_bad_line_ratio=0.2))
    assert data.data_quality["bad_not_utf8"] == 1 and data.data_quality["bad_not_a_number"] == 1
    with pytest.raises(ValueError) as err:
        canonical.build(canonical.load_card(fixture_card(raw_env, "amazon-beauty", written, "amazon_2018",
                                                         max_bad_line_ratio=0.0)))
    assert f"All_Beauty_5.json.gz:{line_no}: not valid UTF-8 (byte 0xff" in _error_line(err)

    atomic = write_atomic(raw_env.raw)
    line_no = _append_line(atomic.files["ml-100k.inter"], "", b"caf\xe9\t4\t3\t881250949")
    data = canonical.load(atomic_card(raw_env, atomic))
    assert data.data_quality["bad_not_utf8"] == 1
    assert sorted(raw_interactions(data)) == sorted(atomic.interactions)
    not_utf8 = rf"ml-100k.inter:{line_no}: not valid text in the file's encoding \(byte 0xe9\)"
    with pytest.raises(ValueError, match=not_utf8):
        canonical.load(atomic_card(raw_env, atomic, max_bad_line_ratio=0.0))


def test_an_impossible_steam_date_is_a_bad_line(raw_env):
    written = write_steam(raw_env.raw)
    path = written.files["steam_reviews.json.gz"]
    line_no = _append_line(path, path.name, b"{'username': 'A', 'product_id': '10', 'date': '1960-01-01'}")
    data = canonical.load(fixture_card(raw_env, "steam", written, "steam", max_bad_line_ratio=0.2, n_candidates=2))
    assert data.data_quality["bad_time_out_of_range"] == 1 and data.data_quality["repeated_pairs_dropped"] == 2
    with pytest.raises(ValueError, match=rf"steam_reviews.json.gz:{line_no}: the timestamp is not a time in 1970-2099"):
        canonical.load(fixture_card(raw_env, "steam", written, "steam", max_bad_line_ratio=0.0, n_candidates=2))


def test_a_lastfm_tag_time_before_1970_is_a_bad_line(raw_env):
    written = write_lastfm(raw_env.raw)
    path = written.files["hetrec2011-lastfm-2k.zip"]
    line_no = _append_line(path, "user_taggedartists-timestamps.dat", b"2\t63\t7\t-441763200000")  # in 1956
    data = canonical.load(fixture_card(raw_env, "lastfm", written, "hetrec_lastfm_zip", max_bad_line_ratio=0.2,
                                       n_candidates=2))
    assert data.data_quality["bad_time_out_of_range"] == 1 and data.data_quality["bad_lines"] == 3
    assert set(raw_interactions(data)) == expected_after_filtering(written.interactions)  # A's 63 keeps its time
    with pytest.raises(ValueError, match=rf"user_taggedartists-timestamps.dat:{line_no}: the timestamp is not a time "
                                         r"in 1970-2099"):
        canonical.build(canonical.load_card(fixture_card(raw_env, "lastfm", written, "hetrec_lastfm_zip",
                                                         max_bad_line_ratio=0.0)))


def test_a_parser_that_keeps_a_nan_rating_is_stopped(raw_env, monkeypatch):
    from benchmarks.data.formats import movielens

    real = movielens.parse_100k_zip

    def leaky(paths, source, report):
        raw = real(paths, source, report)
        raw.interactions = raw.interactions.copy()
        raw.interactions.loc[0, "rating"] = np.nan
        return raw

    monkeypatch.setattr(movielens, "parse_100k_zip", leaky)
    with pytest.raises(ValueError, match="'movielens_100k_zip' parser kept 1 interactions where the rating is NaN"):
        canonical.load(fixture_card(raw_env, "movielens-100k", write_100k(raw_env.raw), "movielens_100k_zip"))


# ------------------------------------------------------------- 14: empty data

def test_no_interactions_is_one_clear_error_when_the_tables_are_built(raw_env):
    written = write_100k(raw_env.raw, data=False)
    expected = re.escape(f"no interactions after filtering in {written.files['ml-100k.zip']}")
    with pytest.raises(ValueError, match=expected) as err:
        canonical.load(fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip"))
    assert "0 interactions parsed" in _error_line(err)

    written = write_100k(raw_env.raw)
    name = fixture_card(raw_env, "movielens-100k", written, "movielens_100k_zip")
    card_path = raw_env.cards / f"{name}.yaml"
    raw = yaml.safe_load(card_path.read_text())
    raw["filtering"] = {"k_core": 1000}
    card_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"no interactions after filtering in .*ml-100k.zip .*0 after k_core 1000") \
            as err:
        canonical.load(name)
    _error_line(err)
    assert not list((raw_env.raw.parent / "tables").glob("*/meta.json"))  # nothing cached


# ------------------------------------------------------------- 8: corrupt cache metadata

CORRUPTIONS = {
    "empty": lambda text: b"",
    "garbage": lambda text: b"\x00\xff not json at all",
    "truncated": lambda text: text[: len(text) // 2],
    "key-less": lambda text: b"{}",
    "wrong types": lambda text: json.dumps({k: [] for k in json.loads(text)}).encode(),
}


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path))
    data = canonical.load("movielens-100k", tiny=True)
    return tmp_path, data


def _one_warning(caplog, path: Path) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "\n" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_tables_meta_is_named_and_rebuilt(tiny_cache, caplog, corruption):
    root, first = tiny_cache
    (meta,) = list(root.glob("tables/*/meta.json"))
    meta.write_bytes(CORRUPTIONS[corruption](meta.read_bytes()))
    with caplog.at_level(logging.WARNING):
        again = canonical.load("movielens-100k", tiny=True)
    assert "corrupt cache" in _one_warning(caplog, meta)
    pd.testing.assert_frame_equal(again.interactions, first.interactions)
    assert json.loads(meta.read_text())["sha256"] and again.data_quality == first.data_quality


def test_tables_meta_with_a_false_source_sha256_is_rebuilt(tiny_cache, caplog):
    root, first = tiny_cache
    (meta,) = list(root.glob("tables/*/meta.json"))
    stored = json.loads(meta.read_text())
    stored["source_sha256"] = {name: "0" * 64 for name in stored["source_sha256"]}
    meta.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        assert canonical.load("movielens-100k", tiny=True).source_sha256 == first.source_sha256
    assert "not the sums the card pins" in _one_warning(caplog, meta)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_protocol_meta_is_named_and_rebuilt(tiny_cache, caplog, corruption):
    root, data = tiny_cache
    proto = protocols.load(data, "next_item")
    (meta,) = list(root.glob("protocols/*next_item*/meta.json"))
    meta.write_bytes(CORRUPTIONS[corruption](meta.read_bytes()))
    with caplog.at_level(logging.WARNING):
        again = protocols.load(data, "next_item")
    assert "corrupt cache" in _one_warning(caplog, meta)
    assert again.info == proto.info
    pd.testing.assert_frame_equal(again.test, proto.test)
    assert protocols.prepare(data, "next_item")[0] == proto.info  # stored again, verified


@pytest.mark.parametrize("field, value", [("hash", "f" * 64), ("params", {"seed": 1}), ("task", "next_item"),
                                          ("audit", {"version": 1, "passed": True, "checks": {}})])
@pytest.mark.parametrize("entry", ["load", "prepare"])
def test_an_edited_protocol_meta_never_gives_a_false_provenance(tiny_cache, caplog, field, value, entry):
    root, data = tiny_cache
    proto = protocols.load(data, "ctr")
    (meta,) = list(root.glob("protocols/*-ctr-*/meta.json"))
    stored = json.loads(meta.read_text())
    stored[field] = {**stored["params"], **value} if field == "params" else value
    meta.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        info = protocols.load(data, "ctr").info if entry == "load" else protocols.prepare(data, "ctr")[0]
    assert info == proto.info
    _one_warning(caplog, meta)
    rebuilt = json.loads(meta.read_text())
    assert (rebuilt["task"], rebuilt["hash"], rebuilt["params"]) == ("ctr", proto.info.hash, proto.info.params)


def test_a_forged_hash_with_a_matching_binding_is_caught_by_rehashing_the_samples(tiny_cache, caplog):
    root, data = tiny_cache
    proto = protocols.load(data, "ctr")
    (meta,) = list(root.glob("protocols/*-ctr-*/meta.json"))
    stored = json.loads(meta.read_text())
    stored["hash"] = "e" * 64
    stored["binding"] = protocols._binding(protocols._header(data, "ctr", stored["params"]), stored["hash"],
                                           stored["files"], stored["sizes"], stored["audit"])
    meta.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        assert protocols.load(data, "ctr").info.hash == proto.info.hash
    assert "not the hash of the split files' samples" in _one_warning(caplog, meta)
