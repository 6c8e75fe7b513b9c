"""The results schema (one record per cell) and the append-only ``records.jsonl`` store.

Every record says what ran (suite, dataset, protocol hash, method and its full config hash, seed,
shots), what it measured (metrics, timing), and what it ran on (env summary). Per-sample scores are
saved beside it (``scores/<cell>.npz``) for bootstrap intervals and paired comparisons.

Appends write one line (retrying a short ``write`` until every byte is down) followed by ``fsync``;
a reader drops (and a writer truncates) a trailing partial line left by a crash or a full disk, so
no partial record survives, and a write that cannot finish raises.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class CellRecord:
    schema: int
    run_id: str
    suite: str
    suite_version: int
    cell: str                       # the cell key: dataset/task/method/seed=/shots=
    dataset: str
    tiny: bool
    task: str
    protocol_hash: str
    protocol_params: dict
    dataset_sha256: dict            # sha256 of every raw file read
    method: str
    family: str
    method_config: dict
    method_config_hash: str
    seed: int
    shots: Any
    status: str                     # "ok" | "failed"
    n_train: int = 0
    n_eval: int = 0
    metrics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    parameters: dict | None = None  # {"trainable": int, "total": int}
    backbone: dict | None = None    # LLM: {"id", "quant", "compute_dtype", "sha256"/"revision", "weights_sha256",
    #                                 "parameters", "plan": methods.backbone.PLAN_KEYS}
    budget: dict = field(default_factory=dict)
    device: str = "cpu"
    host: dict = field(default_factory=dict)  # the cell process's threads, CPU kernels, load: env.process_facts
    error: dict | None = None       # {"type", "message", "traceback"}
    isolation: dict | None = None   # how the method's process was kept from label files: sandbox.confine
    batch_check: dict | None = None  # one-by-one vs batched scores: evaluation.check_batch_invariance
    padding: dict | None = None     # {"fit"|"score": {"tokens", "slots", "waste"}}: execution/padding.py
    encoders: list | None = None    # [{"model", "origin": "trained"|"loaded", "entry"}]: execution/encoder_log.py
    full_ranking: dict | None = None  # next_item over all items: {"n_items", "metrics"}: execution/full_ranking.py
    order_probe: dict | None = None  # LLM next_item: answers under other candidate orders: audits/order_probe.py
    provenance: dict | None = None  # the method's source: in-tree file + sha256, or plugin distribution
    data_quality: dict | None = None  # what reading the raw files dropped or refused, with the policy
    audit: dict | None = None       # {"protocol", "few_shot", "prompts", "passed"}: data/audit.py, audits/prompts.py
    started_at: str = ""
    finished_at: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def cell_file_stem(cell_key: str) -> str:
    return cell_key.replace("/", "__").replace("=", "-")


def _repair(path: Path) -> None:
    """Truncate a trailing partial line (a crash mid-append)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def append(path: Path, record: CellRecord | dict) -> None:
    """Append one record as one fsync'd line. Raises on any I/O error (a lost record is a bug)."""
    _repair(path)
    line = json.dumps(record.as_dict() if isinstance(record, CellRecord) else record, sort_keys=True) + "\n"
    data = memoryview(line.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            written = os.write(fd, data)
            if written == 0:
                raise OSError(errno.ENOSPC, "no byte could be written")
            data = data[written:]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _repair(path)  # drop the part of the line that was written
        raise
    else:
        os.close(fd)


def read(path: Path) -> list[dict]:
    """All complete records; a trailing partial line is ignored. Later records of a cell win."""
    if not path.exists():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")
    for no, line in enumerate(lines[:-1], start=1):  # the last element is after the final newline
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{no}: corrupt record ({err})") from None
    return records


def latest_by_cell(records: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for record in records:
        out[record["cell"]] = record
    return out


def save_scores(run_dir: Path, cell_key: str, sample_ids: np.ndarray, labels: np.ndarray,
                scores: np.ndarray) -> Path:
    folder = run_dir / "scores"
    folder.mkdir(exist_ok=True)
    path = folder / f"{cell_file_stem(cell_key)}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, sample_id=sample_ids, label=labels, score=scores)
    os.replace(tmp, path)
    return path


def load_scores(run_dir: Path, cell_key: str) -> dict[str, np.ndarray]:
    with np.load(run_dir / "scores" / f"{cell_file_stem(cell_key)}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
