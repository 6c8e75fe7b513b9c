"""MovieLens-1M and -25M archives: fixtures in the published layout through the shipped cards."""
from __future__ import annotations

import re

import pytest

from benchmarks.data import canonical, protocols, sources
from benchmarks.data.cards import load_card
from benchmarks.data.formats import BadLines, parser
from tests.fixtures.raw_formats import (  # noqa: F401
    MOVIES,
    fixture_card,
    raw_env_fixture,
    raw_interactions,
    write_ml_1m,
    write_ml_25m,
)

CASES = [("movielens-1m", write_ml_1m, "movielens_1m_zip"), ("movielens-25m", write_ml_25m, "movielens_25m_zip")]


def _tied_last_two(rows) -> int:
    """Users whose two latest ratings share a timestamp, counted from the written rows."""
    by_user: dict[str, list[int]] = {}
    for user, _, _, t in rows:
        by_user.setdefault(user, []).append(t)
    return sum(1 for ts in by_user.values() if len(ts) >= 2 and sorted(ts)[-1] == sorted(ts)[-2])


@pytest.mark.parametrize("card, write, fmt", CASES)
def test_every_valid_line_becomes_one_interaction_with_clean_titles(raw_env, card, write, fmt):
    written = write(raw_env.raw)
    data = canonical.load(fixture_card(raw_env, card, written, fmt, max_bad_line_ratio=0.05, n_candidates=3))
    assert sorted(raw_interactions(data)) == sorted(written.interactions)
    assert dict(zip(data.items.raw_id, data.items.title)) == written.titles
    year = dict(zip(data.items.raw_id, data.items.year))
    assert (year["1"], year["3"], year["5"]) == (1995, 2001, 1942)
    stats = data.statistics()
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, len(MOVIES), len(written.interactions))
    assert stats["users_with_tied_last_two"] == _tied_last_two(written.interactions) == 1
    for task in ("ctr", "next_item"):
        frozen = protocols.load(data, task)
        assert len(frozen.train) and len(frozen.test)


def test_side_files_of_each_archive(raw_env):
    one = canonical.load(fixture_card(raw_env, "movielens-1m", write_ml_1m(raw_env.raw), "movielens_1m_zip",
                                      max_bad_line_ratio=0.05))
    genres = dict(zip(one.items.raw_id, one.items.genres))
    assert genres["1"] == MOVIES[1][1]
    assert list(one.users.columns) == ["user", "raw_id", "gender", "age", "occupation", "zip_code"]
    assert one.users.set_index("raw_id").loc["3", "zip_code"] == "48063"
    written = write_ml_25m(raw_env.raw)
    many = canonical.load(fixture_card(raw_env, "movielens-25m", written, "movielens_25m_zip",
                                       max_bad_line_ratio=0.05))
    genres = dict(zip(many.items.raw_id, many.items.genres))
    assert genres["2"] == MOVIES[2][1] and genres["8"] == ""  # "(no genres listed)"
    half_stars = {r for _, _, r, _ in written.interactions}
    assert set(many.interactions.rating) == half_stars and 3.5 in half_stars


@pytest.mark.parametrize("card, write, fmt", CASES)
def test_malformed_line_is_counted_and_fails_the_card_threshold(raw_env, card, write, fmt):
    written = write(raw_env.raw)
    report = BadLines()
    raw = parser(fmt)(written.files, load_card(fixture_card(raw_env, card, written, fmt)).sources[0], report)
    assert report.bad == 1 and report.examples[0].startswith(written.bad_lines[0] + ":")
    assert len(raw.interactions) == len(written.interactions)  # nothing else dropped
    with pytest.raises(ValueError, match=re.escape(written.bad_lines[0]) + r".*") as err:
        canonical.load(card)  # the card's own threshold: 0.1% of lines
    assert "1 of" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("card, write, fmt", CASES)
def test_checksum_mismatch_is_refused(raw_env, card, write, fmt):
    written = write(raw_env.raw)  # not the GroupLens archive the card pins
    fixture_card(raw_env, card, written, fmt, checksums=False)
    with pytest.raises(sources.ChecksumMismatch, match=rf"{next(iter(written.files))}: sha256 \w+ does not match"):
        canonical.load(card)


def test_absent_archive_fails_in_one_line_naming_file_folder_and_url(raw_env):
    fixture_card(raw_env, "movielens-25m", write_ml_25m(raw_env.raw / "elsewhere"), "movielens_25m_zip",
                 checksums=False)
    with pytest.raises(sources.SourceUnavailable) as err:
        canonical.load("movielens-25m")
    message = str(err.value)
    assert str(raw_env.raw / "ml-25m.zip") in message and "https://files.grouplens.org" in message
    assert "\n" not in message


def test_the_25m_benchmark_archive_is_in_the_format_the_loader_reads(tmp_path):
    from benchmarks.perf.prepare_25m import write_synthetic_zip

    path = tmp_path / "ml-25m.zip"
    write_synthetic_zip(path, rows=20_000, seed=3)
    report = BadLines()
    raw = parser("movielens_25m_zip")({"ml-25m.zip": path}, load_card("movielens-25m").sources[0], report)
    inter = raw.interactions
    assert len(inter) == 20_000 and report.bad == 0
    assert inter.groupby("user_raw").size().min() >= 20  # as in ML-25M: every user rated 20 movies
    assert not inter.duplicated(["user_raw", "item_raw"]).any()
    assert set(inter.rating) <= {k / 2 for k in range(1, 11)}
    assert raw.items.item_raw.is_unique and set(inter.item_raw) <= set(raw.items.item_raw)


@pytest.mark.slow
def test_the_25m_benchmark_runs_end_to_end_on_a_small_table(tmp_path, capsys):
    from benchmarks.perf import prepare_25m

    assert prepare_25m.main(["--rows", "30000", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "30,000 ratings prepared" in out and out.count('"stage"') == 3
