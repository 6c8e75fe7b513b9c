"""Where prepared data lives, and how files are written so that a crash never leaves half of one.

The cache root is ``$LLMREC_BENCH_CACHE`` or ``~/.cache/llmrec-bench``; it is never inside the
repository. Layout::

    raw/            downloaded archives (verified by sha256)
    tables/         canonical tables per dataset card digest (parquet)
    protocols/      frozen protocols per protocol hash (parquet + meta.json)
    backbones/      converted LLM weights (safetensors)
    hf-datasets/    Arrow caches of tokenized prompts
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENV_VAR = "LLMREC_BENCH_CACHE"


def cache_root() -> Path:
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "llmrec-bench")
    root.mkdir(parents=True, exist_ok=True)
    return root


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
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
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
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def clean_cache() -> Path:
    """Delete every prepared artefact (raw downloads included). Returns the root that was cleaned."""
    root = cache_root()
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return root
