"""Delimited text tables (CSV, ``::``-separated .dat) read fast, with every malformed line accounted for.

The fast path is pyarrow's multi-threaded CSV reader with typed columns (tens of millions of rows in
seconds). If it meets anything wrong (a row with the wrong number of fields, a value that does not
convert, an empty required value, text that is not valid in the file's encoding, or a row that fails
the caller's ``checks``), the file is read again line by line, which names each malformed line; that
slower path runs only on damaged files.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks.data.formats import BadLines, repeated_rows

_ONE_BYTE_SEP = "\x1f"  # stands in for a multi-character separator such as "::"

#: row checks on a typed frame: (mask of bad rows, why, kind) triples (see ``formats.value_problems``)
Checks = Callable[[pd.DataFrame], Sequence[tuple[np.ndarray, str, str]]]


class _Anomaly(Exception):
    """The fast path met a malformed row: read the careful way."""


def _prepared(opener: Callable[[], BinaryIO], sep: str, label: str) -> tuple[Callable[[], BinaryIO], str]:
    if len(sep) == 1:
        return opener, sep
    with opener() as stream:
        data = stream.read()
    if _ONE_BYTE_SEP.encode() in data:
        raise ValueError(f"{label}: cannot read a '{sep}'-separated file that contains the byte 0x1f")
    data = data.replace(sep.encode(), _ONE_BYTE_SEP.encode())
    return (lambda: io.BytesIO(data)), _ONE_BYTE_SEP


def _fast(opener: Callable[[], BinaryIO], sep: str, types: Mapping[str, pa.DataType], header: bool,
          quoted: bool, encoding: str, required_text: tuple[str, ...] = (),
          checks: Checks | None = None, repeats: tuple[str, ...] = ()) -> pd.DataFrame:
    invalid_rows = []

    def on_invalid(row) -> str:  # pyarrow ignores exceptions raised here: note the row, skip it
        invalid_rows.append(row.number)
        return "skip"

    read = pacsv.ReadOptions(column_names=list(types), skip_rows=int(header), encoding=encoding,
                             block_size=16 << 20)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                               invalid_row_handler=on_invalid)
    convert = pacsv.ConvertOptions(column_types=dict(types), strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    try:
        with opener() as stream:
            table = pacsv.read_csv(stream, read, parse, convert)
    except pa.ArrowInvalid as err:
        raise _Anomaly(str(err)) from None
    if invalid_rows or any(table.column(name).null_count for name in types):
        raise _Anomaly("a row with the wrong number of fields, or an empty value")
    if any(pc.any(pc.equal(pc.utf8_length(table.column(name)), 0)).as_py() for name in required_text):
        raise _Anomaly("an empty id")
    frame = table.to_pandas(split_blocks=True, self_destruct=True)  # no second copy of the columns
    if checks is not None and any(mask.any() for mask, _, _ in checks(frame)):
        raise _Anomaly("a row fails the reader's checks")
    if repeats and repeated_rows(frame, repeats).any():
        raise _Anomaly("a row repeats an earlier one")
    return frame


def _not_encodable(text: str) -> str | None:
    """Why ``text`` (decoded with ``surrogateescape``) is not valid text, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = text[err.start]
        byte = f" (byte 0x{ord(char) - 0xDC00:02x})" if 0xDC80 <= ord(char) <= 0xDCFF else ""
        return f"not valid text in the file's encoding{byte}"
    return None


def _careful(opener: Callable[[], BinaryIO], sep: str, types: Mapping[str, pa.DataType], header: bool,
             quoted: bool, encoding: str, label: str, report: BadLines, required_text: tuple[str, ...] = (),
             checks: Checks | None = None, repeats: tuple[str, ...] = ()) -> pd.DataFrame:
    n_fields, rows, lines = len(types), [], []
    bad: list[tuple[int, str, str]] = []  # (line, why, kind)
    with opener() as raw, io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="") as text:
        split = csv.reader(text, delimiter=sep, strict=True) if quoted else (
            line.rstrip("\r\n").split(sep) for line in text)
        no = 0
        while True:
            try:
                fields = next(split)
            except StopIteration:
                break
            except csv.Error as err:
                report.add_lines(1)
                bad.append((split.line_num, f"bad quoting ({err})", "malformed"))
                continue
            no = split.line_num if quoted else no + 1
            if (header and no == 1) or not any(f.strip() for f in fields):
                continue
            report.add_lines(1)
            undecodable = _not_encodable("".join(fields))
            if undecodable:
                bad.append((no, undecodable, "not_utf8"))
                continue
            if len(fields) != n_fields:
                bad.append((no, f"expected {n_fields} fields, got {len(fields)}", "malformed"))
                continue
            rows.append(fields)
            lines.append(no)
    frame = pd.DataFrame(rows, columns=list(types), dtype=object)
    line_of = np.asarray(lines, dtype=np.int64)
    why = np.full(len(frame), None, dtype=object)  # the first reason each row is bad for
    kind = np.full(len(frame), None, dtype=object)

    def flag(mask: np.ndarray, reason: str | np.ndarray, category: str) -> None:
        new = np.asarray(mask, dtype=bool) & (why == None)  # noqa: E711 - elementwise
        why[new] = reason[new] if isinstance(reason, np.ndarray) else reason
        kind[new] = category

    for name, column_type in types.items():
        if pa.types.is_string(column_type):
            if name in required_text:
                flag((frame[name].str.len() == 0).to_numpy(), f"the {name} is empty", "empty_id")
            continue  # an empty title is no error: the canonical tables give it a placeholder
        values = pd.to_numeric(frame[name], errors="coerce")
        flag(values.isna().to_numpy(), _shown(name, frame[name]), "not_a_number")
        target = np.dtype(column_type.to_pandas_dtype())
        flag(_unrepresentable(values, column_type), f"{name} does not fit {target}", "not_a_number")
        frame[name] = values
    if checks is not None and len(frame):
        ok = (why == None)  # noqa: E711
        for mask, reason, category in checks(frame[ok].reset_index(drop=True)):
            full = np.zeros(len(frame), dtype=bool)
            full[np.flatnonzero(ok)] = mask
            flag(full, reason, category)
    flagged = np.flatnonzero(why != None)  # noqa: E711
    bad += [(int(line_of[k]), why[k], kind[k]) for k in flagged]
    for no, reason, category in sorted(bad):
        report.record(label, no, reason, category)
    frame = frame[why == None].reset_index(drop=True)  # noqa: E711
    frame = frame.astype({n: t.to_pandas_dtype() for n, t in types.items() if not pa.types.is_string(t)})
    if repeats:
        for no in line_of[why == None][repeated_rows(frame, repeats)]:  # noqa: E711
            report.record_repeat(label, int(no))
    return frame


def _unrepresentable(values: pd.Series, column_type: pa.DataType) -> np.ndarray:
    """Which numbers would change when cast to ``column_type``: for integers, fractions, infinities
    and values beyond int64; for floats, finite values beyond the type's range."""
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        if pa.types.is_integer(column_type):
            if values.dtype.kind == "i":
                return np.zeros(len(v), dtype=bool)
            return ~np.isnan(v) & (~np.isfinite(v) | (v != np.floor(v)) | (np.abs(v) >= 2.0 ** 63))
        return np.isfinite(v) & (np.abs(v) > np.finfo(column_type.to_pandas_dtype()).max)


def _shown(name: str, raw: pd.Series) -> np.ndarray:
    """Per row, why ``raw`` would not convert: "rating is empty" or "rating 'five' is not a number"."""
    text = raw.astype(str).str.slice(0, 30)
    return np.where(text.str.strip() == "", f"{name} is empty", f"{name} '" + text + "' is not a number").astype(object)


def read_delimited(opener: Callable[[], BinaryIO], label: str, types: Mapping[str, pa.DataType],
                   report: BadLines, sep: str = ",", header: bool = False, quoted: bool = False,
                   encoding: str = "utf-8", required_text: tuple[str, ...] = (),
                   checks: Checks | None = None, repeats: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a delimited file into a frame with ``types`` (column name -> pyarrow type), in file order.
    Every line read is counted in ``report``; every malformed one is recorded (file:line: why) and
    dropped.

    Args:
        opener: returns a fresh binary stream of the file each time it is called (read twice on damage).
        label: the file's name in messages.
        sep: the field separator; several characters are allowed (``"::"``).
        header: the first line names the columns (it is skipped; ``types`` gives the names).
        quoted: fields may be enclosed in double quotes (CSV), e.g. titles with commas.
        required_text: string columns that must not be empty (ids).
        checks: row checks on the typed frame, e.g. :func:`benchmarks.data.formats.interaction_checks`.
        repeats: columns on which a row equal to an earlier one is noted as a repeated line
            (``report.record_repeat``, with its line number); such rows are kept (canonical drops them).
    """
    opener, sep = _prepared(opener, sep, label)
    try:
        frame = _fast(opener, sep, types, header, quoted, encoding, required_text, checks, repeats)
    except _Anomaly:
        return _careful(opener, sep, types, header, quoted, encoding, label, report, required_text, checks, repeats)
    report.add_lines(len(frame))
    return frame
