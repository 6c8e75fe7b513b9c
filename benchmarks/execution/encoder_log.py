"""Which trained conventional models a cell stored and which it loaded instead of training
(``record.encoders``), so a record says whether its ``train_seconds`` include an encoder's training.

:mod:`baselines.trained_model_cache` reports every store and load here (``note``); the harness reads
the list when the cell ends. Each entry: ``{"model", "origin", "entry"}``, origin ``"trained"`` (the
cell trained the model and stored its weights) or ``"loaded"`` (it read weights another cell of the
same key had stored, sha256-verified), entry the cache folder's name.
"""
from __future__ import annotations

_events: list[dict] = []


def note(model: str, origin: str, entry: str) -> None:
    _events.append({"model": model, "origin": origin, "entry": entry})


def events() -> list[dict]:
    return [dict(event) for event in _events]
