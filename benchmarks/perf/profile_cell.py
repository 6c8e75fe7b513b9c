"""Where one cell's wall time and memory go: ``python -m benchmarks.perf.profile_cell --method tallrec``.

Runs one cell of a suite (default ``ci``) in this process, through the harness's own
:func:`benchmarks.execution.cell.run_cell`, with the functions that mark each phase wrapped: loading
and quantizing the backbone, training a frozen encoder, building and tokenizing prompts, backward
passes, optimizer steps, scoring validation samples inside ``fit``, the latency probes and the
batched scoring. A phase's time is its own (time spent in a phase nested inside it is that phase's);
what ``fit`` spends outside every marked phase is forward passes, losses and bookkeeping. A sampler
thread reads the process's RSS every 20 ms and keeps each phase's peak. The heavy libraries are
imported first and counted as "imports" (a cell's process pays that too, before any work).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
from tabulate import tabulate

from benchmarks import registry
from benchmarks import suite as suites

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "recbole")
#: (module, attribute path, phase): the functions that mark phases, wrapped wherever they are bound
MARKS = (
    ("methods.backbone", "load_backbone", "backbone load + quantization"),
    ("baselines.recbole_encoders", "fit_frozen_encoder", "frozen encoder training"),
    ("methods.prompting", "CtrPrompts.build", "prompts + tokenization"),
    ("methods.next_item_prompts", "NextItemPrompts.build", "prompts + tokenization"),
    ("torch", "Tensor.backward", "backward"),
    ("torch.optim", "AdamW.step", "optimizer step"),
    ("methods.scoring", "CtrScorer.score", "validation scoring"),
    ("methods.candidate_scoring", "NextItemScorer.score", "validation scoring"),
    ("benchmarks.execution.timing", "timed_fit", "fit: forward, loss, other"),
    ("benchmarks.execution.timing", "_score_one_by_one", "latency probes (batch 1)"),
    ("benchmarks.execution.timing", "timed_score", "scoring (batched)"),
)
#: phases that a scorer's or prompt builder's work belongs to when they run inside them
SCORING_PHASES = ("latency probes (batch 1)", "scoring (batched)")


class PhaseClock:
    """Own time and peak RSS per phase, for nested phases on one thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [phase, start, time in children]
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            phase = self.stack[-1][0] if self.stack else "harness (data, protocol, records)"
            self.peak_mb[phase] = max(self.peak_mb[phase], self._process.memory_info().rss / 2**20)

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()

    def phase_of(self, phase: str) -> str:
        """``phase``, or inside the latency probes or the batched scoring, that scoring phase (a
        scorer's time there is scoring, not validation; prompts built there are marked as such)."""
        outer = next((p for p, _, _ in reversed(self.stack) if p in SCORING_PHASES), None)
        if outer is None or phase not in ("validation scoring", "prompts + tokenization"):
            return phase
        return outer if phase == "validation scoring" else "prompts + tokenization (scoring)"

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = self.phase_of(phase)
            if self.stack and self.stack[-1][0] == name:  # re-entry (a scorer calling itself): one phase
                return fn(*args, **kwargs)
            self.stack.append([name, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                _, start, children = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[name] += elapsed - children
                if self.stack:
                    self.stack[-1][2] += elapsed
        return timed


def _resolve(module_name: str, path: str):
    owner = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, attr


def install(clock: PhaseClock) -> None:
    """Wrap every marked function on its owner and wherever a loaded module bound it by name."""
    for module_name, path, phase in MARKS:
        try:
            owner, attr = _resolve(module_name, path)
        except (ImportError, AttributeError):
            continue
        original = getattr(owner, attr)
        wrapped = clock.wrap(original, phase)
        setattr(owner, attr, wrapped)
        for module in list(sys.modules.values()):
            if module is not None and getattr(module, attr, None) is original:
                setattr(module, attr, wrapped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.profile_cell", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="ci", help="suite whose caps and settings the cell uses (default: ci)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--task", help="ctr or next_item (default: the method's first task in the suite)")
    parser.add_argument("--shots", help="few-shot size (default: the suite's first for the method)")
    args = parser.parse_args(argv)

    process_start = psutil.Process().create_time()
    start = time.perf_counter()
    for name in HEAVY:
        importlib.import_module(name)
    imports = time.perf_counter() - start
    raw = suites.read_suite_file(suites.suite_path(args.suite))
    raw["methods"] = {args.method: (raw.get("methods") or {}).get(args.method) or {}}
    suite = suites.parse(raw, args.suite)
    cells = [c for c in suites.cells(suite) if (args.task in (None, c.task)) and (args.shots in (None, str(c.shots)))]
    if not cells:
        print(f"error: no cell of {args.method} in suite {args.suite} matches", file=sys.stderr)
        return 2
    cell = cells[0]
    registry.get_entry(cell.method).load_class()  # its module and what it binds, before wrapping
    clock = PhaseClock()
    install(clock)
    clock.start()
    from benchmarks.execution.cell import run_cell

    with tempfile.TemporaryDirectory(prefix="profile-cell-") as tmp:
        (Path(tmp) / "work").mkdir()
        begin = time.perf_counter()
        record = run_cell(suite, cell, Path(tmp), "profile")
        total = time.perf_counter() - begin
    clock.stop()
    accounted = sum(clock.seconds.values())
    clock.seconds["harness (data, protocol, records)"] += total - accounted
    rows = [["imports (torch, transformers, peft, bitsandbytes, datasets, recbole)", imports,
             100 * imports / (imports + total), None]]
    rows += [[phase, seconds, 100 * seconds / (imports + total), clock.peak_mb.get(phase)]
             for phase, seconds in sorted(clock.seconds.items(), key=lambda kv: -kv[1])]
    print(f"{cell.key}: {record.status}; process start to imports done "
          f"{time.time() - process_start - total:.1f} s; cell {total:.1f} s; "
          f"peak RSS {max(clock.peak_mb.values(), default=0):.0f} MiB")
    print(tabulate(rows, headers=["phase", "own s", "% of wall", "peak RSS MiB"], floatfmt=".1f"))
    if record.error:
        print(f"{record.status}: {record.error['type']}: {record.error['message']}")
    return 0 if record.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
