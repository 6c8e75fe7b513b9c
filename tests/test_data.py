"""Canonical tables, sources and frozen protocols (deterministic bytes, tie rule, invariants)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.data import canonical, cards, protocols, sources
from benchmarks.data.canonical import CanonicalData, clean_title


@pytest.mark.parametrize("raw, clean", [
    ("Usual Suspects, The (1995)", "The Usual Suspects"),
    ("Usual Suspects, The", "The Usual Suspects"),
    ("Misérables, Les (1995)", "Les Misérables"),
    ("Double vie de Véronique, La (Double Life of Veronique, The) (1991)",
     "La Double vie de Véronique (Double Life of Veronique, The)"),
    ("Toy Story (1995)", "Toy Story"),
    ("Tom &amp; Jerry  ", "Tom & Jerry"),
    ("Theater, A", "A Theater"),
])
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


@pytest.fixture(scope="module")
def ml100k():
    return canonical.load("movielens-100k")


def test_movielens_100k_statistics(ml100k):
    stats = ml100k.statistics()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    # the tie the card's ordering rule resolves: users whose last two ratings share a second
    assert stats["users_with_tied_last_two"] == 415
    assert ml100k.items.loc[ml100k.items.raw_id == "12", "title"].item() == "The Usual Suspects"


def _official_zip_from(data: CanonicalData, path: Path) -> None:
    """Write the official ml-100k.zip layout from the canonical tables (independent writer)."""
    genres = sorted({g for gs in data.items.genres for g in gs.split("|") if g})
    raw_item = data.items.raw_id.to_numpy()
    raw_user = data.users.raw_id.to_numpy()
    inter = data.interactions
    u_data = "\n".join(f"{raw_user[u]}\t{raw_item[i]}\t{int(r)}\t{t}"
                       for u, i, r, t in zip(inter.user, inter.item, inter.rating, inter.timestamp))
    u_item = "\n".join(
        (f"{row.raw_id}|{row.title} ({row.year})|01-Jan-{row.year}||http://x|" if not pd.isna(row.year)
         else f"{row.raw_id}|{row.title}|||http://x|")
        + "|".join("1" if g in row.genres.split("|") else "0" for g in genres)
        for row in data.items.itertuples())
    u_user = "\n".join(f"{r.raw_id}|{r.age}|{r.gender}|{r.occupation}|{r.zip_code}" for r in data.users.itertuples())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", u_data + "\n")
        z.writestr("ml-100k/u.item", (u_item + "\n").encode("latin-1", errors="replace"))
        z.writestr("ml-100k/u.user", u_user + "\n")
        z.writestr("ml-100k/u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(genres)))


@pytest.fixture
def tmp_cards(tmp_path, monkeypatch):
    """A private cards folder and cache for tests that write their own cards."""
    monkeypatch.setattr(cards, "CARDS_DIR", tmp_path / "cards")
    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMREC_BENCH_OFFLINE", "1")
    (tmp_path / "cards").mkdir()
    return tmp_path


def _card_with_zip_source(tmp_cards: Path, sha: str) -> None:
    raw = yaml.safe_load((cards.ROOT / "datasets" / "movielens-100k.yaml").read_text())
    zip_source = raw["sources"][1]
    zip_source["files"] = {"ml-100k.zip": sha}
    raw["sources"] = [zip_source]
    raw["name"] = "ml100k-zip"
    (tmp_cards / "cards" / "ml100k-zip.yaml").write_text(yaml.safe_dump(raw))


def test_official_zip_gives_the_same_canonical_tables(ml100k, tmp_cards):
    zpath = tmp_cards / "cache" / "raw" / "ml-100k.zip"
    zpath.parent.mkdir(parents=True)
    _official_zip_from(ml100k, zpath)
    from benchmarks.data.cache import sha256_file

    _card_with_zip_source(tmp_cards, sha256_file(zpath))
    other = canonical.load("ml100k-zip")
    pd.testing.assert_frame_equal(other.interactions, ml100k.interactions)
    ascii_titles = ml100k.items.title.str.encode("latin-1", errors="replace").str.decode("latin-1")
    assert (other.items.title == ascii_titles).all()
    assert (other.items.genres == ml100k.items.genres).all()


def test_checksum_mismatch_and_missing_file_are_one_clear_error(ml100k, tmp_cards):
    _card_with_zip_source(tmp_cards, "0" * 64)
    with pytest.raises(sources.SourceUnavailable, match="ml-100k.zip"):
        canonical.load("ml100k-zip")
    zpath = tmp_cards / "cache" / "raw" / "ml-100k.zip"
    zpath.parent.mkdir(parents=True)
    zpath.write_bytes(b"not the archive")
    with pytest.raises(sources.ChecksumMismatch, match="does not match"):
        canonical.load("ml100k-zip")


def test_corrupt_cached_table_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path))
    first = canonical.load("movielens-100k", tiny=True)
    (parquet,) = list(tmp_path.glob("tables/*/interactions.parquet"))
    parquet.write_bytes(parquet.read_bytes()[:100])  # truncated
    again = canonical.load("movielens-100k", tiny=True)
    pd.testing.assert_frame_equal(first.interactions, again.interactions)
    proto = protocols.load(first, "next_item")
    (test_file,) = list(tmp_path.glob("protocols/*next_item*/test.parquet"))
    test_file.write_bytes(b"garbage")
    assert protocols.load(first, "next_item").info.hash == proto.info.hash


@pytest.mark.parametrize("task", ["ctr", "next_item"])
def test_protocol_is_byte_identical_when_rebuilt(ml100k, task):
    a, b = protocols.build(ml100k, task), protocols.build(ml100k, task)
    assert a.info.hash == b.info.hash
    for split in protocols.SPLITS:
        pd.testing.assert_frame_equal(a.split(split), b.split(split))
    assert protocols.load(ml100k, task).info.hash == a.info.hash


def test_changing_one_sample_changes_the_hash(ml100k):
    proto = protocols.build(ml100k, "ctr")
    splits = {s: proto.split(s).copy() for s in protocols.SPLITS}
    header = {"any": "header"}
    before = protocols.content_hash(splits, header)
    splits["test"].loc[0, "label"] = 1 - splits["test"].loc[0, "label"]
    assert protocols.content_hash(splits, header) != before


def test_next_item_breaks_timestamp_ties_by_item_id(ml100k):
    proto = protocols.load(ml100k, "next_item")
    inter = ml100k.interactions
    for row in proto.test.head(200).itertuples():
        own = inter[inter.user == row.user]
        last_ts = own.timestamp.max()
        assert row.timestamp == last_ts
        assert row.item == own[own.timestamp == last_ts].item.max()


def test_few_shot_subsets_are_nested_frozen_and_seeded(ml100k):
    proto = protocols.load(ml100k, "ctr")
    s16, s64 = proto.few_shot(16, seed=1), proto.few_shot(64, seed=1)
    assert len(s16) == 16 and len(s64) == 64
    assert set(s16.sample_id) <= set(s64.sample_id)
    assert s16.sample_id.tolist() == proto.few_shot(16, seed=1).sample_id.tolist()
    assert s16.sample_id.tolist() != proto.few_shot(16, seed=2).sample_id.tolist()
    assert len(proto.few_shot("full", seed=1)) == len(proto.train)


def test_ctr_split_is_temporal_and_histories_precede_targets(ml100k):
    proto = protocols.load(ml100k, "ctr")
    assert proto.train.timestamp.max() <= proto.valid.timestamp.min() <= proto.valid.timestamp.max() \
        <= proto.test.timestamp.min()
    sizes = np.array([len(proto.split(s)) for s in protocols.SPLITS])
    assert np.allclose(sizes / sizes.sum(), [0.8, 0.1, 0.1], atol=0.001)
    assert proto.test.history.map(len).min() >= 5
    assert ((proto.test.rating > 3).astype(int) == proto.test.label).all()


# ------------------------------------------------------------------ property-based protocol checks

def _card(n_candidates: int) -> cards.Card:
    protos = {"ctr": {"history_len": 3, "max_history": 4, "min_history": 2, "split": [0.8, 0.1, 0.1],
                      "eval_cap": None, "seed": 0},
              "next_item": {"history_len": 3, "max_history": 4, "n_candidates": n_candidates,
                            "min_interactions": 3, "seed": 0}}
    return cards.Card(name="synthetic", version=1, domain={"item": "item"}, sources=(), filtering={},
                      label_threshold=3, max_bad_line_ratio=0.0, protocols=protos, tiny={},
                      raw={"protocols": protos}, path=Path("synthetic.yaml"))


@st.composite
def interaction_tables(draw):
    n_users = draw(st.integers(2, 8))
    n_items = draw(st.integers(12, 30))
    rows = []
    for user in range(n_users):
        items = draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=7, unique=True))  # >= 5 never seen
        for item in items:
            rows.append((user, item, draw(st.integers(1, 5)), draw(st.integers(0, 5))))  # many ties
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).astype(
        {"user": "int64", "item": "int64", "rating": "float32", "timestamp": "int64"})
    items = pd.DataFrame({"item": np.arange(n_items), "raw_id": [str(i) for i in range(n_items)],
                          "title": [f"t{i}" for i in range(n_items)], "year": pd.NA, "genres": ""})
    users = pd.DataFrame({"user": np.arange(n_users), "raw_id": [str(u) for u in range(n_users)]})
    return CanonicalData(_card(n_candidates=5), inter, items, users, {}, False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interaction_tables())
def test_next_item_protocol_invariants(data):
    proto = protocols.build(data, "next_item")
    inter = data.interactions
    for split in ("valid", "test"):
        for row in proto.split(split).itertuples():
            cands = list(row.candidates)
            own = set(inter[inter.user == row.user].item)
            assert len(cands) == 5 and len(set(cands)) == 5
            assert cands[row.label] == row.item and cands.count(row.item) == 1
            assert not (set(cands) - {row.item}) & own  # negatives never interacted with
    for user, own in inter.groupby("user"):
        ordered = own.sort_values(["timestamp", "item"], kind="stable")
        test = proto.test[proto.test.user == user]
        train = proto.train[proto.train.user == user]
        if len(own) >= 3:
            assert test.item.tolist() == [ordered.item.iloc[-1]]
            assert proto.valid[proto.valid.user == user].item.tolist() == [ordered.item.iloc[-2]]
            for hist in train.history:  # the test item never leaks into training histories
                assert ordered.item.iloc[-1] not in set(hist)
            assert test.history.iloc[0].tolist() == ordered.item.iloc[:-1].tolist()[-4:]
        else:
            assert test.empty
        assert train.timestamp.is_monotonic_increasing or len(train) < 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interaction_tables())
def test_ctr_protocol_invariants(data):
    proto = protocols.build(data, "ctr")
    inter = data.interactions.sort_values(["user", "timestamp", "item"], kind="stable")
    for split in protocols.SPLITS:
        for row in proto.split(split).itertuples():
            own = inter[inter.user == row.user]
            earlier = own[own.timestamp < row.timestamp]  # the target's own second is not history
            assert len(earlier) >= 2  # min_history
            assert list(row.history) == earlier.item.iloc[-4:].tolist()
            assert list(row.history_ratings) == earlier.rating.iloc[-4:].tolist()
    n_eligible = 0
    for _, own in inter.groupby("user"):
        stamps = own.timestamp.to_numpy()
        n_earlier = (stamps[None, :] < stamps[:, None]).sum(axis=1)  # per interaction, earlier ones
        n_eligible += int((n_earlier >= 2).sum())
    assert sum(len(proto.split(s)) for s in protocols.SPLITS) == n_eligible  # every eligible sample, once
    stamps = [proto.split(s)[["timestamp", "user", "item"]] for s in protocols.SPLITS]
    joined = pd.concat(stamps, ignore_index=True)
    assert joined.equals(joined.sort_values(["timestamp", "user", "item"], kind="stable", ignore_index=True))
