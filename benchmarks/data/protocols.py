"""Frozen protocols: the samples every method sees, built once, hashed, stored, never re-drawn.

``ctr`` (TALLRec / ReLLa / RecLoRA): one sample per interaction whose user has at least
``min_history`` strictly earlier interactions; the history is the user's items (with ratings) from
before the target's timestamp, oldest first. Interactions in the target's own second are not
history: their order within the second is unknown (on MovieLens-100K half of the samples have one,
rated in the same batch as the target), and the audit checks it. The label is
``rating > card.label_threshold``. Samples are ordered by a global stable sort on
(timestamp, user, item) and split 8:1:1 in that order. ``eval_cap`` keeps a frozen random subset of
valid and test.

``next_item`` (LLaRA / iLoRA): per user, ordered by (timestamp, item id), leave-one-out by time:
last = test, second last = valid, the rest train; users with fewer than ``min_interactions`` are
train-only. Training samples are one per position of each user's training part (sliding window).
Valid and test samples carry ``n_candidates`` frozen candidates: the target plus negatives drawn
uniformly from items the user never interacted with, in a seeded random order (``label`` = index of
the target).

The protocol hash is the sha256 of the card digest, the source files' sha256, the parameters and
the canonical bytes of every column of every split, so the same inputs give the same hash and any
change to a sample changes it.

Every protocol is audited for leakage when it is built (:mod:`benchmarks.data.audit`); the audit is
stored with it and travels in :class:`ProtocolInfo` to every record.

A stored protocol is a folder of one parquet file per split and a ``meta.json`` (task, params, hash,
the files' sha256, sizes, the audit, and a ``binding``: the sha256 of the header and of all of these). It is
used only if the meta.json reads, its task and params are the card's, its binding and the files'
sha256 match, and (when the frames are loaded) the hash re-derived from the loaded samples is the
stored one; anything else is rebuilt, with one warning line naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.contract import ProtocolInfo
from benchmarks.data import audit
from benchmarks.data.cache import atomic_dir, cache_root, sha256_file
from benchmarks.data.canonical import CanonicalData, stable_order
from benchmarks.data.cards import canonical_hash, canonical_json

_log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_LIST_COLUMNS = ("history", "history_ratings", "candidates")


@dataclass(frozen=True)
class FrozenProtocol:
    info: ProtocolInfo
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def split(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

    def few_shot(self, shots: int | str, seed: int) -> pd.DataFrame:
        """The frozen few-shot training subset of size ``shots`` for ``seed`` ("full" = all).

        Subsets are nested (the 16 samples of a seed are the first 16 of its 64) and are a pure
        function of (protocol hash, seed, shots), so every method and rerun gets the same rows.
        """
        if shots in ("full", None) or int(shots) >= len(self.train):
            return self.train
        order = np.random.default_rng([seed, int(self.info.hash[:8], 16)]).permutation(len(self.train))
        return self.train.iloc[np.sort(order[: int(shots)])].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Building blocks. Samples are built as columns: numpy arrays, and list columns as windows into one
# array, never one Python object per sample (25M interactions must fit in a few GB). The pandas
# frames methods see are made from the columns, or read from parquet, only when asked for.

_ROW_GROUP_ROWS = 1 << 20  # rows per parquet row group: pyarrow's default, so the bytes are pandas'
_BLOCK_ROWS = 1 << 17  # rows gathered at a time: blocks this small reuse the allocator's memory


@dataclass(frozen=True)
class _Windows:
    """A list column without one object per row: row ``j`` is ``source[end[j] - length[j]:end[j]]``.
    A block of rows is one gather of fixed-width windows (``width``: the longest row) and a mask."""

    source: np.ndarray
    end: np.ndarray
    length: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.end)

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def take(self, rows: np.ndarray | slice) -> _Windows:
        return _Windows(self.source, self.end[rows], self.length[rows], self.width)

    def values(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The values of rows ``lo:hi``, concatenated in row order."""
        end, length = self.end[lo:hi], self.length[lo:hi]
        width = min(self.width, len(self.source))
        if not len(end) or not width:
            return self.source[:0]
        start = np.maximum(end - width, 0)
        windows = np.lib.stride_tricks.sliding_window_view(self.source, width)[start]  # source[start:start+width]
        if (length == width).all():
            return windows.ravel()
        column = np.arange(width)
        return windows[(column >= (end - length - start)[:, None]) & (column < (end - start)[:, None])]

    def fill(self, lo: int, hi: int, out: np.ndarray) -> int:
        """Write the values of rows ``lo:hi`` into ``out`` block by block; how many were written."""
        done = 0
        for start in range(lo, hi, _BLOCK_ROWS):
            block = self.values(start, min(hi, start + _BLOCK_ROWS))
            out[done: done + len(block)] = block
            done += len(block)
        return done

    def arrays(self) -> list[np.ndarray]:
        """One array per row (views into one copy), as a pandas object column holds them."""
        return np.split(self.values(), np.cumsum(self.length)[:-1]) if len(self) else []


#: a sample table under construction: column name -> values (numpy array) or list column (windows)
Columns = dict[str, np.ndarray | _Windows]


def _take(columns: Columns, rows: np.ndarray | slice) -> Columns:
    return {name: values.take(rows) if isinstance(values, _Windows) else values[rows]
            for name, values in columns.items()}


def _n_rows(columns: Columns) -> int:
    return len(next(iter(columns.values())))


def _frame(columns: Columns) -> pd.DataFrame:
    """The sample table as methods see it (list columns: object columns of numpy arrays)."""
    return pd.DataFrame({name: values.arrays() if isinstance(values, _Windows) else values
                         for name, values in columns.items()})


def _is_ordered(user: np.ndarray, timestamp: np.ndarray, item: np.ndarray) -> bool:
    du, dt, di = np.diff(user), np.diff(timestamp), np.diff(item)
    return bool(np.all((du > 0) | ((du == 0) & ((dt > 0) | ((dt == 0) & (di >= 0))))))


def _user_order(inter: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Interaction columns ordered by (user, timestamp, item) (canonical tables already are), each
    user's start offset and count."""
    ordered = {name: inter[name].to_numpy() for name in ("user", "item", "rating", "timestamp")}
    if not _is_ordered(ordered["user"], ordered["timestamp"], ordered["item"]):
        order = stable_order(ordered["user"], ordered["timestamp"], ordered["item"])
        ordered = {name: values[order] for name, values in ordered.items()}
    users = ordered["user"]
    first = np.ones(len(users), dtype=bool)
    first[1:] = users[1:] != users[:-1]
    starts = np.flatnonzero(first)
    return ordered, starts, np.diff(np.append(starts, len(users)))


def _histories(ordered: dict[str, np.ndarray], ends: np.ndarray, positions: np.ndarray,
               max_len: int) -> tuple[_Windows, _Windows]:
    """For each sample, the up to ``max_len`` items and ratings of its user in ``ordered`` before row
    ``ends`` (exclusive; ``positions``: how many of the user's rows come before it), oldest first."""
    length = np.minimum(positions, max_len).astype(np.int64)
    return (_Windows(ordered["item"], ends, length, max_len),
            _Windows(ordered["rating"].astype(np.float32, copy=False), ends, length, max_len))


def _second_starts(ordered: dict[str, np.ndarray]) -> np.ndarray:
    """For each row of ``ordered`` (sorted by user, timestamp), the first row of its user and timestamp."""
    user, stamp = ordered["user"], ordered["timestamp"]
    first = np.ones(len(user), dtype=bool)
    first[1:] = (user[1:] != user[:-1]) | (stamp[1:] != stamp[:-1])
    return np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))


def _fixed_width(matrix: np.ndarray) -> _Windows:
    """A list column whose row ``j`` is ``matrix[j]``."""
    n, width = matrix.shape
    return _Windows(matrix.ravel(), np.arange(1, n + 1, dtype=np.int64) * width,
                    np.full(n, width, dtype=np.int64), width)


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Whether each of ``codes`` is in ``sorted_codes`` (sorted, unique); ``np.isin`` without a sort."""
    if not len(sorted_codes):
        return np.zeros(np.shape(codes), dtype=bool)
    return sorted_codes[np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)] == codes


def _rejected(users: np.ndarray, targets: np.ndarray, neg: np.ndarray, n_items: int,
              seen: np.ndarray) -> np.ndarray:
    """Which draws must be redrawn: seen by the user, the target, or a repeat within the row."""
    bad = _contains(seen, users[:, None] * n_items + neg) | (neg == targets[:, None])
    order = np.argsort(neg, axis=1, kind="stable")
    sorted_neg = np.take_along_axis(neg, order, axis=1)
    dup_sorted = np.zeros_like(bad)
    dup_sorted[:, 1:] = sorted_neg[:, 1:] == sorted_neg[:, :-1]
    dup = np.zeros_like(bad)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return bad | dup


def sample_negatives(users: np.ndarray, targets: np.ndarray, n_neg: int, n_items: int,
                     seen_pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[len(users), n_neg]`` items drawn uniformly, without repeats in a row, among items the user
    never interacted with (``seen_pairs`` = sorted ``user * n_items + item`` codes). Vectorized
    rejection sampling; also used by methods that re-draw training candidates each epoch. Each round
    re-checks only the rows redrawn in the round before (the others cannot have changed), and
    redraws in row-major order, so the result is that of re-checking every row.

    Raises:
        ValueError: a user has fewer than ``n_neg`` items besides the target never interacted with.
    """
    if n_neg and len(users):
        seen = np.searchsorted(seen_pairs, (users + 1) * n_items) - np.searchsorted(seen_pairs, users * n_items)
        target_unseen = (~_contains(seen_pairs, users * n_items + targets)).astype(np.int64)
        short = n_items - seen - target_unseen < n_neg
        if short.any():
            raise ValueError(f"{int(short.sum())} of {len(users)} users have fewer than {n_neg} items they never "
                             f"interacted with: {n_neg} distinct negatives cannot be drawn for them")
    neg = rng.integers(0, n_items, size=(len(users), n_neg))
    active = np.arange(len(users))
    while len(active):
        sub = neg[active]
        bad = _rejected(users[active], targets[active], sub, n_items, seen_pairs)
        if not bad.any():
            break
        sub[bad] = rng.integers(0, n_items, size=int(bad.sum()))
        neg[active] = sub
        active = active[bad.any(axis=1)]
    return neg


def seen_pairs(inter: pd.DataFrame, n_items: int) -> np.ndarray:
    return np.unique(inter["user"].to_numpy() * n_items + inter["item"].to_numpy())


def _cap(columns: Columns, cap: int | None, rng: np.random.Generator) -> Columns:
    if cap is None or _n_rows(columns) <= cap:
        return columns
    keep = np.sort(rng.choice(_n_rows(columns), size=int(cap), replace=False))
    return _take(columns, keep)


def _finish(columns: Columns) -> Columns:
    return {"sample_id": np.arange(_n_rows(columns), dtype=np.int64), **columns}


# --------------------------------------------------------------------------------------------------
# The two protocols


def build_ctr(data: CanonicalData, params: Mapping[str, Any]) -> dict[str, Columns]:
    if data.card.label_threshold is None:
        raise ValueError(f"dataset '{data.card.name}' has no label_threshold: the ctr protocol needs ratings")
    ordered, starts, counts = _user_order(data.interactions)
    history_end = _second_starts(ordered)  # history: the user's rows before the target's second
    earlier = history_end - np.repeat(starts, counts)
    eligible = np.flatnonzero(earlier >= int(params["min_history"]))
    rows = eligible[stable_order(ordered["timestamp"][eligible], ordered["user"][eligible],
                                 ordered["item"][eligible])]
    hist, hist_r = _histories(ordered, history_end[rows], earlier[rows], int(params["max_history"]))
    rating = ordered["rating"][rows]
    samples = {
        "user": ordered["user"][rows],
        "item": ordered["item"][rows],
        "timestamp": ordered["timestamp"][rows],
        "history": hist,
        "history_ratings": hist_r,
        "rating": rating,
        "label": (rating > float(data.card.label_threshold)).astype(np.int64),
    }
    fractions = np.asarray(params["split"], dtype=float)
    bounds = np.floor(np.cumsum(fractions / fractions.sum()) * len(rows)).astype(int)
    train, valid, test = (_take(samples, slice(lo, hi)) for lo, hi in
                          ((0, bounds[0]), (bounds[0], bounds[1]), (bounds[1], None)))
    rng = np.random.default_rng(int(params["seed"]))
    cap = params.get("eval_cap")
    return {"train": _finish(train), "valid": _finish(_cap(valid, cap, rng)), "test": _finish(_cap(test, cap, rng))}


def build_next_item(data: CanonicalData, params: Mapping[str, Any]) -> dict[str, Columns]:
    ordered, starts, counts = _user_order(data.interactions)
    user_of_row = np.repeat(np.arange(len(starts)), counts)
    position = np.arange(len(ordered["user"])) - starts[user_of_row]
    count = counts[user_of_row]
    evaluated = count >= int(params["min_interactions"])
    role = np.full(len(position), SPLITS.index("train"), dtype=np.int8)
    role[evaluated & (position == count - 2)] = SPLITS.index("valid")
    role[evaluated & (position == count - 1)] = SPLITS.index("test")
    role[(position == 0) & (role == SPLITS.index("train"))] = -1  # no history: no sample
    del user_of_row, count, evaluated
    rng = np.random.default_rng(int(params["seed"]))
    n_items = data.catalog.n_items
    pairs = seen_pairs(data.interactions, n_items)
    out = {}
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(role == code)
        hist, hist_r = _histories(ordered, rows, position[rows], int(params["max_history"]))
        samples: Columns = {
            "user": ordered["user"][rows],
            "item": ordered["item"][rows],
            "timestamp": ordered["timestamp"][rows],
            "history": hist,
            "history_ratings": hist_r,
        }
        if split != "train":
            users, targets = samples["user"], samples["item"]
            try:
                neg = sample_negatives(users, targets, int(params["n_candidates"]) - 1, n_items, pairs, rng)
            except ValueError as err:
                raise ValueError(f"dataset '{data.card.name}', next_item {split}: {err}; lower n_candidates "
                                 f"in {data.card.path}") from None
            cands = np.concatenate([targets[:, None], neg], axis=1)
            perm = np.argsort(rng.random(cands.shape), axis=1)
            samples["candidates"] = _fixed_width(np.take_along_axis(cands, perm, axis=1))
            samples["label"] = np.argmax(perm == 0, axis=1).astype(np.int64)
            samples = _cap(samples, params.get("eval_cap"), rng)
        else:
            samples["label"] = np.zeros(len(rows), dtype=np.int64)  # the target is `item`
        out[split] = _finish(samples)
    return out


#: the columns :func:`with_full_histories` adds (a method asks for them with ``history_pool: full``)
FULL_HISTORY_COLUMNS = ("full_history", "full_history_ratings")


def with_full_histories(interactions: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` (ctr) with each sample's WHOLE history: :data:`FULL_HISTORY_COLUMNS`, the user's items
    and ratings from before the target's second, oldest first, uncapped.

    The stored ``history`` is the last ``max_history`` of these, so the pool a retriever reads (ReLLa /
    RecLoRA pick the K most relevant items of the user's history before the target) does not depend on
    how much a card stores. The pool is looked up in the canonical interactions by (user, timestamp), the
    same rule the ctr builder uses, so no sample holds more than its own past; only the samples handed
    over get it (a few-shot subset, valid and test), never the whole train split.

    Raises:
        ValueError: the (user, timestamp) key would overflow int64 (a timestamp span of over 10^13 s).
    """
    if not len(samples):
        return samples.assign(**{name: [] for name in FULL_HISTORY_COLUMNS})
    ordered, _, _ = _user_order(interactions)
    user, stamp = ordered["user"].astype(np.int64), ordered["timestamp"].astype(np.int64)
    lowest = int(min(stamp.min(initial=0), samples["timestamp"].min()))
    span = int(max(stamp.max(initial=0), samples["timestamp"].max())) - lowest + 1
    if (int(user.max(initial=0)) + 1) * span >= 2**62:
        raise ValueError(f"with_full_histories: {int(user.max()) + 1} users x a {span} s timestamp span overflow "
                         "the (user, timestamp) key")
    keys = user * span + (stamp - lowest)
    wanted = samples["user"].to_numpy(dtype=np.int64)
    end = np.searchsorted(keys, wanted * span + (samples["timestamp"].to_numpy(dtype=np.int64) - lowest), "left")
    length = end - np.searchsorted(keys, wanted * span, "left")
    offsets = np.cumsum(length)
    rows = np.arange(int(offsets[-1])) - np.repeat(offsets - end, length)
    cuts = offsets[:-1]
    items = np.split(ordered["item"][rows].astype(np.int64, copy=False), cuts)
    ratings = np.split(ordered["rating"][rows].astype(np.float32, copy=False), cuts)
    return samples.assign(**dict(zip(FULL_HISTORY_COLUMNS, (items, ratings))))


BUILDERS = {"ctr": build_ctr, "next_item": build_next_item}
#: bumped whenever a builder's samples change for the same inputs, so that no cached protocol of the
#: old code is reused (the version is in the header: the cache key and the hash). ctr 2: histories
#: end before the target's second.
BUILDER_VERSIONS = {"ctr": 2, "next_item": 1}


# --------------------------------------------------------------------------------------------------
# Hashing, storage


def _column_bytes(name: str, values: pd.Series | np.ndarray | _Windows) -> Iterator[bytes | memoryview]:
    """The canonical bytes of a column: its values and dtype; for a list column, the row lengths
    (int64), the concatenated values and their dtype (float64 when there are no rows). Frames and
    columns give the same bytes."""
    if isinstance(values, _Windows):
        yield memoryview(np.ascontiguousarray(values.length, dtype=np.int64))
        for lo in range(0, len(values), _BLOCK_ROWS):
            yield memoryview(np.ascontiguousarray(values.values(lo, lo + _BLOCK_ROWS)))
        yield str(values.dtype if len(values) else np.dtype(np.float64)).encode()
    elif name in _LIST_COLUMNS:
        arrays = [np.asarray(a) for a in values]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        yield from (lengths.tobytes(), np.ascontiguousarray(flat).tobytes(), str(flat.dtype).encode())
    else:
        array = np.ascontiguousarray(values.to_numpy() if isinstance(values, pd.Series) else values)
        yield from (memoryview(array), str(array.dtype).encode())


def content_hash(splits: Mapping[str, pd.DataFrame | Columns], header: Mapping[str, Any]) -> str:
    """sha256 of the header (canonical JSON) and of every column of every split, in sorted order."""
    digest = hashlib.sha256(canonical_json(header).encode())
    for split in SPLITS:
        table = splits[split]
        for column in sorted(table.columns if isinstance(table, pd.DataFrame) else table):
            digest.update(f"{split}/{column}".encode())
            for chunk in _column_bytes(column, table[column]):
                digest.update(chunk)
    return digest.hexdigest()


def _write_parquet(columns: Columns, path: Path) -> None:
    """``_frame(columns).to_parquet(path, index=False)``, byte for byte, one row group at a time
    (the schema, with its pandas metadata, is that of the frame's first row). A second thread
    encodes each row group while this one gathers the next into the other of two buffers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = _n_rows(columns)
    if n == 0:
        _frame(columns).to_parquet(path, index=False)
        return
    schema = pa.Schema.from_pandas(_frame(_take(columns, slice(0, 1))), preserve_index=False)
    group = min(n, _ROW_GROUP_ROWS)
    buffers = {name: [np.empty(group * values.width, dtype=values.dtype) for _ in range(2)]
               for name, values in columns.items() if isinstance(values, _Windows)}
    with pq.ParquetWriter(path, schema, compression="snappy") as writer, ThreadPoolExecutor(1) as encoder:
        pending = None
        for k, lo in enumerate(range(0, n, group)):
            hi = min(n, lo + group)
            arrays = []
            for name, values in columns.items():
                kind = schema.field(name).type
                if not isinstance(values, _Windows):
                    arrays.append(pa.array(values[lo:hi], type=kind))
                    continue
                flat = buffers[name][k % 2]
                count = values.fill(lo, hi, flat)
                offsets = np.concatenate([[0], np.cumsum(values.length[lo:hi])]).astype(np.int32)
                arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[:count]), type=kind))
            table = pa.Table.from_arrays(arrays, schema=schema)
            if pending is not None:
                pending.result()  # the encoder is done with the other buffers
            pending = encoder.submit(writer.write_table, table)
        pending.result()


def _params(data: CanonicalData, task: str) -> dict[str, Any]:
    if task not in data.card.protocols:
        raise ValueError(f"dataset '{data.card.name}' does not declare the '{task}' protocol "
                         f"(it has {sorted(data.card.protocols)}; see {data.card.path})")
    return dict(data.card.protocols[task])


def _header(data: CanonicalData, task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"card": data.card.digest(), "tiny": data.tiny, "sources": data.source_sha256,
            "task": task, "params": dict(params), "builder": BUILDER_VERSIONS[task], "audit": audit.AUDIT_VERSION}


def _audit(data: CanonicalData, task: str, params: Mapping[str, Any], splits: Mapping[str, Columns]) -> dict:
    return audit.audit_protocol(task, splits, data.interactions, data.catalog.n_items, params)


def build(data: CanonicalData, task: str) -> FrozenProtocol:
    """Build the ``task`` protocol of ``data`` from scratch (deterministic)."""
    params = _params(data, task)
    splits = BUILDERS[task](data, params)
    info = ProtocolInfo(task, params, content_hash(splits, _header(data, task, params)),
                        _audit(data, task, params, splits))
    return FrozenProtocol(info, **{split: _frame(columns) for split, columns in splits.items()})


def _folder(data: CanonicalData, task: str) -> Path:
    key = canonical_hash(_header(data, task, _params(data, task)))[:16]
    return cache_root() / "protocols" / f"{data.card.name}{'-tiny' if data.tiny else ''}-{task}-{key}"


def _binding(header: Mapping[str, Any], digest: str, files: Mapping[str, str], sizes: Mapping[str, int],
             audit_report: Mapping[str, Any]) -> str:
    """sha256 tying a stored hash and audit to the inputs they were derived from and to the split
    files' sha256."""
    return canonical_hash({"header": dict(header), "hash": digest, "files": dict(files), "sizes": dict(sizes),
                           "audit": dict(audit_report)})


def _corrupt(path: Path, why: str) -> None:
    _log.warning("corrupt cache: %s (%s); rebuilding it", path, why)


def _verified_meta(folder: Path, data: CanonicalData, task: str) -> dict[str, Any] | None:
    """The stored protocol's meta.json if it reads, is the card's ``task`` with the card's params, its
    binding holds and every split file matches its recorded sha256; else None (one warning line,
    except when nothing is stored yet)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        if folder.exists():
            _corrupt(meta_path, "the file is missing")
        return None
    params = _params(data, task)
    try:
        meta = json.loads(meta_path.read_text())
        files, sizes, digest, report = meta["files"], meta["sizes"], meta["hash"], meta["audit"]
        if not (all(isinstance(files.get(s), str) for s in SPLITS)
                and all(isinstance(sizes.get(s), int) for s in SPLITS)
                and isinstance(digest, str) and isinstance(meta["binding"], str) and isinstance(report, dict)):
            raise TypeError("a field has the wrong type")
        if meta["task"] != task or canonical_json(meta["params"]) != canonical_json(params):
            raise ValueError(f"task or params differ from the card's {task} protocol")
        if meta["binding"] != _binding(_header(data, task, params), digest, files, sizes, report):
            raise ValueError("the stored hash, sizes, audit or file sums were changed after the protocol was built")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        why = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        if str(err) == "'binding'":
            why += " (written by an older version)"
        _corrupt(meta_path, " ".join(why.split())[:200])
        return None
    for split in SPLITS:
        path = folder / f"{split}.parquet"
        if not path.exists() or sha256_file(path) != files[split]:
            _corrupt(path, "missing, or its sha256 differs from meta.json")
            return None
    return meta


def _read(folder: Path, data: CanonicalData, task: str) -> FrozenProtocol | None:
    meta = _verified_meta(folder, data, task)
    if meta is None:
        return None
    splits = {s: pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS}
    if content_hash(splits, _header(data, task, meta["params"])) != meta["hash"]:
        _corrupt(folder / "meta.json", "the stored hash is not the hash of the split files' samples")
        return None
    info = ProtocolInfo(meta["task"], meta["params"], meta["hash"], meta["audit"])
    return FrozenProtocol(info, **splits)


def _build_and_store(data: CanonicalData, task: str, folder: Path) -> tuple[ProtocolInfo, dict[str, Columns]]:
    params = _params(data, task)
    splits = BUILDERS[task](data, params)
    header = _header(data, task, params)
    report = _audit(data, task, params, splits)
    with atomic_dir(folder) as tmp, ThreadPoolExecutor(1) as hasher:
        # the hash is computed beside the writing: sha256 and the parquet encoder release the GIL
        digest = hasher.submit(content_hash, splits, header)
        files = {}
        for split in SPLITS:
            _write_parquet(splits[split], tmp / f"{split}.parquet")
            files[split] = sha256_file(tmp / f"{split}.parquet")
        info = ProtocolInfo(task, params, digest.result(), report)
        sizes = {s: _n_rows(splits[s]) for s in SPLITS}
        (tmp / "meta.json").write_text(json.dumps({
            "task": task, "params": info.params, "hash": info.hash, "files": files, "sizes": sizes,
            "audit": report, "binding": _binding(header, info.hash, files, sizes, report)}, indent=1))
    return info, splits


def prepare(data: CanonicalData, task: str) -> tuple[ProtocolInfo, dict[str, int]]:
    """Make sure the frozen ``task`` protocol of ``data`` is stored (built unless a verified copy is
    cached: its meta.json binding and file sums; the samples are not re-hashed) without making its
    pandas frames: the preparation step at 25M-interaction scale.
    Returns the protocol's info and its number of samples per split."""
    folder = _folder(data, task)
    meta = _verified_meta(folder, data, task)
    if meta is not None:
        return ProtocolInfo(meta["task"], meta["params"], meta["hash"], meta["audit"]), meta["sizes"]
    info, splits = _build_and_store(data, task, folder)
    return info, {split: _n_rows(columns) for split, columns in splits.items()}


def load(data: CanonicalData, task: str) -> FrozenProtocol:
    """The frozen ``task`` protocol of ``data``: read from the cache when its meta.json and files verify
    and the hash re-derived from the loaded samples is the stored one, else built and stored."""
    folder = _folder(data, task)
    cached = _read(folder, data, task)
    if cached is not None:
        return cached
    info, splits = _build_and_store(data, task, folder)
    return FrozenProtocol(info, **{split: _frame(columns) for split, columns in splits.items()})
