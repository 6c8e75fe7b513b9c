"""Optional per-step weight digests, for finding where two runs of one cell part (README, "Determinism").

With ``LLMREC_BENCH_TRACE_STEPS=1`` in the environment (the test environment sets it), each training
loop writes one line per optimizer step to the cell's log (``logs/<cell>.log``): the loop, the step,
the exact losses of its micro-batches and a digest of the trainable weights after the step (step 0:
before training). Two logs of the same cell then show the first step at which the processes differ,
and whether the loss (the forward pass) or only the weights (the backward pass or the optimizer) did.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from benchmarks.contract import weights_digest

ENV_VAR = "LLMREC_BENCH_TRACE_STEPS"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def trace(loop: str, step: int, parameters: Iterable, losses: Iterable[float] = ()) -> None:
    """One line on stderr (the cell's log) when tracing is on; nothing otherwise."""
    if not enabled():
        return
    shown = " ".join(repr(float(value)) for value in losses)
    print(f"[step-trace] {loop} step {step} losses [{shown}] weights {weights_digest(parameters)[:16]}",
          file=sys.stderr, flush=True)
