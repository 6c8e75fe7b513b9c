"""Trained RecBole weights kept on disk, so one (protocol, configuration, seed) trains once.

A conventional cell (``sasrec``, ``din`` ...) always trains, so its record's training time is a
measurement, and then stores its weights here. A frozen encoder inside an LLM cell (iLoRA's SASRec,
RecLoRA's DIN) reads them when they are there and trains only when they are not: in a suite with
``sasrec`` and ``ilora``, SASRec trains once per seed, in the ``sasrec`` cell, and the encoder iLoRA
mixes its experts with is that cell's model, weight for weight.

Layout: ``<cache_dir>/recbole-models/<Model>-<key[:20]>/`` holding ``model.safetensors`` (the
``state_dict``, no pickle) and ``manifest.json`` (the sha256 of every file, the full key and what
went into it), written atomically and verified on every load like every other cache: a changed,
missing or extra file is one warning line and a retraining. The key (:func:`cache_key`) covers
everything that decides the weights: the model's settings, the protocol hash, the task, the
training and validation rows (their sample ids), the seed, the device, the suite's epoch cap, and
the code version (the sha256 of the modules that train, the RecBole and torch versions).
``ctx.cache_dir = None`` (the default of a bare ``CellContext``) keeps nothing on disk.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData
from benchmarks.data.cache import atomic_dir, verified_manifest, write_manifest
from benchmarks.data.cards import canonical_hash

FOLDER = "recbole-models"
WEIGHTS = "model.safetensors"
#: the modules whose code decides the trained weights (their sha256 is part of the key)
TRAINING_CODE = ("recbole_training.py", "recbole_adapter.py", "recbole_atomic_files.py", "recbole_compat.py")

_log = logging.getLogger(__name__)


@cache
def code_version() -> str:
    """sha256 over the training modules' source and the RecBole and torch versions."""
    import recbole
    import torch

    digest = hashlib.sha256(f"recbole {recbole.__version__} torch {torch.__version__}\n".encode())
    for name in TRAINING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def _rows_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(np.ascontiguousarray(frame["sample_id"].to_numpy()).tobytes()).hexdigest()


def cache_key(settings: Any, data: FitData, ctx: CellContext) -> dict[str, Any]:
    """What decides a model's trained weights; :func:`canonical_hash` of it names the entry."""
    return {"settings": dataclasses.asdict(settings), "protocol": data.protocol.hash, "task": data.task,
            "train_rows": _rows_digest(data.train), "valid_rows": _rows_digest(data.valid), "seed": ctx.seed,
            "device": ctx.device, "max_epochs": ctx.max_epochs, "code": code_version()}


def entry_folder(cache_dir: Path, settings: Any, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / FOLDER / f"{settings.model}-{canonical_hash(key)[:20]}"


def load_into(model, folder: Path) -> bool:
    """Fill ``model`` (an untrained RecBole module of the right shape) from ``folder``; False (with
    one warning line when the entry exists but fails its manifest) when there is nothing valid."""
    from safetensors.torch import load_model

    if verified_manifest(folder, _log) is None:
        return False
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        _log.warning("[encoders] %s does not fit %s (missing %s, unexpected %s); retraining",
                     folder, type(model).__name__, sorted(missing)[:3], sorted(unexpected)[:3])
        return False
    return True


def store(model, folder: Path, key: dict[str, Any]) -> None:
    """Write ``model``'s weights and the manifest into ``folder`` (atomically; replaces an old entry)."""
    from safetensors.torch import save_model

    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        write_manifest(tmp, key=key)


def announce(model: str, origin: str, folder: Path) -> None:
    """Say that ``model`` was ``"trained"`` (and stored in ``folder``) or ``"loaded"`` from it: one line
    in the cell's log (stderr) and an entry of ``record.encoders`` (:mod:`benchmarks.execution.encoder_log`)."""
    from benchmarks.execution import encoder_log

    encoder_log.note(model, origin, folder.name)
    message = (f"cache hit: {model} loaded from {folder} (not retrained)" if origin == "loaded"
               else f"trained {model}; stored in {folder}")
    print(f"[encoders] {message}", file=sys.stderr, flush=True)
