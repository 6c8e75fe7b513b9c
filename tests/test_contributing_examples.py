"""CONTRIBUTING.md's worked examples run as written: its dataset card builds canonical tables and both
protocols from raw files in the cache, and its suite parses and expands to the cells the guide states."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import yaml

from benchmarks import suite as suites
from benchmarks.data import canonical, cards, protocols
from tests.conftest import ROOT

GUIDE = (ROOT / "CONTRIBUTING.md").read_text()


def example(kind: str) -> dict:
    """The YAML block that follows ``<!-- example: <kind> ...-->`` in the guide."""
    match = re.search(rf"<!-- example: {kind} .*?-->\n```yaml\n(.*?)```", GUIDE, re.S)
    assert match, f"CONTRIBUTING.md has no '{kind}' example"
    return yaml.safe_load(match.group(1))


@pytest.fixture
def my_ratings(tmp_path, monkeypatch):
    """The guide's card in a cards folder beside the shipped ones, and raw files where it says."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    for shipped in cards.CARDS_DIR.glob("*.yaml"):
        (folder / shipped.name).write_text(shipped.read_text())
    card = example("dataset card")
    (folder / f"{card['name']}.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setattr(cards, "CARDS_DIR", folder)
    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "cache" / "raw" / "my-ratings"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(30):
        for step, item in enumerate(rng.choice(60, size=20, replace=False)):
            lines.append(f"u{user}\ti{item}\t{rng.integers(1, 6)}\t{880000000 + 3600 * (20 * user + step)}")
    (raw / "my-ratings.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tyear:token\tgenres:token_seq"]
    items += [f"i{item}\tMovie {item}\t{1990 + item % 10}\tDrama Comedy" for item in range(60)]
    (raw / "my-ratings.item").write_text("\n".join(items) + "\n")
    return card["name"]


def test_the_guides_card_builds_tables_and_both_protocols(my_ratings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unpinned checksums are recorded with a warning
        data = canonical.load(my_ratings)
    assert len(data.interactions) == 600 and data.catalog.n_items == 60
    assert set(data.source_sha256) == {"my-ratings.inter", "my-ratings.item"}
    for task in ("ctr", "next_item"):
        protocol = protocols.load(data, task)
        assert len(protocol.train) and len(protocol.test), task


def test_the_guides_suite_expands_to_the_cells_it_states(my_ratings):
    suite = suites.parse(example("suite"), "CONTRIBUTING.md")
    stated = int(re.search(r"--dry-run` lists its (\d+) cells", GUIDE).group(1))
    assert len(suites.cells(suite)) == stated
