"""Amazon review data, releases 2014 / 2018 / 2023: fixtures in each published format through the
shipped cards (deduplication, iterated 5-core, titles, unpinned checksums, malformed lines)."""
from __future__ import annotations

import gzip
import re

import pandas as pd
import pytest

from benchmarks.data import canonical, protocols
from benchmarks.data.cache import sha256_file
from benchmarks.data.cards import load_card
from benchmarks.data.formats import BadLines, parser
from tests.fixtures.raw_formats import (  # noqa: F401
    CATEGORIES,
    expected_after_filtering,
    fixture_card,
    raw_env_fixture,
    raw_interactions,
    write_amazon,
)

RELEASES = ("2014", "2018", "2023")


def _load(raw_env, release: str, card: str = "amazon-beauty", category: str = "All_Beauty"):
    if (card, release) == ("amazon-beauty", "2014"):
        category = "Beauty"  # 2014 has "Beauty"; 2018 and 2023 "All_Beauty"
    written = write_amazon(raw_env.raw, release, category)
    fixture_card(raw_env, card, written, f"amazon_{release}", checksums=False, max_bad_line_ratio=0.1,
                 n_candidates=2)
    with pytest.warns(UserWarning, match="publishes no checksums") as caught:
        data = canonical.load(card)
    return written, data, caught


@pytest.mark.parametrize("release", RELEASES)
def test_reviews_are_deduplicated_then_5_core_filtered_until_stable(raw_env, release):
    written, data, _ = _load(raw_env, release)
    assert set(raw_interactions(data)) == expected_after_filtering(written.interactions)
    assert len(data.interactions) == len(expected_after_filtering(written.interactions)) == 36
    assert "G" not in set(data.users.raw_id)  # kept only by a duplicate, or by one k-core pass


@pytest.mark.parametrize("release", RELEASES)
def test_titles_are_cleaned_and_missing_ones_get_a_counted_placeholder(raw_env, release):
    written, data, _ = _load(raw_env, release)
    titles = dict(zip(data.items.raw_id, data.items.title))
    expected = {i: t for i, t in written.titles.items() if i in titles and t}
    assert {i: titles[i] for i in expected} == expected
    assert titles["P3"] == "Unknown product P3" and titles["P6"] == "Unknown product P6"
    assert data.statistics()["untitled_items"] == 2
    assert dict(zip(data.items.raw_id, data.items.genres))["P1"] == "|".join(CATEGORIES)


def test_the_three_releases_give_the_same_canonical_tables(raw_env):
    tables = []
    for release in RELEASES:
        _, data, _ = _load(raw_env, release)
        tables.append(data)
    for other in tables[1:]:
        pd.testing.assert_frame_equal(other.interactions, tables[0].interactions)
        pd.testing.assert_frame_equal(other.items, tables[0].items)


def test_unpinned_files_warn_once_and_their_sha256_is_recorded(raw_env):
    written, data, caught = _load(raw_env, "2018")
    assert len([w for w in caught if "publishes no checksums" in str(w.message)]) == 1
    assert data.source_sha256 == {name: sha256_file(path) for name, path in written.files.items()}
    assert protocols._header(data, "next_item", {})["sources"] == data.source_sha256
    with pytest.warns(UserWarning):  # from the cache now: the files are hashed again and still match
        assert canonical.load("amazon-beauty").source_sha256 == data.source_sha256


def test_a_replaced_unpinned_file_rebuilds_the_cached_tables(raw_env):
    _, first, _ = _load(raw_env, "2018")
    written = write_amazon(raw_env.raw, "2018")
    reviews = written.files["All_Beauty_5.json.gz"]
    lines = gzip.decompress(reviews.read_bytes()).decode().splitlines()
    reviews.write_bytes(gzip.compress(("\n".join(lines[:-2]) + "\n").encode()))  # H's two reviews gone
    with pytest.warns(UserWarning):
        again = canonical.load("amazon-beauty")
    assert again.source_sha256 != first.source_sha256


@pytest.mark.parametrize("release", RELEASES)
def test_every_line_is_a_row_or_a_counted_malformed_line(raw_env, release):
    written = write_amazon(raw_env.raw, release, "Beauty" if release == "2014" else "All_Beauty")
    report = BadLines()
    source = load_card(fixture_card(raw_env, "amazon-beauty", written, f"amazon_{release}")).sources[0]
    raw = parser(f"amazon_{release}")(written.files, source, report)
    n_lines = sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in written.files.values())
    assert (report.total, report.bad) == (n_lines, 2)
    assert len(raw.interactions) == len(written.interactions)
    assert [e.rsplit(":", 1)[0] for e in report.examples] == written.bad_lines
    with pytest.raises(ValueError, match=re.escape(written.bad_lines[0])):
        canonical.load("amazon-beauty")  # 2 bad of ~50 lines: over the card's 0.1%


@pytest.mark.parametrize("card, category", [("amazon-books", "Books"), ("amazon-movies-and-tv", "Movies_and_TV")])
def test_other_categories_read_their_own_files(raw_env, card, category):
    written, data, _ = _load(raw_env, "2018", card, category)
    assert set(written.files) == {f"{category}_5.json.gz", f"meta_{category}.json.gz"}
    assert set(raw_interactions(data)) == expected_after_filtering(written.interactions)
    assert data.card.domain["item"] != "product"
