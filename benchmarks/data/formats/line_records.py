"""Files with one record per line (JSON lines, or Python dict literals), gzip-compressed or plain.

:func:`read_records` decodes every line, keeps the requested keys as columns and records each line it
cannot use (not UTF-8, bad JSON, an unparseable literal, not a mapping, a required key missing or an
empty string) with its file and line number in the :class:`~benchmarks.data.formats.BadLines` report.
Python literals are parsed with :func:`ast.literal_eval`, never ``eval``. A gzip stream that ends
early is an error, not a bad line: the number of lines lost with it is unknown.

Decoding is the slow part: ``ast.literal_eval`` reads about 20,000 Steam-review lines or 6,500
Amazon-2014-meta lines per CPU-second (``python -m benchmarks.perf.prepare_25m --literal-lines N``),
so files over 32 MiB are decoded in chunks by a pool of worker processes, one per available core,
while this process decompresses (the pool costs about 1% more CPU in all).
"""
from __future__ import annotations

import ast
import gzip
import json
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.data.formats import BadLines, value_problems

#: line decoders by the name used in parsers
DECODERS = ("json", "python", "json_or_python")
CHUNK_LINES = 20_000
#: below this many bytes a file is decoded in this process (a pool costs more than it saves)
PARALLEL_MIN_BYTES = 32 << 20


@dataclass(frozen=True)
class Chunk:
    """Decoded columns of consecutive lines, and the lines that could not be used."""

    columns: dict[str, list[Any]]
    bad: list[tuple[int, str, str]]  # (line number, why, kind)
    n_lines: int


def _decode_line(text: str, decoder: str) -> Any:
    if decoder == "json":
        return json.loads(text)
    if decoder == "python":
        return ast.literal_eval(text)
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def decode_chunk(lines: list[bytes], first_line: int, decoder: str, keys: tuple[str, ...],
                 required: tuple[str, ...]) -> Chunk:
    """Decode ``lines`` (numbered from ``first_line``) and keep ``keys`` (absent optional keys: None)."""
    columns: dict[str, list[Any]] = {"line": [], **{k: [] for k in keys}}
    bad: list[tuple[int, str, str]] = []
    n_lines = 0
    for no, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        n_lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append((no, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", "not_utf8"))
            continue
        try:
            record = _decode_line(text, decoder)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            bad.append((no, f"not a {decoder.replace('_or_', ' or ')} record ({type(err).__name__})", "malformed"))
            continue
        if not isinstance(record, dict):
            bad.append((no, f"expected a mapping, got {type(record).__name__}", "malformed"))
            continue
        missing = [k for k in required if record.get(k) is None]
        if missing:
            bad.append((no, f"missing {', '.join(missing)}", "malformed"))
            continue
        empty = [k for k in required if isinstance(record[k], str) and not record[k].strip()]
        if empty:
            bad.append((no, f"empty {', '.join(empty)}", "empty_id"))
            continue
        columns["line"].append(no)
        for key in keys:
            columns[key].append(record.get(key))
    return Chunk(columns, bad, n_lines)


def _line_chunks(path: Path, label: str) -> Iterator[tuple[list[bytes], int]]:
    """(lines, number of the first) in chunks of CHUNK_LINES; gzip is detected by its magic bytes."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    opener: Callable[..., Any] = gzip.open if is_gzip else open
    first, lines = 1, []
    try:
        with opener(path, "rb") as stream:
            for line in stream:
                lines.append(line)
                if len(lines) == CHUNK_LINES:
                    yield lines, first
                    first, lines = first + len(lines), []
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{label}: the gzip stream is damaged or ends early after line "
                         f"{first + len(lines) - 1} ({err}); delete the file and fetch it again") from None
    if lines:
        yield lines, first


def _pool_size(path: Path, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if path.stat().st_size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _decoded_chunks(path: Path, label: str, args: tuple, workers: int) -> Iterator[Chunk]:
    if workers == 1:
        for lines, first in _line_chunks(path, label):
            yield decode_chunk(lines, first, *args)
        return
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for lines, first in _line_chunks(path, label):
            pending.append(pool.submit(decode_chunk, lines, first, *args))
            while len(pending) > 2 * workers:  # bounded: the file is never held in memory whole
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_records(path: Path, label: str, decoder: str, keys: tuple[str, ...], required: tuple[str, ...],
                 report: BadLines, workers: int | None = None) -> pd.DataFrame:
    """Decode every line of ``path`` and return a frame with ``line`` (int64) and one object column per
    key, for the lines that decoded to a mapping holding every ``required`` key.

    Args:
        label: the file's name in messages (``report`` keeps "label:line: why").
        decoder: "json", "python" (``ast.literal_eval``) or "json_or_python" (JSON first).
        workers: decoding processes; None picks the available cores for files over 32 MiB.

    Raises:
        ValueError: the gzip stream is damaged or truncated (names the file and the last good line).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown line decoder '{decoder}'; known: {', '.join(DECODERS)}")
    columns: dict[str, list[Any]] = {"line": [], **{k: [] for k in keys}}
    for chunk in _decoded_chunks(path, label, (decoder, keys, required), _pool_size(path, workers)):
        report.add_lines(chunk.n_lines)
        for no, why, kind in chunk.bad:
            report.record(label, no, why, kind)
        for name, values in chunk.columns.items():
            columns[name].extend(values)
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    return frame.astype({"line": "int64"})


def drop_invalid(frame: pd.DataFrame, invalid: pd.Series | np.ndarray, why: str, label: str,
                 report: BadLines, kind: str = "not_a_number") -> pd.DataFrame:
    """Record the rows flagged by ``invalid`` as bad lines (by their ``line``) and drop them."""
    invalid = np.asarray(invalid, dtype=bool)
    for no in frame.loc[invalid, "line"].to_numpy():
        report.record(label, int(no), why, kind)
    return frame[~invalid]


def drop_bad_values(frame: pd.DataFrame, rating: pd.Series, timestamp: pd.Series, label: str,
                    report: BadLines) -> pd.DataFrame:
    """Drop (and record) the rows whose rating or timestamp fail :func:`~benchmarks.data.formats.value_problems`;
    ``rating`` and ``timestamp`` are aligned with ``frame``."""
    bad = np.zeros(len(frame), dtype=bool)
    for mask, why, kind in value_problems(rating, timestamp):
        mask = mask & ~bad
        if mask.any():
            for no in frame["line"].to_numpy()[mask]:
                report.record(label, int(no), why, kind)
        bad |= mask
    return frame[~bad]
