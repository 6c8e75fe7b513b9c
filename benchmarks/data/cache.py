"""Where prepared data lives, and how files are written so that a crash never leaves half of one.

The cache root is ``$LLMREC_BENCH_CACHE`` or ``~/.cache/llmrec-bench``, made absolute once (the CLI
exports the absolute path to its cells); a root inside the repository is refused. Layout::

    .llmrec-bench-cache   marker written when the root is created: --clean-cache deletes only here
    raw/            downloaded archives (verified by sha256)
    tables/         canonical tables per dataset card digest (parquet)
    protocols/      frozen protocols per protocol hash (parquet + meta.json), labels included
    methods/        the only part a method's process may read (``CellContext.cache_dir``):
        backbones/      converted LLM weights (safetensors)
        hf-datasets/    Arrow caches of tokenized prompts
        recbole-models/ trained RecBole weights reused by frozen encoders (baselines/trained_model_cache.py)

A folder built once and read many times (a converted backbone, trained RecBole weights) carries a
``manifest.json`` with the sha256 of every file in it (:func:`write_manifest`), checked on every
read (:func:`verified_manifest`). Temporary files and folders carry their writer's PID; one whose
writer is gone (a killed build) is deleted the next time anything is written beside it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_VAR = "LLMREC_BENCH_CACHE"
MARKER = ".llmrec-bench-cache"
#: what --clean-cache deletes (and the only entries a root may hold to be adopted without a marker)
SUBFOLDERS = ("raw", "tables", "protocols", "methods", "backbones", "hf-datasets")
REPO = Path(__file__).resolve().parents[2]
_TEMP = re.compile(r"\..+\.pid(\d+)\..+")
MANIFEST = "manifest.json"

_log = logging.getLogger(__name__)


class CacheError(RuntimeError):
    """A cache location that cannot be used or cleaned: one line naming it."""


def cache_location() -> Path:
    """The cache root's absolute path (not created); refuses one inside the repository."""
    root = Path(os.path.abspath(os.path.expanduser(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "llmrec-bench")))
    if root == REPO or REPO in root.parents:
        raise CacheError(f"{ENV_VAR}={root} lies inside the repository ({REPO}); put the cache elsewhere")
    return root


def cache_root() -> Path:
    """The cache root, created (with its marker) if needed."""
    root = cache_location()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.exists() and all(child.name in SUBFOLDERS for child in root.iterdir()):
        marker.write_text("created by llmrec-bench; --clean-cache deletes only its known subfolders\n")
    return root


def method_cache() -> Path:
    """The part of the cache a method may read and write (``CellContext.cache_dir``): no labels."""
    folder = cache_root() / "methods"
    folder.mkdir(exist_ok=True)
    return folder


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.pid{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: build it aside, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.pid{os.getpid()}."))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files and folders in ``folder`` whose writing process no longer exists."""
    removed = []
    for child in folder.iterdir():
        match = _TEMP.fullmatch(child.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(child)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_cache() -> Path:
    """Delete the cache's known subfolders (raw downloads included), only in a root that carries the
    marker written when the project created it. Returns the root."""
    root = cache_location()
    if not root.exists():
        return root
    if not (root / MARKER).is_file():
        raise CacheError(f"{root} has no {MARKER} marker, so llmrec-bench did not create it; refusing to "
                         f"delete anything there (check {ENV_VAR})")
    for name in SUBFOLDERS:
        child = root / name
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        elif child.exists() or child.is_symlink():
            child.unlink()
    return root


# --------------------------------------------------------------------------------------------------
# Folders that carry the sha256 of every file (converted backbones, trained RecBole weights)


def _folder_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, **extra: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json``: the sha256 of every other file in ``folder``, plus ``extra``."""
    manifest = {"files": {name: sha256_file(folder / name) for name in _folder_files(folder)}, **extra}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verified_manifest(folder: Path, log: logging.Logger = _log) -> dict[str, Any] | None:
    """``folder``'s manifest if every file in the folder is listed with its sha256 and every listed
    file is there; else None, with one warning line on ``log`` (the caller's logger, whose last name
    part prefixes the line) naming the first file that failed (none when the folder does not exist:
    nothing was built yet)."""
    who = log.name.rsplit(".", 1)[-1]
    if not folder.exists():
        return None
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("'files' is not a mapping of file names to sha256")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("[%s] %s: the manifest is missing or unreadable (%s); rebuilding %s", who,
                    path, " ".join(f"{type(err).__name__}: {err}".split())[:160], folder)
        return None
    for name in sorted(set(files) | set(_folder_files(folder))):
        if name not in files:
            why = "is not in the manifest"
        elif not (folder / name).is_file():
            why = "is missing"
        elif sha256_file(folder / name) != files[name]:
            why = "does not match its sha256 in the manifest"
        else:
            continue
        log.warning("[%s] %s %s; rebuilding %s", who, folder / name, why, folder)
        return None
    return manifest
