"""Property-based checks of a raw-format parser: whatever well-formed rows go in come out, and every
malformed line is counted with its file and line number, never silently dropped."""
from __future__ import annotations

import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.data.formats import BadLines
from benchmarks.data.formats.movielens import parse_100k_zip

GENRES = ["Action", "Comedy", "Drama"]
titles = st.text(alphabet=st.characters(blacklist_characters="|\n\r", blacklist_categories=("Cs", "Cc")),
                 min_size=1, max_size=20).filter(lambda t: t.strip() == t)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 30), st.integers(1, 5),
                               st.integers(0, 2**31 - 1)), min_size=1, max_size=40),
       item_titles=st.lists(titles, min_size=30, max_size=30),
       bad_item_lines=st.sets(st.integers(0, 29), max_size=5))
def test_100k_zip_round_trip_and_bad_line_accounting(tmp_path_factory, rows, item_titles, bad_item_lines):
    path = tmp_path_factory.mktemp("zip") / "ml-100k.zip"
    item_lines = []
    for i, title in enumerate(item_titles, start=1):
        if i - 1 in bad_item_lines:
            item_lines.append(f"{i}|{title}|broken")  # wrong field count
        else:
            item_lines.append(f"{i}|{title} (1995)|01-Jan-1995||http://x|1|0|1")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
        z.writestr("ml-100k/u.item", "\n".join(item_lines).encode("latin-1", errors="replace"))
        z.writestr("ml-100k/u.user", "".join(f"{u}|20|M|x|0\n" for u in sorted({r[0] for r in rows})))
        z.writestr("ml-100k/u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)))
    report = BadLines()
    raw = parse_100k_zip({"ml-100k.zip": path}, None, report)
    assert report.bad == len(bad_item_lines)
    assert all(":" in e and "u.item" in e for e in report.examples)
    assert len(raw.items) == 30 - len(bad_item_lines)
    assert raw.interactions[["user_raw", "item_raw"]].astype(int).values.tolist() == [[u, i] for u, i, _, _ in rows]
    assert raw.interactions.timestamp.tolist() == [t for *_, t in rows]
    good = [i for i in range(30) if i not in bad_item_lines]
    assert raw.items.genres.tolist() == ["Action|Drama"] * len(good)
