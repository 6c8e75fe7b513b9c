"""Steam reviews and games (Python dict literals): implicit feedback, next_item only."""
from __future__ import annotations

import gzip

import pandas as pd
import pytest

from benchmarks.data import canonical, protocols, sources
from benchmarks.data.cards import load_card
from benchmarks.data.formats import BadLines, parser
from tests.fixtures.raw_formats import (  # noqa: F401
    expected_after_filtering,
    fixture_card,
    raw_env_fixture,
    raw_interactions,
    write_steam,
)


def test_reviews_become_deduplicated_5_core_implicit_interactions(raw_env):
    written = write_steam(raw_env.raw)
    data = canonical.load(fixture_card(raw_env, "steam", written, "steam", max_bad_line_ratio=0.2, n_candidates=2))
    assert set(raw_interactions(data)) == expected_after_filtering(written.interactions)
    assert set(data.interactions.rating) == {1.0}
    assert (data.interactions.timestamp % 86_400 == 0).all()  # dates: midnight UTC
    titles = dict(zip(data.items.raw_id, data.items.title))
    assert titles == {i: t for i, t in written.titles.items() if i in titles}
    assert titles["10"] == "Café Tycoon" and titles["20"] == "Only A Title"  # app_name, else title
    year = dict(zip(data.items.raw_id, data.items.year))
    assert year["20"] == 2016 and pd.isna(year["10"])  # "Soon.." is no year
    frozen = protocols.load(data, "next_item")
    assert len(frozen.test) == data.statistics()["users"]
    with pytest.raises(ValueError, match="does not declare the 'ctr' protocol"):
        protocols.load(data, "ctr")


def test_unparseable_literals_and_games_without_id_are_counted(raw_env):
    written = write_steam(raw_env.raw)
    report = BadLines()
    source = load_card(fixture_card(raw_env, "steam", written, "steam")).sources[0]
    raw = parser("steam")(written.files, source, report)
    n_lines = sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in written.files.values())
    assert (report.total, report.bad) == (n_lines, 3)
    assert [e.rsplit(":", 1)[0] for e in report.examples] == written.bad_lines
    assert len(raw.interactions) == len(written.interactions)
    assert report.examples[2].endswith("missing id")


def test_the_pinned_reviews_checksum_refuses_another_file(raw_env):
    written = write_steam(raw_env.raw)
    fixture_card(raw_env, "steam", written, "steam", checksums=False)
    with pytest.raises(sources.ChecksumMismatch, match="steam_reviews.json.gz: sha256"):
        canonical.load("steam")
