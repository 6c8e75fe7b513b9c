"""Dataset cards: one declarative YAML file per dataset in ``datasets/``.

A card names its raw sources (format, location, sha256 of each file), its filtering, its label
threshold, the parameters of each protocol it supports and the tiny subset the ``ci`` suite uses.
The whole card (canonical JSON, sorted keys) goes into the protocol hash, so two runs on different
cards can never be mixed.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.registry import ROOT, did_you_mean

CARDS_DIR = ROOT / "datasets"

_PROTOCOL_KEYS = {
    "ctr": {"history_len", "max_history", "min_history", "split", "eval_cap", "seed"},
    "next_item": {"history_len", "max_history", "n_candidates", "min_interactions", "seed", "eval_cap"},
}
_FILTERING = {"k_core": "(int|null) user/item k-core, iterated until stable",
              "deduplicate": "(earliest|null) keep one interaction per (user, item): the earliest"}
_TOP_KEYS = {"name", "version", "citation", "domain", "sources", "filtering", "label_threshold",
             "max_bad_line_ratio", "protocols", "tiny", "notes"}


@dataclass(frozen=True)
class Source:
    format: str
    location: str
    files: Mapping[str, str | None]  # file name -> sha256 (None: the source publishes none)
    url: str | Mapping[str, str] | None = None  # one URL, or file name -> URL for several files
    size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Card:
    name: str
    version: int
    domain: Mapping[str, str]
    sources: tuple[Source, ...]
    filtering: Mapping[str, Any]
    label_threshold: float | None
    max_bad_line_ratio: float
    protocols: Mapping[str, Mapping[str, Any]]
    tiny: Mapping[str, Any]
    raw: Mapping[str, Any]
    path: Path

    def digest(self) -> str:
        """sha256 of the card's canonical JSON (sorted keys)."""
        return canonical_hash(self.raw)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def known_cards() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def load_card(name: str) -> Card:
    """Read and validate ``datasets/<name>.yaml``.

    Raises:
        UnknownName: no such card (lists the known ones).
        ValueError: an unknown key or a missing field, naming the file.
    """
    path = CARDS_DIR / f"{name}.yaml"
    if not path.exists():
        raise did_you_mean("dataset", name, known_cards())
    raw = yaml.safe_load(path.read_text())
    where = f"{path}"
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for proto, params in raw.get("protocols", {}).items():
        if proto not in _PROTOCOL_KEYS:
            raise ValueError(f"{where}: unknown protocol '{proto}'; known: {sorted(_PROTOCOL_KEYS)}")
        bad = set(params) - _PROTOCOL_KEYS[proto]
        if bad:
            raise ValueError(f"{where}: protocols.{proto}: unknown key(s) {sorted(bad)}")
    filtering = raw.get("filtering") or {}
    if set(filtering) - set(_FILTERING) or filtering.get("deduplicate") not in (None, "earliest"):
        raise ValueError(f"{where}: filtering: allowed keys are {_FILTERING}, got {filtering}")
    sources = []
    for i, src in enumerate(raw["sources"]):
        src = dict(src)
        try:
            sources.append(Source(format=src.pop("format"), location=src.pop("location"),
                                  files=src.pop("files"), url=src.pop("url", None),
                                  size=src.pop("size", None), options=src.pop("options", {})))
        except KeyError as err:
            raise ValueError(f"{where}: sources[{i}] lacks {err}") from None
        if src:
            raise ValueError(f"{where}: sources[{i}]: unknown key(s) {sorted(src)}")
    return Card(
        name=raw["name"], version=int(raw["version"]), domain=raw["domain"], sources=tuple(sources),
        filtering=raw.get("filtering") or {}, label_threshold=raw.get("label_threshold"),
        max_bad_line_ratio=float(raw.get("max_bad_line_ratio", 0.001)),
        protocols=raw.get("protocols", {}), tiny=raw.get("tiny") or {}, raw=raw, path=path,
    )
