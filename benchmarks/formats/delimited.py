"""Delimited text tables (CSV, ``::``-separated .dat) read fast, with every malformed line accounted for.

The fast path is pyarrow's multi-threaded CSV reader with typed columns (tens of millions of rows in
seconds). If it meets anything wrong (a row with the wrong number of fields, a value that does not
convert, an empty required value), the file is read again line by line, which names each malformed
line; that slower path runs only on damaged files.
"""
from __future__ import annotations

import csv
import io
from typing import BinaryIO, Callable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks.formats import BadLines

_ONE_BYTE_SEP = "\x1f"  # stands in for a multi-character separator such as "::"


class _Anomaly(Exception):
    """The fast path met a malformed row: read the careful way."""


def _prepared(opener: Callable[[], BinaryIO], sep: str) -> tuple[Callable[[], BinaryIO], str]:
    if len(sep) == 1:
        return opener, sep
    with opener() as stream:
        data = stream.read()
    if _ONE_BYTE_SEP.encode() in data:
        raise ValueError(f"cannot read a '{sep}'-separated file that contains the byte 0x1f")
    data = data.replace(sep.encode(), _ONE_BYTE_SEP.encode())
    return (lambda: io.BytesIO(data)), _ONE_BYTE_SEP


def _fast(opener: Callable[[], BinaryIO], sep: str, types: Mapping[str, pa.DataType], header: bool,
          quoted: bool, encoding: str) -> pd.DataFrame:
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
    return table.to_pandas(split_blocks=True, self_destruct=True)  # no second copy of the columns


def _careful(opener: Callable[[], BinaryIO], sep: str, types: Mapping[str, pa.DataType], header: bool,
             quoted: bool, encoding: str, label: str, report: BadLines) -> pd.DataFrame:
    n_fields, rows, lines, bad = len(types), [], [], []
    with opener() as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as text:
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
                bad.append((split.line_num, f"bad quoting ({err})"))
                continue
            no = split.line_num if quoted else no + 1
            if (header and no == 1) or not any(f.strip() for f in fields):
                continue
            report.add_lines(1)
            if len(fields) != n_fields:
                bad.append((no, f"expected {n_fields} fields, got {len(fields)}"))
                continue
            rows.append(fields)
            lines.append(no)
    frame = pd.DataFrame(rows, columns=list(types), dtype=object)
    invalid = pd.Series(False, index=frame.index)
    for name, kind in types.items():
        if pa.types.is_string(kind):
            continue  # an empty title is no error: the canonical tables give it a placeholder
        values = pd.to_numeric(frame[name], errors="coerce")
        invalid |= values.isna()
        frame[name] = values
    bad += [(lines[k], "a value is empty or not a number") for k in invalid.to_numpy().nonzero()[0]]
    for no, why in sorted(bad):
        report.record(label, no, why)
    frame = frame[~invalid.to_numpy()].reset_index(drop=True)
    return frame.astype({n: t.to_pandas_dtype() for n, t in types.items() if not pa.types.is_string(t)})


def read_delimited(opener: Callable[[], BinaryIO], label: str, types: Mapping[str, pa.DataType],
                   report: BadLines, sep: str = ",", header: bool = False, quoted: bool = False,
                   encoding: str = "utf-8") -> pd.DataFrame:
    """Read a delimited file into a frame with ``types`` (column name -> pyarrow type), in file order.

    Args:
        opener: returns a fresh binary stream of the file each time it is called (read twice on damage).
        label: the file's name in messages.
        sep: the field separator; several characters are allowed (``"::"``).
        header: the first line names the columns (it is skipped; ``types`` gives the names).
        quoted: fields may be enclosed in double quotes (CSV), e.g. titles with commas.
    """
    opener, sep = _prepared(opener, sep)
    try:
        frame = _fast(opener, sep, types, header, quoted, encoding)
    except _Anomaly:
        return _careful(opener, sep, types, header, quoted, encoding, label, report)
    report.add_lines(len(frame))
    return frame
