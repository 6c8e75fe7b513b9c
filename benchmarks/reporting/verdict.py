"""The headline of a run: per (dataset, task), does the best LLM cell beat the best conventional one,
by how much, with what certainty, and at what cost?

Each row takes the paired comparison of :func:`benchmarks.reporting.stats.run_statistics` (the best LLM
group against the best conventional group by the task's primary metric, any shots; test samples and
seeds resampled; Holm-adjusted over the rows of this table) and adds the cost ratios LLM / conventional
of the seed medians (an LLM cell's training time includes the frozen encoder it loaded, when a cell
of the run trained it), and one sentence: "LLM better" or "conventional better" when the adjusted
p-value is at most :data:`ALPHA`, else "no detectable difference at n = ...".
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from benchmarks.metrics import METRICS
from benchmarks.reporting.stats import PairedRow

ALPHA = 0.05
#: (record timing field, column): the cost ratios, LLM / conventional, of the seed medians
COSTS = (("train_seconds", "train time"), ("latency_p50_ms", "p50 latency"),
         ("throughput_samples_per_s", "throughput"), ("peak_memory_mb", "peak memory"))


@dataclass(frozen=True)
class Verdict:
    """One (dataset, task): the comparison, both groups' seed counts, the cost ratios and the sentence."""

    comparison: PairedRow
    values: tuple[float, float]       # the primary metric's seed mean: LLM, conventional
    seeds: tuple[int, int]            # LLM, conventional
    ratios: dict[str, float | None]   # COSTS column -> LLM / conventional
    sentence: str


def _median(records: list[dict], field: str, trained: dict[str, float]) -> float | None:
    values = [pipeline_train_seconds(r, trained) if field == "train_seconds" else r["timing"].get(field)
              for r in records]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pipeline_train_seconds(record: dict, trained: dict[str, float]) -> float | None:
    """A cell's training seconds plus those of every frozen encoder it loaded that a cell of this run
    trained (``trained``: cache entry -> that cell's ``train_seconds``): iLoRA's cost includes its SASRec."""
    own = record["timing"].get("train_seconds")
    if own is None:
        return None
    loaded = [e["entry"] for e in record.get("encoders") or () if e["origin"] == "loaded"]
    return own + sum(trained.get(entry, 0.0) for entry in loaded)


def _trained_encoders(groups: dict[tuple, list[dict]]) -> dict[str, float]:
    """Cache entry -> training seconds of the conventional cell that trained and stored it (an LLM cell
    that trained its own encoder has it in its own time already)."""
    return {e["entry"]: r["timing"]["train_seconds"] for rs in groups.values() for r in rs
            if r.get("family") == "conventional" and r["timing"].get("train_seconds")
            for e in r.get("encoders") or () if e["origin"] == "trained"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and b > 0 else None


def sentence(row: PairedRow, alpha: float = ALPHA) -> str:
    """The plain reading of one comparison (A = LLM, B = conventional)."""
    result = row.result
    if result.p_holm is not None and result.p_holm <= alpha:
        a_better = (result.delta > 0) == METRICS[result.metric].higher_is_better
        return "LLM better" if a_better else "conventional better"
    return f"no detectable difference at n = {result.n}"


def verdicts(rows: list[PairedRow], groups: dict[tuple, list[dict]], intervals: dict[tuple, dict]) -> list[Verdict]:
    """A :class:`Verdict` per LLM-against-conventional row (``RunStatistics.llm_vs_conventional``)."""
    out = []
    trained = _trained_encoders(groups)
    for row in rows:
        llm, conventional = groups[row.a_group], groups[row.b_group]
        ratios = {column: _ratio(_median(llm, field, trained), _median(conventional, field, trained))
                  for field, column in COSTS}
        values = (intervals[row.a_group][row.result.metric].estimate,
                  intervals[row.b_group][row.result.metric].estimate)
        out.append(Verdict(row, values, (len(llm), len(conventional)), ratios, sentence(row)))
    return out
