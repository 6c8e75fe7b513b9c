"""The shared raw readers (line records, delimited text), sources with several files, the cards."""
from __future__ import annotations

import gzip
import io
import json
import re

import pandas as pd
import pyarrow as pa
import pytest

from benchmarks import run
from benchmarks.data import cards, sources
from benchmarks.data.formats import BadLines, delimited, line_records
from benchmarks.data.formats.delimited import read_delimited
from benchmarks.data.formats.line_records import read_records
from tests.fixtures.raw_formats import raw_env_fixture  # noqa: F401

KEYS = ("user", "item", "when")


def _records_file(path, n: int, python: bool) -> list[dict]:
    records = [{"user": f"u{k % 7}", "item": f"i{k}", "when": 1000 + k, "note": "l'été \"chaud\""}
               for k in range(n)]
    lines = [repr(r) if python else json.dumps(r) for r in records]
    lines[5] = lines[5][:20]  # cut
    lines[9] = "[1, 2, 3]"  # not a mapping
    lines[12] = lines[12].replace("'item'" if python else '"item"', "'other'" if python else '"other"')
    lines.insert(15, "")  # blank lines are no records and no errors
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return [r for k, r in enumerate(records) if k not in (5, 9, 12)]


@pytest.mark.parametrize("decoder, python", [("json", False), ("python", True), ("json_or_python", True),
                                             ("json_or_python", False)])
def test_line_records_keep_valid_lines_and_name_the_others(tmp_path, decoder, python):
    path = tmp_path / "records.json.gz"
    valid = _records_file(path, 40, python)
    report = BadLines()
    frame = read_records(path, "records.json.gz", decoder, KEYS, KEYS, report)
    assert frame[list(KEYS)].to_dict("records") == [{k: r[k] for k in KEYS} for r in valid]
    assert (report.total, report.bad) == (40, 3)
    assert [e.split(": ")[0] for e in report.examples] == ["records.json.gz:6", "records.json.gz:10",
                                                           "records.json.gz:13"]
    assert report.examples[2].endswith("missing item")
    assert frame.line.tolist()[-1] == 41  # line numbers count the blank line


def test_python_literals_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    path = tmp_path / "evil.json"
    path.write_text(f"{{'user': 'a', 'item': 'b', 'when': 1}}\n__import__('pathlib').Path({str(marker)!r}).touch()\n")
    report = BadLines()
    frame = read_records(path, "evil.json", "python", KEYS, KEYS, report)
    assert len(frame) == 1 and report.bad == 1 and not marker.exists()


def test_parallel_decoding_gives_the_serial_result(tmp_path, monkeypatch):
    path = tmp_path / "records.json.gz"
    _records_file(path, 60, python=True)
    monkeypatch.setattr(line_records, "CHUNK_LINES", 7)  # many chunks, handed to 2 worker processes
    serial, parallel = BadLines(), BadLines()
    one = read_records(path, "r", "python", KEYS, KEYS, serial, workers=1)
    two = read_records(path, "r", "python", KEYS, KEYS, parallel, workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert serial == parallel


def test_a_truncated_gzip_fails_naming_the_file_and_the_last_good_line(tmp_path):
    path = tmp_path / "cut.json.gz"
    _records_file(path, 2000, python=False)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"cut.json.gz: the gzip stream is damaged or ends early after line") as err:
        read_records(path, "cut.json.gz", "json", KEYS, KEYS, BadLines())
    assert 0 < int(re.search(r"line (\d+)", str(err.value)).group(1)) < 2001


TYPES = {"user": pa.int64(), "title": pa.string(), "rating": pa.float32()}
CLEAN = 'user,title,rating\n1,"Usual Suspects, The (1995)",4.5\n2,Amélie (2001),3.0\n\n3,Heat (1995),5\n'


def _opener(text: str):
    return lambda: io.BytesIO(text.encode())


def test_delimited_fast_and_careful_paths_agree_on_a_clean_file():
    fast = read_delimited(_opener(CLEAN), "m.csv", TYPES, BadLines(), header=True, quoted=True)
    careful = delimited._careful(_opener(CLEAN), ",", TYPES, True, True, "utf-8", "m.csv", BadLines())
    pd.testing.assert_frame_equal(fast, careful)
    assert fast.title.tolist() == ["Usual Suspects, The (1995)", "Amélie (2001)", "Heat (1995)"]
    assert str(fast.rating.dtype) == "float32" and str(fast.user.dtype) == "int64"


def test_delimited_names_each_malformed_line():
    text = CLEAN + "4,Too,Many,Fields\n5,Fargo (1996),four\n6,,2.5\n,Alien (1979),1\n7,Jumanji (1995)\n"
    report = BadLines()
    frame = read_delimited(_opener(text), "m.csv", TYPES, report, header=True, quoted=True)
    assert frame.user.tolist() == [1, 2, 3, 6]  # an empty title is no error (placeholder later)
    assert (report.total, report.bad) == (8, 4)
    assert [e.split(": ")[0] for e in report.examples] == ["m.csv:6", "m.csv:7", "m.csv:9", "m.csv:10"]


def test_multi_character_separator():
    report = BadLines()
    frame = read_delimited(_opener("1::2::5::978300760\n1::3::4::978300761\n2::7\n"), "ratings.dat",
                           {"u": pa.int64(), "i": pa.int64(), "r": pa.float32(), "t": pa.int64()}, report, sep="::")
    assert frame.values.tolist() == [[1, 2, 5, 978300760], [1, 3, 4, 978300761]]
    assert report.examples == ["ratings.dat:3: expected 4 fields, got 2"]


# ------------------------------------------------------------------------------ sources and cards

def _two_file_card(raw_env, urls: dict[str, str], sums: dict[str, str | None]) -> cards.Card:
    (raw_env.cards / "two.yaml").write_text(json.dumps({
        "name": "two", "version": 1, "domain": {"item": "game"}, "protocols": {},
        "sources": [{"format": "steam", "location": "raw:two/a.json.gz", "url": urls, "files": sums}]}))
    return cards.load_card("two")


def test_a_source_of_several_files_downloads_each_and_restarts_a_stale_part(raw_env, tmp_path):
    upstream = {name: tmp_path / "upstream" / name for name in ("a.json.gz", "b.json.gz")}
    for k, path in enumerate(upstream.values()):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(gzip.compress(b"{'id': '%d'}\n" % k * 50))
    from benchmarks.data.cache import sha256_file

    card = _two_file_card(raw_env, {n: p.as_uri() for n, p in upstream.items()},
                          {"a.json.gz": sha256_file(upstream["a.json.gz"]), "b.json.gz": None})
    stale = raw_env.raw / "two" / "b.json.gz.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half of an older download")
    with pytest.warns(UserWarning, match=r"two: the source publishes no checksums; .* b.json.gz [0-9a-f]{12}"):
        resolved = sources.resolve(card, allow_download=True)
    for name, path in upstream.items():
        assert resolved.paths[name].read_bytes() == path.read_bytes()
        assert resolved.sha256[name] == sha256_file(path)
    assert not stale.exists()


def test_absent_files_fail_in_one_line_naming_each_file_and_url(raw_env):
    urls = {name: f"https://example.org/{name}" for name in ("a.json.gz", "b.json.gz")}
    card = _two_file_card(raw_env, urls, {name: None for name in urls})
    with pytest.raises(sources.SourceUnavailable) as err:
        sources.resolve(card, allow_download=False)
    message = str(err.value)
    assert "\n" not in message
    for name in ("a.json.gz", "b.json.gz"):
        assert f"{raw_env.raw / 'two' / name} (from https://example.org/{name})" in message


def test_every_card_is_listed_and_declares_what_its_data_needs(capsys):
    names = cards.known_cards()
    assert {"movielens-1m", "movielens-25m", "amazon-beauty", "amazon-books", "amazon-movies-and-tv",
            "steam", "lastfm"} <= set(names)
    assert run.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in names:
        card = cards.load_card(name)
        assert re.search(rf"^\s+{re.escape(name)}\s", listed, re.M)
        assert {"item", "items", "verb"} <= set(card.domain) and card.tiny["n_users"] > 0
        assert all(s.url for s in card.sources if s.location.startswith("raw:"))  # downloadable
        if name.startswith(("amazon-", "steam", "lastfm")):
            assert card.filtering == {"deduplicate": "earliest", "k_core": 5}
    for implicit in ("steam", "lastfm"):
        assert set(cards.load_card(implicit).protocols) == {"next_item"}
        assert cards.load_card(implicit).label_threshold is None


def test_an_unknown_filtering_key_is_refused(raw_env):
    (raw_env.cards / "bad.yaml").write_text(json.dumps({
        "name": "bad", "version": 1, "domain": {}, "sources": [], "filtering": {"kcore": 5}}))
    with pytest.raises(ValueError, match="bad.yaml: filtering"):
        cards.load_card("bad")
