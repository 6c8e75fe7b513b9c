"""A run folder's life: a name that cannot collide, one process at a time, and resumes that add only
what belongs to the run.

A run folder holds ``suite.json`` (the resolved suite, its hash and the code version it started
with), ``env.json``, ``records.jsonl``, ``scores/``, ``logs/`` and, while a process works in it,
``.lock``: an exclusive ``flock`` held by that process (the kernel drops it when the process dies,
so a killed run never leaves a stale lock).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderError(Exception):
    """A run folder that cannot be used as asked: one line, exit 2."""


def new_run_id(suite_name: str) -> str:
    """``<suite>-<YYYYmmdd-HHMMSS>-<6 hex>``: two runs started in the same second get two folders."""
    return f"{suite_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def check_out_dir(out: Path) -> Path:
    """``out`` as an absolute folder this process can create run folders in, or one line saying why not."""
    out = Path(os.path.abspath(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        with tempfile.TemporaryDirectory(dir=out, prefix=".write-check-"):
            pass
    except OSError as err:
        raise RunFolderError(f"--out {out}: cannot create run folders there "
                             f"({err.strerror or type(err).__name__})") from None
    return out


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; a second process gets one line naming the holder."""
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunFolderError(f"{run_dir} is in use by another run (PID {holder}); wait for it to finish "
                                 "or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


def write_suite_file(run_dir: Path, suite: dict, suite_hash: str, source: str, run_id: str,
                     code: Mapping) -> None:
    (run_dir / "suite.json").write_text(json.dumps(
        {"suite": suite, "suite_hash": suite_hash, "source": source, "run_id": run_id,
         "code": {"commit": code.get("git_commit"), "dirty": code.get("git_dirty")}},
        indent=1, sort_keys=True))


def read_suite_file(run_dir: Path) -> dict:
    """The saved ``suite.json`` of ``run_dir``, or one line naming what is wrong with it."""
    path = run_dir / "suite.json"
    if not run_dir.is_dir():
        raise RunFolderError(f"--resume {run_dir}: no such folder")
    if not path.exists():
        raise RunFolderError(f"--resume {run_dir}: not a run folder (no suite.json)")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path}: corrupt ({type(err).__name__}: {err})") from None
    missing = [k for k in ("suite", "source", "run_id") if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise RunFolderError(f"{path}: corrupt (missing {', '.join(missing)})")
    return saved


def check_resume(saved: dict, suite_hash: str, cell_keys: set[str], records: list[dict],
                 configs: Mapping[str, tuple[str, dict]], protocol_hashes: Mapping[tuple, str],
                 code: Mapping, allow_mixed: bool) -> None:
    """Refuse a resume that would mix runs, with one line saying what changed.

    Args:
        saved: ``suite.json`` as :func:`read_suite_file` returned it.
        suite_hash: the hash of the suite parsed from it (an edited suite.json no longer matches).
        cell_keys: the run's cells; a record of any other cell is foreign.
        records: every record in ``records.jsonl``.
        configs: method (or method@dataset) -> (config hash, config) as the code resolves it now
            (:func:`benchmarks.suite.resolve_configs`).
        protocol_hashes: (dataset, tiny, task) -> the protocol hash the data gives now.
        code: ``git_commit`` and ``git_dirty`` now.
        allow_mixed: accept a changed config, protocol or code version (never a foreign record).
    """
    where = saved.get("source", "suite.json")
    if saved.get("suite_hash") not in (None, suite_hash):
        raise RunFolderError(f"suite.json of run {saved['run_id']} was edited after the run started "
                             "(its hash no longer matches); start a new run")
    for record in records:
        cell = record.get("cell")
        if record.get("run_id") != saved["run_id"] or cell not in cell_keys:
            raise RunFolderError(f"records.jsonl: foreign record {cell!r} (run {record.get('run_id')!r}): "
                                 f"not a cell of run {saved['run_id']} ({where}); remove it to resume")
    if allow_mixed:
        return
    for record in records:
        if record.get("status") != "ok":
            continue
        method = record["method"]
        now_hash, now_config = configs.get(f"{method}@{record.get('dataset')}", configs[method])
        if record.get("method_config_hash") != now_hash:
            raise RunFolderError(f"{method}'s config changed since this run started: "
                                 f"{_diff(record.get('method_config') or {}, now_config)}; "
                                 "start a new run or pass --allow-mixed")
        key = (record["dataset"], bool(record.get("tiny")), record["task"])
        if key in protocol_hashes and record.get("protocol_hash") != protocol_hashes[key]:
            raise RunFolderError(f"the {record['dataset']} {record['task']} protocol changed since this run "
                                 f"started ({str(record.get('protocol_hash'))[:12]} -> "
                                 f"{protocol_hashes[key][:12]}); start a new run or pass --allow-mixed")
    then = saved.get("code") or {}
    if (then.get("commit") and then.get("dirty") is False and code.get("git_dirty") is False
            and code.get("git_commit") != then["commit"]):
        raise RunFolderError(f"the code changed since this run started (commit {then['commit'][:10]} -> "
                             f"{str(code.get('git_commit'))[:10]}); start a new run or pass --allow-mixed")


def _diff(before: Mapping, after: Mapping) -> str:
    """``key old -> new`` for every changed leaf, nested keys dotted (``model_params.dropout_prob``)."""
    before, after = _flat(before), _flat(after)
    changed = [f"{k} {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return ", ".join(changed) or "its hash differs"


def _flat(mapping: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
