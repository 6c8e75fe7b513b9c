"""HetRec 2011 Last.fm (tag assignments with times, artist names): implicit feedback, next_item only."""
from __future__ import annotations

import re
import zipfile

import pytest

from benchmarks.data import canonical, protocols, sources
from benchmarks.data.cache import sha256_file
from benchmarks.data.cards import load_card
from benchmarks.data.formats import BadLines, parser
from tests.fixtures.raw_formats import (  # noqa: F401
    ARTIST_IDS,
    DAY,
    LASTFM_USERS,
    LOCAL_MIDNIGHT,
    expected_after_filtering,
    fixture_card,
    raw_env_fixture,
    raw_interactions,
    write_lastfm,
)

FORMAT = "hetrec_lastfm_zip"
READ = ("user_taggedartists-timestamps.dat", "artists.dat")  # the two members the card's parser reads


def _load(raw_env, written, **kw):
    return canonical.load(fixture_card(raw_env, "lastfm", written, FORMAT, max_bad_line_ratio=0.2, n_candidates=2,
                                       **kw))


def _members(written) -> dict[str, bytes]:
    with zipfile.ZipFile(written.files["hetrec2011-lastfm-2k.zip"]) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_archive_has_the_published_layout(tmp_path):
    """The fixture itself: the six .dat files and the readme at the root, each file with its header line."""
    members = _members(write_lastfm(tmp_path))
    assert sorted(members) == ["artists.dat", "readme.txt", "tags.dat", "user_artists.dat", "user_friends.dat",
                               "user_taggedartists-timestamps.dat", "user_taggedartists.dat"]
    assert members["artists.dat"].startswith(b"id\tname\turl\tpictureURL\n")
    assert members["user_taggedartists-timestamps.dat"].startswith(b"userID\tartistID\ttagID\ttimestamp\r\n")


def test_first_tag_times_become_deduplicated_5_core_interactions_titled_by_artist_name(raw_env):
    written = write_lastfm(raw_env.raw)
    data = _load(raw_env, written)
    kept = expected_after_filtering(written.interactions)  # earliest tag per pair, then 5-core
    assert set(raw_interactions(data)) == kept
    assert set(data.interactions.rating) == {1.0}
    assert ((data.interactions.timestamp - LOCAL_MIDNIGHT) % DAY == 0).all()  # milliseconds -> seconds, exactly
    b_p7 = [t for u, i, _, t in raw_interactions(data) if (u, i) == (str(LASTFM_USERS["B"]), str(ARTIST_IDS["P7"]))]
    listed_first = next(t for u, i, _, t in written.interactions
                        if (u, i) == (str(LASTFM_USERS["B"]), str(ARTIST_IDS["P7"])))
    assert b_p7 == [listed_first - 7 * DAY]  # the earliest tag, listed after a later one
    titles = dict(zip(data.items.raw_id, data.items.title))
    assert titles == {i: t for i, t in written.titles.items() if i in titles} | {"18744": "Unknown artist 18744"}
    assert titles["63"] == "Tom & the Cats" and titles["96"] == "The Beatniks" and titles["73"] == "The Long Gaps"
    assert set(data.items.genres) == {""} and data.items.year.isna().all()
    pairs = {(u, i) for u, i, _, _ in written.interactions}
    assert data.data_quality["repeated_pairs_dropped"] == len(written.interactions) - len(pairs)
    assert data.data_quality["bad_lines"] == 2 and data.data_quality["interactions"] == len(kept)


def test_the_parser_reads_every_tag_assignment_and_names_the_bad_lines(raw_env):
    written = write_lastfm(raw_env.raw)
    report = BadLines()
    source = load_card(fixture_card(raw_env, "lastfm", written, FORMAT)).sources[0]
    raw = parser(FORMAT)(written.files, source, report)
    members = _members(written)
    n_lines = sum(len(members[name].splitlines()) - 1 for name in READ)  # without the header lines
    assert (report.total, report.bad, report.repeats) == (n_lines, 2, 0)
    assert [e.split(": ")[0] for e in report.examples] == written.bad_lines
    rows = [(str(u), str(i), float(r), int(t)) for u, i, r, t in raw.interactions.itertuples(index=False)]
    assert sorted(rows) == sorted(written.interactions)  # one row per valid tag assignment, times in seconds
    assert str(raw.interactions.user_raw.dtype) == "int64" and str(raw.interactions.item_raw.dtype) == "int64"
    assert dict(zip(raw.items.item_raw, raw.items.title))[63] == "Tom &amp; the Cats"  # as published
    assert 1 in set(raw.items.item_raw) and 1002 not in set(raw.items.item_raw)  # the planted bad line
    assert set(raw.users.user_raw) == {u for u, *_ in raw.interactions.itertuples(index=False)}


def test_next_item_targets_are_each_users_last_first_tagged_artists(raw_env):
    written = write_lastfm(raw_env.raw)
    data = _load(raw_env, written)
    by_user: dict[str, list[tuple[int, int]]] = {}
    for user, item, _, t in expected_after_filtering(written.interactions):
        by_user.setdefault(user, []).append((t, int(item)))
    sequences = {user: [str(item) for _, item in sorted(rows)] for user, rows in by_user.items()}
    frozen = protocols.load(data, "next_item")
    users, items = data.users.raw_id.to_numpy(), data.items.raw_id.to_numpy()
    for split, back in (("test", 1), ("valid", 2)):
        samples = frozen.split(split)
        assert len(samples) == len(sequences) == 6
        for user, item, history in zip(samples.user, samples.item, samples.history):
            sequence = sequences[users[user]]
            assert items[item] == sequence[-back]
            assert [items[h] for h in history] == sequence[:-back]
    b = frozen.test[users[frozen.test.user] == str(LASTFM_USERS["B"])]
    assert items[b.item.iloc[0]] == str(ARTIST_IDS["P6"])  # P7 moved to the front by its earliest tag
    with pytest.raises(ValueError, match="does not declare the 'ctr' protocol"):
        protocols.load(data, "ctr")


def test_the_unpinned_archive_is_read_and_its_sha256_recorded(raw_env):
    written = write_lastfm(raw_env.raw)
    fixture_card(raw_env, "lastfm", written, FORMAT, checksums=False, max_bad_line_ratio=0.2, n_candidates=2)
    with pytest.warns(UserWarning, match=r"lastfm: the source publishes no checksums; .* hetrec2011-lastfm-2k.zip"):
        data = canonical.load("lastfm")
    assert data.source_sha256 == {"hetrec2011-lastfm-2k.zip": sha256_file(written.files["hetrec2011-lastfm-2k.zip"])}


def test_an_archive_without_the_tag_times_is_refused_naming_the_member(raw_env):
    written = write_lastfm(raw_env.raw)
    path = written.files["hetrec2011-lastfm-2k.zip"]
    members = _members(written)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name != "user_taggedartists-timestamps.dat":
                archive.writestr(name, data)
    source = load_card(fixture_card(raw_env, "lastfm", written, FORMAT)).sources[0]
    with pytest.raises(ValueError, match=re.escape("no member 'user_taggedartists-timestamps.dat'")):
        parser(FORMAT)(written.files, source, BadLines())


def test_absent_archive_fails_in_one_line_naming_file_folder_and_url(raw_env):
    fixture_card(raw_env, "lastfm", write_lastfm(raw_env.raw / "elsewhere"), FORMAT, checksums=False)
    with pytest.raises(sources.SourceUnavailable) as err:
        canonical.load("lastfm")
    message = str(err.value)
    assert str(raw_env.raw / "hetrec2011-lastfm-2k.zip") in message
    assert "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip" in message
    assert "\n" not in message
