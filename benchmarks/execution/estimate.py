"""What a suite will cost before it runs, printed by every run and dry run.

CPU estimates are calibrated on the committed records under ``results/`` (measured on 2-core
machines): per cell, the median training seconds of the same (method, task, shots), else of the same
(method, task), else of the family, plus its scoring seconds scaled by the suite's evaluation cap
against the record's number of evaluated samples, plus the order probe's re-scoring at the same rate
(LLM next_item cells), plus :data:`PROCESS_S` for the cell's process start. Records made on this
machine's CPU model (``host.cpu``) are preferred where a key has any: 2-core machines of different
models differ by up to 2x on the LLM cells (an AMD EPYC computes them in float32 and 4x-faster bf16;
an Intel Xeon with AMX has a 7x-faster bf16), so a median over both would fit neither. On CUDA, LLM
cells are estimated by the FLOP and byte model of :mod:`benchmarks.execution.gpu_cost`.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from benchmarks.audits import order_probe
from benchmarks.registry import ROOT, discover

RESULTS = ROOT / "results"
#: run folders whose records the calibration leaves out (:func:`calibrated_without`)
_EXCLUDED: list[Path] = []
PROCESS_S = 10.0    # a cell process's start (imports) before any work, measured 7-12 s here
MAX_CELLS = 500     # a run past this many cells, or MAX_HOURS estimated, needs --yes
MAX_HOURS = 24.0


@lru_cache(maxsize=1)
def _calibration() -> dict[tuple, list[tuple[float, float, int, int, str | None]]]:
    """key -> [(train s, score s, samples scored, samples trained on, CPU model or None)] for keys
    (method, task, shots, tiny), (method, task, tiny) and (family, tiny)."""
    from benchmarks.execution.gpu_cost import committed_records

    table: dict[tuple, list] = defaultdict(list)
    for record in committed_records(RESULTS, exclude=tuple(_EXCLUDED)):
        timing = record.get("timing") or {}
        if record.get("status") != "ok" or record.get("device") != "cpu" or timing.get("score_seconds") is None:
            continue
        point = (timing.get("train_seconds") or 0.0, timing["score_seconds"], record.get("n_eval") or 0,
                 record.get("n_train") or 0, (record.get("host") or {}).get("cpu"))
        tiny = bool(record.get("tiny"))
        for key in ((record["method"], record["task"], str(record["shots"]), tiny),
                    (record["method"], record["task"], tiny), (record.get("family"), tiny)):
            table[key].append(point)
    return dict(table)


@contextmanager
def calibrated_without(*folders: Path) -> Iterator[None]:
    """CPU estimates made inside the block leave out the records under ``folders``: how a committed
    run is checked against the estimate it would have had before it was committed."""
    _EXCLUDED.extend(Path(f).resolve() for f in folders)
    _calibration.cache_clear()
    try:
        yield
    finally:
        del _EXCLUDED[-len(folders):]
        _calibration.cache_clear()


@lru_cache(maxsize=1)
def _this_cpu() -> str:
    """This machine's CPU model, as records store it in ``host.cpu``."""
    from methods.cpu_dtype import cpu_model

    return cpu_model()


def cell_seconds(method: str, family: str, task: str, shots, tiny: bool, eval_cap: int | None,
                 order_probe_samples: int = 0, sizes: dict[str, int] | None = None) -> float | None:
    """Estimated CPU wall seconds of one cell, or None without a calibration point (tiny subsets are
    calibrated on tiny records only). ``sizes`` (the split's {"train", "test"} sample counts, when
    known) scale a record's training and scoring seconds to the cell's dataset: the records are
    MovieLens-100K's."""
    table = _calibration()
    here = _this_cpu()
    for key in ((method, task, str(shots), tiny), (method, task, tiny), (family, tiny)):
        if key in table:
            points = [p for p in table[key] if p[4] == here] or table[key]
            trained = evaluated = None
            if sizes:
                trained = sizes["train"] if shots in ("full", None) else min(int(shots), sizes["train"])
                evaluated = min(eval_cap or sizes["test"], sizes["test"])
            evaluated = evaluated or eval_cap
            train = statistics.median(p[0] * (trained / p[3] if trained and p[3] else 1.0) for p in points)
            score = statistics.median(p[1] * (evaluated / p[2] if evaluated and p[2] else 1.0) for p in points)
            probe = 0.0
            if order_probe.applies(task, family):  # each ordering re-scores up to that many of the scored ones
                scored = evaluated or statistics.median(p[2] for p in points)
                probe = len(order_probe.ORDERINGS) * min(order_probe_samples, scored) * statistics.median(
                    p[1] / p[2] for p in points if p[2])
            return PROCESS_S + train + score + probe
    return None


def cell_estimate(cell, suite, configs: dict | None = None,
                  registered: dict | None = None) -> tuple[float | None, float | None]:
    """(estimated wall seconds, peak GiB or None) of one cell on the suite's device; (None, None) when
    nothing calibrates it. On CUDA, LLM cells follow the FLOP and byte model of
    :mod:`benchmarks.execution.gpu_cost` (their config from ``configs``, as
    :func:`benchmarks.suite.resolve_configs` returns them); the other cells take their CPU estimate,
    scaled to the split's size: an upper bound (a GPU runs RecBole's models no slower)."""
    from benchmarks import suite as suites
    from benchmarks.execution import gpu_cost

    entry = (registered or discover())[cell.method]
    family = entry.family
    tiny = next(d.tiny for d in suite.datasets if d.name == cell.dataset)
    budget = suite.budget_for(cell.dataset)
    if suite.device.startswith("cuda") and family == "llm":
        spec = suite.methods[cell.method]
        config = (configs or {}).get(suites.config_key(cell.method, cell.dataset, spec), (None, {}))[1]
        cost = gpu_cost.llm_cell(method=cell.method, task=cell.task, dataset=cell.dataset, shots=cell.shots,
                                 llm=spec.llm or suite.llm, quant=suite.quant, config=config, budget=budget,
                                 gpu=gpu_cost.device(), trains=entry.trains)
        return (PROCESS_S + cost.seconds, cost.peak_gib) if cost else (None, None)
    sizes = None if tiny else gpu_cost.split_sizes(cell.dataset, cell.task)
    return cell_seconds(cell.method, family, cell.task, cell.shots, tiny, budget.eval_cap,
                        budget.order_probe_samples, sizes), None


def total_seconds(cells: list, suite, configs: dict | None = None, family: str | None = None) -> tuple[float, int]:
    """(estimated seconds of the cells that have an estimate, number of cells without one), of the
    cells of ``family`` only when given."""
    known, unknown = 0.0, 0
    registered = discover()  # once: it reads every method file
    for cell in cells:
        if family is not None and registered[cell.method].family != family:
            continue
        seconds, _peak = cell_estimate(cell, suite, configs, registered)
        if seconds is None:
            unknown += 1
        else:
            known += seconds
    return known, unknown


def describe(cells: list, suite, configs: dict | None = None) -> str:
    """One line: the cell count and the estimated wall time, with how it was estimated."""
    seconds, unknown = total_seconds(cells, suite, configs)
    missing = f"; {unknown} cells without an estimate" if unknown else ""
    if suite.device.startswith("cuda"):
        from benchmarks.execution import gpu_cost

        llm, _ = total_seconds(cells, suite, configs, family="llm")
        return (f"{len(cells)} cells on {suite.device}; estimated {llm / 3600:.1f} GPU-hours for the LLM cells on "
                f"{gpu_cost.describe_device(gpu_cost.device())} (a FLOP and byte model over the token counts of "
                f"committed records: benchmarks/execution/gpu_cost.py) and at most {(seconds - llm) / 3600:.1f} h "
                f"for the others (their CPU records scaled to each split's size){missing}"
                + budget_check(llm, unknown, suite))
    if unknown == len(cells):
        return f"{len(cells)} cells; no CPU cost estimate (no committed 2-core record calibrates these cells)"
    return (f"{len(cells)} cells; estimated CPU wall time {seconds / 3600:.1f} h "
            f"(median of committed 2-core records per method, task and shots{missing})")


def budget_check(llm_seconds: float, unknown: int, suite) -> str:
    """The clause of :func:`describe` that sets the LLM cells' estimate against the suite's stated
    ``budget.gpu_hours`` ("" when the suite states none)."""
    stated = suite.budget.gpu_hours
    if stated is None:
        return ""
    hours = llm_seconds / 3600
    verdict = "within" if hours <= stated else "OVER"
    partial = f" (incomplete: {unknown} cells have no estimate)" if unknown else ""
    return f"; {hours:.1f} GPU-hours is {verdict} the suite's stated budget of {stated:g}{partial}"


def cell_line(cell, suite, configs: dict | None = None, registered: dict | None = None) -> str:
    """``--dry-run``'s line for a cell: its key and its estimate (``registered``: :func:`discover`'s
    result, read once by the caller for many cells)."""
    seconds, peak = cell_estimate(cell, suite, configs, registered)
    if seconds is None:
        return f"{cell.key}    (no estimate)"
    when = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"
    return f"{cell.key}    ~{when}" + (f", peak {peak:.1f} GiB" if peak is not None else "")


def needs_confirmation(cells: list, suite, configs: dict | None = None) -> bool:
    seconds, _unknown = total_seconds(cells, suite, configs)
    return len(cells) > MAX_CELLS or seconds / 3600 > MAX_HOURS
