"""Data preparation at MovieLens-25M scale: wall time and peak memory (issue F6).

    python -m benchmarks.perf.prepare_25m                   # 25,000,095 synthetic ratings
    python -m benchmarks.perf.prepare_25m --rows 1000000    # a quick look

1. Writes a synthetic ``ml-25m.zip`` in the GroupLens format (``ml-25m/ratings.csv`` sorted by user
   then movie, half-star ratings, a header line; ``ml-25m/movies.csv`` with quoted titles) with the
   published shape: 162,541 users with at least 20 ratings each, 59,047 rated movies out of 62,423,
   skewed popularity. It is kept in the work folder and reused by later runs.
2. In a fresh process, prepares it the way a run does with the ``movielens-25m`` card: parse,
   canonical tables, both protocols with the frozen candidate draw, parquet files in the cache.
3. Prints the wall time of each stage, the CPU time (all threads, and the main thread alone: on a
   shared machine wall time says little), the peak RSS of the preparing process, and the targets
   (at most 90 s and 6 GB on 2 CPU cores). Exit status 1 when a target is missed.

    python -m benchmarks.perf.prepare_25m --literal-lines 200000

measures instead how fast Python-literal lines decode (the slow path of Steam and the Amazon 2014
meta files), in this process and in a pool of worker processes on every available core.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ML25M = {"rows": 25_000_095, "users": 162_541, "rated_movies": 59_047, "movies": 62_423}
TARGET_SECONDS, TARGET_BYTES = 90.0, 6 * 10**9
_HALF_STARS = np.arange(1, 11) / 2
_STAR_SHARES = np.array([1.6, 3.1, 1.6, 6.6, 5.0, 19.6, 12.6, 26.6, 8.5, 14.8])  # % per half star, roughly ML's
_FIRST_DAY, _LAST_DAY = 789_652_009, 1_574_327_703  # 1995-01-09 .. 2019-11-21, the ML-25M period


def _user_counts(rng: np.random.Generator, rows: int, users: int) -> np.ndarray:
    """Ratings per user: at least 20, heavy-tailed, summing to ``rows`` exactly."""
    extra = rng.lognormal(3.9, 1.25, users)
    counts = 20 + np.floor(extra * (rows - 20 * users) / extra.sum()).astype(np.int64)
    np.add.at(counts, rng.choice(users, size=rows - counts.sum(), replace=True), 1)
    return counts


def _distinct_items(rng: np.random.Generator, counts: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs, ``counts[u]`` distinct items per user, popular items more often; sorted."""
    popularity = 1.0 / (np.arange(n_items) + 50.0)
    cdf = np.cumsum(popularity / popularity.sum())
    keys = np.zeros(0, dtype=np.int64)
    missing = counts.copy()
    for attempt in range(100):
        users = np.repeat(np.arange(len(counts), dtype=np.int64), missing)
        draw = rng.random(len(users))
        items = np.searchsorted(cdf, draw) if attempt < 3 else (draw * n_items).astype(np.int64)
        keys = np.unique(np.concatenate([keys, users * n_items + np.minimum(items, n_items - 1)]))
        missing = counts - np.bincount(keys // n_items, minlength=len(counts))
        if not missing.any():
            return keys // n_items, keys % n_items
    raise RuntimeError("could not draw distinct items (a user has more ratings than movies?)")


def _ratings_table(rows: int, seed: int):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    counts = _user_counts(rng, rows, max(1, round(ML25M["users"] * rows / ML25M["rows"])))
    users, items = _distinct_items(rng, counts, ML25M["rated_movies"])
    movie_ids = np.sort(rng.choice(np.arange(1, 209_172), size=ML25M["movies"], replace=False))
    rated = np.sort(rng.choice(ML25M["movies"], size=ML25M["rated_movies"], replace=False))
    start = rng.integers(_FIRST_DAY, _LAST_DAY, size=len(counts))
    span = np.minimum(_LAST_DAY - start, rng.exponential(3e7, size=len(counts)).astype(np.int64) + 1)
    seconds = start[users] + (rng.random(len(users)) ** 2 * span[users]).astype(np.int64)
    stars = rng.choice(len(_HALF_STARS), size=len(users), p=_STAR_SHARES / _STAR_SHARES.sum())
    star_text = pa.DictionaryArray.from_arrays(pa.array(stars.astype(np.int8)),
                                               pa.array([f"{s:.1f}" for s in _HALF_STARS]))
    table = pa.table({"userId": pa.array(users + 1), "movieId": pa.array(movie_ids[rated][items]),
                      "rating": star_text.cast(pa.string()), "timestamp": pa.array(seconds)})
    return table, movie_ids


def _movies_csv(movie_ids: np.ndarray) -> str:
    """``movies.csv``: some titles with ", The" (quoted: a comma), some movies without genres."""
    genres = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Drama", "Horror"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["movieId", "title", "genres"])
    for movie in movie_ids.tolist():
        article = ", The" if movie % 7 == 0 else ""
        picked = "|".join(g for bit, g in enumerate(genres) if (movie * 2_654_435_761 >> (bit + 7)) & 1)
        title = f"Synthetic Movie {movie}{article} ({1930 + movie % 90})"
        writer.writerow([movie, title, picked or "(no genres listed)"])
    return out.getvalue()


def write_synthetic_zip(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``path``: a zip laid out like ``ml-25m.zip`` with ``rows`` synthetic ratings."""
    import pyarrow.csv as pacsv

    table, movie_ids = _ratings_table(rows, seed)
    tmp = path.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("ml-25m/ratings.csv", "w", force_zip64=True) as member:
            member.write(b"userId,movieId,rating,timestamp\n")
            pacsv.write_csv(table, member, pacsv.WriteOptions(include_header=False, quoting_style="none"))
        archive.writestr("ml-25m/movies.csv", _movies_csv(movie_ids))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Python-literal lines


def _literal_lines(kind: str, n: int, seed: int = 0) -> list[str]:
    """Lines shaped like ``steam_reviews.json.gz`` (a review text) or the Amazon 2014 meta file
    (long "related" lists of ASINs, a description)."""
    rng = np.random.default_rng(seed)
    words = np.array("the game is fun but buggy and i love it great story bad graphics worth price".split())

    def text(k: int) -> str:
        return " ".join(words[rng.integers(0, len(words), k)])

    def asins(k: int) -> list[str]:
        return [f"B00{a:07d}" for a in rng.integers(0, 10**7, k)]

    if kind == "steam":
        return [repr({"username": f"user{k % 50_000}", "hours": 12.5, "products": 41,
                      "product_id": str(10 + k % 9000), "page_order": k % 10, "date": "2017-12-17",
                      "text": text(int(rng.integers(5, 150))), "early_access": False, "page": 1}) for k in range(n)]
    return [repr({"asin": f"B00{k:07d}", "related": {"also_bought": asins(int(rng.integers(0, 60))),
                                                     "also_viewed": asins(int(rng.integers(0, 30)))},
                  "title": text(8), "price": 12.99, "salesRank": {"Beauty": int(rng.integers(1, 10**6))},
                  "categories": [["Beauty", "Skin Care", "Face"]], "description": text(int(rng.integers(0, 120)))})
            for k in range(n)]


def literal_decoding(n: int, folder: Path) -> list[dict]:
    """Lines per second decoding ``n`` lines of each kind with one process and with a pool."""
    import gzip

    from benchmarks.data.formats import BadLines
    from benchmarks.data.formats.line_records import read_records

    rows = []
    for kind, keys in (("steam", ("username", "product_id", "date")), ("amazon-2014-meta", ("asin", "title"))):
        path = folder / f"{kind}-{n}.json.gz"
        if not path.exists():
            with gzip.open(path, "wt", encoding="utf-8") as fh:
                fh.write("\n".join(_literal_lines(kind, n)) + "\n")
        for workers in (1, len(os.sched_getaffinity(0))):
            began = time.perf_counter(), _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN)
            read_records(path, path.name, "python", keys, keys[:1], BadLines(), workers=workers)
            seconds = time.perf_counter() - began[0]
            cpu = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN) - began[1]
            rows.append({"lines": kind, "workers": workers, "lines_per_s": round(n / seconds),
                         "lines_per_cpu_s": round(n / cpu), "seconds": round(seconds, 2),
                         "load_average": round(os.getloadavg()[0], 1)})
    return rows


# --------------------------------------------------------------------------------------------------
# The measured part, in its own process


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def prepare(zip_path: Path, cache: Path) -> dict:
    """Prepare the synthetic archive with the movielens-25m card; stage times and peak RSS."""
    os.environ["LLMREC_BENCH_CACHE"] = str(cache)
    os.environ["LLMREC_BENCH_OFFLINE"] = "1"
    from benchmarks.data import canonical, protocols
    from benchmarks.data.cache import sha256_file
    from benchmarks.data.cards import load_card

    raw = cache / "raw" / "ml-25m.zip"
    raw.parent.mkdir(parents=True, exist_ok=True)
    if not raw.exists():
        os.symlink(zip_path.resolve(), raw)
    card = load_card("movielens-25m")
    source = dataclasses.replace(card.sources[0], files={"ml-25m.zip": sha256_file(zip_path)})
    card = dataclasses.replace(card, sources=(source,))

    stages, start, cpu_start, main_start = [], time.perf_counter(), _cpu_seconds(), time.thread_time()

    def stage(name: str, began: tuple[float, float, float], **extra) -> None:
        stages.append({"stage": name, "seconds": round(time.perf_counter() - began[0], 2),
                       "cpu_seconds": round(_cpu_seconds() - began[1], 2),
                       "main_thread_cpu_seconds": round(time.thread_time() - began[2], 2),
                       "peak_rss_gb_so_far": round(_peak_rss_bytes() / 1e9, 2), **extra})

    began = (time.perf_counter(), _cpu_seconds(), time.thread_time())
    data = canonical.load(card)
    stage("parse + canonical tables + parquet", began)
    stages[-1].update(data.statistics())
    for task in ("ctr", "next_item"):
        began = (time.perf_counter(), _cpu_seconds(), time.thread_time())
        info, sizes = protocols.prepare(data, task)
        stage(f"{task} protocol + candidates + parquet", began, hash=info.hash[:12], samples=sizes)
    return {"stages": stages, "seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
            "main_thread_cpu_seconds": round(time.thread_time() - main_start, 2),
            "peak_rss_bytes": _peak_rss_bytes(), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.prepare_25m",
                                description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=ML25M["rows"], help="synthetic ratings (default: as ML-25M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "llmrec-bench-25m",
                   help="keeps the synthetic archive between runs, and the scratch cache")
    p.add_argument("--literal-lines", type=int, metavar="N",
                   help="measure Python-literal line decoding on N lines of each kind instead")
    p.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: the measured process
    args = p.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.workdir / "cache")))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.literal_lines:
        for row in literal_decoding(args.literal_lines, args.workdir):
            print(json.dumps(row))
        return 0
    archive = args.workdir / f"ml-25m-synthetic-{args.rows}-{args.seed}.zip"
    if not archive.exists():
        began = time.perf_counter()
        write_synthetic_zip(archive, args.rows, args.seed)
        print(f"wrote {archive} ({archive.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - began:.0f} s")
    shutil.rmtree(args.workdir / "cache", ignore_errors=True)
    child = subprocess.run([sys.executable, "-m", "benchmarks.perf.prepare_25m", "--prepare", str(archive),
                            "--workdir", str(args.workdir)], capture_output=True, text=True)
    if child.returncode:
        sys.stderr.write(child.stderr)
        return child.returncode
    result = json.loads(child.stdout.strip().splitlines()[-1])
    for row in result["stages"]:
        print(json.dumps(row))
    ok = result["seconds"] <= TARGET_SECONDS and result["peak_rss_bytes"] <= TARGET_BYTES
    print(f"{args.rows:,} ratings prepared in {result['seconds']:.1f} s wall (target <= {TARGET_SECONDS:.0f} s), "
          f"{result['cpu_seconds']:.1f} s CPU of which {result['main_thread_cpu_seconds']:.1f} s in the main "
          f"thread, peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB (target <= {TARGET_BYTES / 1e9:.0f} GB), "
          f"{len(os.sched_getaffinity(0))} CPU cores at load average {result['load_average'][0]:.1f}: "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
