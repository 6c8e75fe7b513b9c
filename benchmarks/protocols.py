"""Frozen protocols: the samples every method sees, built once, hashed, stored, never re-drawn.

``ctr`` (TALLRec / ReLLa / RecLoRA): one sample per interaction whose user has at least
``min_history`` earlier interactions; the history is the user's earlier items (with ratings); the
label is ``rating > card.label_threshold``. Samples are ordered by a global stable sort on
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
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from benchmarks.cache import atomic_dir, cache_root, sha256_file
from benchmarks.canonical import CanonicalData
from benchmarks.cards import canonical_hash, canonical_json
from benchmarks.contract import ProtocolInfo

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
# Building blocks


def _user_order(inter: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Interactions ordered by (user, timestamp, item), each user's start offset and count."""
    ordered = inter.sort_values(["user", "timestamp", "item"], kind="stable", ignore_index=True)
    users, starts, counts = np.unique(ordered["user"].to_numpy(), return_index=True, return_counts=True)
    return ordered, starts, counts


def _histories(ordered: pd.DataFrame, rows: np.ndarray, positions: np.ndarray,
               max_len: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each sample (row index ``rows`` into ``ordered``, at user position ``positions``), the up to
    ``max_len`` previous items and ratings of the same user, oldest first; vectorized."""
    if len(rows) == 0:
        return [], []
    hist_len = np.minimum(positions, max_len)
    offsets = np.concatenate([[0], np.cumsum(hist_len)])
    first = rows - hist_len
    flat = np.repeat(first - offsets[:-1], hist_len) + np.arange(offsets[-1])
    items = ordered["item"].to_numpy()[flat]
    ratings = ordered["rating"].to_numpy()[flat].astype(np.float32)
    cut = offsets[1:-1]
    return np.split(items, cut), np.split(ratings, cut)


def sample_negatives(users: np.ndarray, targets: np.ndarray, n_neg: int, n_items: int,
                     seen_pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[len(users), n_neg]`` items drawn uniformly, without repeats in a row, among items the user
    never interacted with (``seen_pairs`` = sorted ``user * n_items + item`` codes). Vectorized
    rejection sampling; also used by methods that re-draw training candidates each epoch."""
    neg = rng.integers(0, n_items, size=(len(users), n_neg))
    while True:
        codes = users[:, None] * n_items + neg
        bad = np.isin(codes, seen_pairs) | (neg == targets[:, None])
        order = np.argsort(neg, axis=1, kind="stable")
        sorted_neg = np.take_along_axis(neg, order, axis=1)
        dup_sorted = np.zeros_like(bad)
        dup_sorted[:, 1:] = sorted_neg[:, 1:] == sorted_neg[:, :-1]
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        bad |= dup
        if not bad.any():
            return neg
        neg[bad] = rng.integers(0, n_items, size=int(bad.sum()))


def seen_pairs(inter: pd.DataFrame, n_items: int) -> np.ndarray:
    return np.unique(inter["user"].to_numpy() * n_items + inter["item"].to_numpy())


def _cap(frame: pd.DataFrame, cap: int | None, rng: np.random.Generator) -> pd.DataFrame:
    if cap is None or len(frame) <= cap:
        return frame
    keep = np.sort(rng.choice(len(frame), size=int(cap), replace=False))
    return frame.iloc[keep]


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "sample_id", np.arange(len(frame), dtype=np.int64))
    return frame


# --------------------------------------------------------------------------------------------------
# The two protocols


def build_ctr(data: CanonicalData, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    if data.card.label_threshold is None:
        raise ValueError(f"dataset '{data.card.name}' has no label_threshold: the ctr protocol needs ratings")
    ordered, starts, counts = _user_order(data.interactions)
    position = np.arange(len(ordered)) - np.repeat(starts, counts)
    eligible = np.flatnonzero(position >= int(params["min_history"]))
    hist, hist_r = _histories(ordered, eligible, position[eligible], int(params["max_history"]))
    samples = pd.DataFrame({
        "user": ordered["user"].to_numpy()[eligible],
        "item": ordered["item"].to_numpy()[eligible],
        "timestamp": ordered["timestamp"].to_numpy()[eligible],
        "history": hist,
        "history_ratings": hist_r,
        "rating": ordered["rating"].to_numpy()[eligible],
    })
    samples["label"] = (samples["rating"] > float(data.card.label_threshold)).astype(np.int64)
    samples = samples.sort_values(["timestamp", "user", "item"], kind="stable", ignore_index=True)
    fractions = np.asarray(params["split"], dtype=float)
    bounds = np.floor(np.cumsum(fractions / fractions.sum()) * len(samples)).astype(int)
    train, valid, test = samples.iloc[: bounds[0]], samples.iloc[bounds[0]: bounds[1]], samples.iloc[bounds[1]:]
    rng = np.random.default_rng(int(params["seed"]))
    cap = params.get("eval_cap")
    return {"train": _finish(train), "valid": _finish(_cap(valid, cap, rng)), "test": _finish(_cap(test, cap, rng))}


def build_next_item(data: CanonicalData, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    ordered, starts, counts = _user_order(data.interactions)
    user_of_row = np.repeat(np.arange(len(starts)), counts)
    position = np.arange(len(ordered)) - starts[user_of_row]
    count = counts[user_of_row]
    evaluated = count >= int(params["min_interactions"])
    role = np.where(~evaluated, "train",
                    np.where(position == count - 1, "test", np.where(position == count - 2, "valid", "train")))
    role[position == 0] = np.where(role[position == 0] == "train", "none", role[position == 0])  # no history
    rng = np.random.default_rng(int(params["seed"]))
    n_items = data.catalog.n_items
    pairs = seen_pairs(data.interactions, n_items)
    out = {}
    for split in SPLITS:
        rows = np.flatnonzero(role == split)
        hist, hist_r = _histories(ordered, rows, position[rows], int(params["max_history"]))
        frame = pd.DataFrame({
            "user": ordered["user"].to_numpy()[rows],
            "item": ordered["item"].to_numpy()[rows],
            "timestamp": ordered["timestamp"].to_numpy()[rows],
            "history": hist,
            "history_ratings": hist_r,
        })
        if split != "train":
            users, targets = frame["user"].to_numpy(), frame["item"].to_numpy()
            neg = sample_negatives(users, targets, int(params["n_candidates"]) - 1, n_items, pairs, rng)
            cands = np.concatenate([targets[:, None], neg], axis=1)
            perm = np.argsort(rng.random(cands.shape), axis=1)
            cands = np.take_along_axis(cands, perm, axis=1)
            frame["candidates"] = list(cands)
            frame["label"] = np.argmax(perm == 0, axis=1).astype(np.int64)
            frame = _cap(frame, params.get("eval_cap"), rng)
        else:
            frame["label"] = np.zeros(len(frame), dtype=np.int64)  # the target is `item`
        out[split] = _finish(frame)
    return out


BUILDERS = {"ctr": build_ctr, "next_item": build_next_item}


# --------------------------------------------------------------------------------------------------
# Hashing, storage


def _column_bytes(series: pd.Series) -> list[bytes]:
    if series.name in _LIST_COLUMNS:
        arrays = [np.asarray(a) for a in series]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        return [lengths.tobytes(), np.ascontiguousarray(flat).tobytes(), str(flat.dtype).encode()]
    values = np.ascontiguousarray(series.to_numpy())
    return [values.tobytes(), str(values.dtype).encode()]


def content_hash(splits: Mapping[str, pd.DataFrame], header: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(canonical_json(header).encode())
    for split in SPLITS:
        frame = splits[split]
        for column in sorted(frame.columns):
            digest.update(f"{split}/{column}".encode())
            for chunk in _column_bytes(frame[column]):
                digest.update(chunk)
    return digest.hexdigest()


def _params(data: CanonicalData, task: str) -> dict[str, Any]:
    if task not in data.card.protocols:
        raise ValueError(f"dataset '{data.card.name}' does not declare the '{task}' protocol "
                         f"(it has {sorted(data.card.protocols)}; see {data.card.path})")
    return dict(data.card.protocols[task])


def _header(data: CanonicalData, task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"card": data.card.digest(), "tiny": data.tiny, "sources": data.source_sha256,
            "task": task, "params": dict(params)}


def build(data: CanonicalData, task: str) -> FrozenProtocol:
    """Build the ``task`` protocol of ``data`` from scratch (deterministic)."""
    params = _params(data, task)
    splits = BUILDERS[task](data, params)
    info = ProtocolInfo(task, params, content_hash(splits, _header(data, task, params)))
    return FrozenProtocol(info, **splits)


def _folder(data: CanonicalData, task: str) -> Path:
    key = canonical_hash(_header(data, task, _params(data, task)))[:16]
    return cache_root() / "protocols" / f"{data.card.name}{'-tiny' if data.tiny else ''}-{task}-{key}"


def _read(folder: Path) -> FrozenProtocol | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    for split in SPLITS:
        path = folder / f"{split}.parquet"
        if not path.exists() or sha256_file(path) != meta["files"][split]:
            return None
    splits = {s: pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS}
    info = ProtocolInfo(meta["task"], meta["params"], meta["hash"])
    return FrozenProtocol(info, **splits)


def load(data: CanonicalData, task: str) -> FrozenProtocol:
    """The frozen ``task`` protocol of ``data``: read from the cache when its files verify, else built
    and stored. The stored hash is re-derived from the loaded bytes only when building."""
    folder = _folder(data, task)
    cached = _read(folder)
    if cached is not None:
        return cached
    protocol = build(data, task)
    with atomic_dir(folder) as tmp:
        files = {}
        for split in SPLITS:
            protocol.split(split).to_parquet(tmp / f"{split}.parquet", index=False)
            files[split] = sha256_file(tmp / f"{split}.parquet")
        (tmp / "meta.json").write_text(json.dumps({
            "task": task, "params": protocol.info.params, "hash": protocol.info.hash, "files": files,
            "sizes": {s: len(protocol.split(s)) for s in SPLITS}}, indent=1))
    return protocol
