"""Our frozen splits written as RecBole atomic files, so that RecBole trains on exactly our samples.

RecBole reads tab-separated files whose header names each column ``name:type``. One folder holds one
RecBole dataset called ``name``:

* ``<name>.<split>.inter``: one row per sample of OUR split, in order (RecBole's
  ``benchmark_filename`` loads them as pre-split files, without re-splitting or re-sampling).
  With a history: ``user_id:token  item_id_list:token_seq  item_id:token``; the list holds the last
  ``max_history`` items of the sample's ``history``, oldest first. ctr splits add ``label:float``
  and next_item splits ``timestamp:float``.
* ``<name>.item``: every catalog item with its side features, so that items absent from training
  still get an id (and a score column).
* ``<name>.user``: every catalog user with its side features.

Ids are ``str(dense code)``; RecBole remaps tokens to its own ids (see :func:`internal_ids`).
Side features are tokens; ``genres`` (``"|"``-joined in the catalog) becomes a ``token_seq``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

USER, ITEM, HISTORY, LABEL, TIME = "user_id", "item_id", "item_id_list", "label", "timestamp"
#: catalog columns holding several "|"-joined values (RecBole ``token_seq``)
MULTI_VALUED = frozenset({"genres"})


def _tokens(values: Iterable) -> list[str]:
    return ["" if pd.isna(v) else str(v) for v in values]


def _sequences(lists: Iterable[Sequence[int]], max_len: int) -> list[str]:
    """Space-joined codes of the last ``max_len`` items of each list (a string table per code: 4x
    faster than ``str()`` per item on 100k histories)."""
    clipped = [np.asarray(seq, dtype=np.int64)[-max_len:] for seq in lists]
    top = max((int(seq.max()) for seq in clipped if len(seq)), default=0)
    names = np.array([str(code) for code in range(top + 1)], dtype=object)
    return [" ".join(names[seq]) for seq in clipped]


def _write(path: Path, columns: dict[str, list[str]]) -> None:
    """Write ``{"name:type": values}`` as one atomic file (values must not hold tabs or newlines)."""
    header = "\t".join(columns)
    rows = zip(*columns.values())
    path.write_text(header + "\n" + "".join("\t".join(row) + "\n" for row in rows))


def write_samples(path: Path, samples: pd.DataFrame, max_history: int | None, task: str) -> None:
    """One ``.inter`` file from our sample table (rows in order).

    Args:
        samples: a sample table (see :mod:`benchmarks.contract`); ``label`` is read for ``ctr``.
        max_history: items of ``history`` kept per row (the newest); None writes no history column.
        task: ``"ctr"`` (adds ``label:float``) or ``"next_item"`` (adds ``timestamp:float``).
    """
    columns = {f"{USER}:token": _tokens(samples["user"])}
    if max_history is not None:
        columns[f"{HISTORY}:token_seq"] = _sequences(samples["history"], max_history)
    columns[f"{ITEM}:token"] = _tokens(samples["item"])
    if task == "ctr":
        columns[f"{LABEL}:float"] = _tokens(samples["label"].astype(np.float32))
    else:
        columns[f"{TIME}:float"] = _tokens(samples["timestamp"])
    _write(path, columns)


def write_features(path: Path, table: pd.DataFrame, key: str, features: Sequence[str]) -> list[str]:
    """The ``.user`` or ``.item`` file: every row of the catalog table ``table`` (id column ``key``,
    ``"user"`` or ``"item"``) with the ``features`` it has. Returns the features written."""
    present = [f for f in features if f in table.columns]
    columns = {f"{key}_id:token": _tokens(table[key])}
    for name in present:
        if name in MULTI_VALUED:
            columns[f"{name}:token_seq"] = [" ".join(v.split("|")) for v in _tokens(table[name])]
        else:
            columns[f"{name}:token"] = [v.replace(" ", "_") for v in _tokens(table[name])]
    _write(path, columns)
    return present


def internal_ids(dataset, field: str, codes: Iterable[int]) -> np.ndarray:
    """RecBole's ids of our dense codes ``codes`` in ``field`` (``"user_id"`` or ``"item_id"``)."""
    return np.asarray(dataset.token2id(field, [str(c) for c in codes]), dtype=np.int64)
