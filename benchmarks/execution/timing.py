"""One timing protocol for every method, applied by the harness around ``fit`` and ``score``.

* Training: wall seconds of ``fit`` (device synchronized) and training samples per second.
* Inference:
    1. warm-up: ``warmup`` samples scored one by one, not measured (lazy init, allocator, caches);
    2. latency: the next ``latency_samples`` samples scored one by one (batch size 1), p50 and p95 in ms;
    3. throughput: every evaluation sample scored in batches of the suite's ``batch_size``; these are
       the scores the metrics are computed from.
* Memory: on CUDA the allocator peak (``torch.cuda.max_memory_allocated``); on CPU the process peak
  RSS (``ru_maxrss``). Each cell runs in its own process, so the process peak is the cell's peak.
  Per phase: ``fit_peak_memory_mb`` is the peak through the end of ``fit``; ``score_peak_memory_mb``
  the peak of scoring alone on CUDA (the allocator's peak is reset after ``fit``), and on CPU the
  process peak through the end of scoring (RSS peaks cannot be reset), so a CPU score peak above the
  fit peak was reached while scoring.
"""
from __future__ import annotations

import ctypes
import resource
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from benchmarks.execution import progress


def synchronize(device: str) -> None:
    """Wait for queued GPU work so wall time covers it (a no-op on CPU)."""
    if device.startswith("cuda") and "torch" in sys.modules:
        sys.modules["torch"].cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda") and "torch" in sys.modules:
        sys.modules["torch"].cuda.reset_peak_memory_stats()


def release_freed_memory() -> None:
    """Hand memory that is already freed back to the OS: Arrow's pool keeps freed buffers, and glibc keeps
    freed heap pages, for reuse. The harness calls it after dropping the protocol's tables, so that a
    method's peak RSS stacks on what the process still holds (ML-100K ctr: about 100 MiB less), not on
    tables nobody references."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def peak_memory_mb(device: str) -> tuple[float, str]:
    """(peak MiB, what was measured)."""
    if device.startswith("cuda") and "torch" in sys.modules:
        return sys.modules["torch"].cuda.max_memory_allocated() / 2**20, "cuda_allocator_peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


@dataclass
class Timing:
    train_seconds: float | None = None
    train_samples: int | None = None
    train_samples_per_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_samples: int = 0
    throughput_samples_per_s: float | None = None
    score_seconds: float | None = None
    batch_size: int = 0
    peak_memory_mb: float | None = None
    fit_peak_memory_mb: float | None = None
    score_peak_memory_mb: float | None = None
    memory_kind: str = ""
    full_ranking_seconds: float | None = None  # next_item against the whole catalogue, apart from the above
    order_probe_seconds: float | None = None  # benchmarks/audits/order_probe.py, apart from the above
    memorization_seconds: float | None = None  # benchmarks/audits/memorization.py (ms when cached), apart too

    def as_dict(self) -> dict:
        return asdict(self)


def timed_fit(method, data, device: str, timing: Timing, trains: bool = True) -> None:
    """Wall time of ``fit``; training samples/s only for a method that learns from them (a zero-shot
    method's fit is set-up, such as loading the backbone: its samples/s would be meaningless)."""
    synchronize(device)
    start = time.perf_counter()
    method.fit(data)
    synchronize(device)
    timing.train_seconds = time.perf_counter() - start
    timing.fit_peak_memory_mb = peak_memory_mb(device)[0]
    reset_peak_memory(device)
    timing.train_samples = len(data.train) if trains else 0
    timing.train_samples_per_s = timing.train_samples / timing.train_seconds \
        if trains and timing.train_seconds > 0 else None


def _score_one_by_one(method, samples: pd.DataFrame, device: str) -> tuple[list[float], list[np.ndarray]]:
    seconds, outputs = [], []
    for i in range(len(samples)):
        synchronize(device)
        start = time.perf_counter()
        outputs.append(np.asarray(method.score(samples.iloc[i: i + 1])))
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds, outputs


def timed_score(method, samples: pd.DataFrame, device: str, batch_size: int, warmup: int,
                latency_samples: int, timing: Timing) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run the inference protocol above. Returns the batched scores (rows in sample order) and what
    each one-by-one call returned (the first ``warmup + latency_samples`` samples, in order), which
    the harness compares with the batched rows: a method cannot answer the timed calls differently."""
    progress.report("latency probes")
    _, warm_outputs = _score_one_by_one(method, samples.iloc[:warmup], device)
    latencies, timed_outputs = _score_one_by_one(method, samples.iloc[warmup: warmup + latency_samples], device)
    if latencies:
        timing.latency_p50_ms = float(np.percentile(latencies, 50) * 1e3)
        timing.latency_p95_ms = float(np.percentile(latencies, 95) * 1e3)
        timing.latency_samples = len(latencies)
    chunks = []
    synchronize(device)
    start = time.perf_counter()
    batches = -(-len(samples) // batch_size)
    for number, begin in enumerate(range(0, len(samples), batch_size)):
        progress.report("scoring: batch", number, batches)
        chunks.append(np.asarray(method.score(samples.iloc[begin: begin + batch_size])))
    synchronize(device)
    timing.score_seconds = time.perf_counter() - start
    timing.batch_size = batch_size
    timing.throughput_samples_per_s = len(samples) / timing.score_seconds if timing.score_seconds > 0 else None
    timing.score_peak_memory_mb = peak_memory_mb(device)[0]
    return (np.concatenate(chunks) if chunks else np.zeros(0)), warm_outputs + timed_outputs


def record_memory(device: str, timing: Timing) -> None:
    """The cell's peak: the process's on CPU; on CUDA the larger of the two phases' allocator peaks."""
    timing.peak_memory_mb, timing.memory_kind = peak_memory_mb(device)
    if device.startswith("cuda"):
        timing.peak_memory_mb = max(p for p in (timing.peak_memory_mb, timing.fit_peak_memory_mb) if p is not None)
