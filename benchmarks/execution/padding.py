"""Padding waste per phase: how many of the token slots a cell's batches computed were padding.

Methods that pad batches report each one (``count(real_tokens, slots)``; :func:`methods.scoring.right_padded`
does it for every batch the LLM methods build); the harness reads the running totals around ``fit`` and
around scoring and writes ``record.padding = {"fit": {...}, "score": {...}}``, each with the real
tokens, the slots computed (rows x padded width) and ``waste`` = 1 - tokens / slots. A phase that
padded nothing (a conventional model, say) is left out.
"""
from __future__ import annotations

_totals = [0, 0]  # real tokens, slots


def count(real_tokens: int, slots: int) -> None:
    """Add one padded batch: ``real_tokens`` of its ``slots`` (rows x width) were not padding."""
    _totals[0] += int(real_tokens)
    _totals[1] += int(slots)


def totals() -> tuple[int, int]:
    return _totals[0], _totals[1]


def phase(start: tuple[int, int], end: tuple[int, int]) -> dict | None:
    """The padding of what was counted between two :func:`totals` readings, or None for none."""
    tokens, slots = end[0] - start[0], end[1] - start[1]
    if slots <= 0:
        return None
    return {"tokens": tokens, "slots": slots, "waste": round(1 - tokens / slots, 4)}
