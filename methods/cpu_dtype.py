"""Which dtype the LLM backbone computes in on CPU: bf16 where this CPU's bf16 matmul is faster.

A flag list (AVX512-BF16, AMX) says what a CPU can decode, not what torch's kernels make of it on
this machine, so the choice is measured: :func:`matmul_gflops` times a matmul of a decoder layer's
shape (tokens x hidden @ hidden x intermediate: SmolLM2-135M's 576 x 1536) in float32 and in bf16,
and ``cpu_dtype="auto"`` resolves to ``bfloat16`` when bf16 is at least :data:`MIN_SPEEDUP` times
faster, else ``float32``. The measurement (about a second) is kept in ``<cache>/cpu-matmul.json``
per (CPU model, torch version, threads), so each machine measures once. bf16 numerics on CPU are
what bitsandbytes' NF4 path already has (it dequantizes to bf16); the metrics cost of going bf16
all the way is measured in the README's CPU section, with float32 kept as the ``cpu_dtype: float32``
option of every LLM method.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

CPU_DTYPES = ("auto", "float32", "bfloat16")
#: bf16 must beat float32 by this factor to be chosen (rounding costs accuracy; a tie is not worth it)
MIN_SPEEDUP = 1.3
CACHE_FILE = "cpu-matmul.json"
SHAPE = (1024, 576, 1536)  # (tokens, hidden, intermediate) of one SmolLM2-135M MLP matmul


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: str, shape: tuple[int, int, int] = SHAPE, seconds: float = 0.4) -> float:
    """Median GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` on CPU over about ``seconds`` of repeats."""
    import torch

    m, k, n = shape
    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    for _ in range(3):
        a @ b  # warm-up: thread pool, packing buffers
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * m * k * n / times[len(times) // 2] / 1e9


def machine_key() -> str:
    """What a measurement holds for: the CPU model, torch's version and its thread count."""
    import torch

    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def measured_speedup(cache: Path | None = None) -> dict:
    """``{"float32_gflops", "bfloat16_gflops", "speedup", ...}`` for this CPU, measured once per
    :func:`machine_key` and kept in ``cache/cpu-matmul.json`` when ``cache`` is given."""
    key = machine_key()
    path = Path(cache) / CACHE_FILE if cache is not None else None
    known: dict = {}
    if path is not None and path.is_file():
        try:
            known = json.loads(path.read_text())
        except ValueError:
            known = {}
        if isinstance(known, dict) and isinstance(known.get(key), dict):
            return known[key]
    fp32, bf16 = matmul_gflops("float32"), matmul_gflops("bfloat16")
    result = {"float32_gflops": round(fp32, 1), "bfloat16_gflops": round(bf16, 1), "speedup": round(bf16 / fp32, 3),
              "shape": list(SHAPE)}
    if path is not None:
        from benchmarks.data.cache import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: result}, indent=1))
    return result


def resolve(choice: str, cache: Path | None = None) -> str:
    """``float32`` or ``bfloat16`` for ``choice`` (``auto``: by :func:`measured_speedup`).

    Raises:
        ValueError: ``choice`` is not one of :data:`CPU_DTYPES`.
    """
    if choice not in CPU_DTYPES:
        raise ValueError(f"cpu_dtype must be one of {CPU_DTYPES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "bfloat16" if measured_speedup(cache)["speedup"] >= MIN_SPEEDUP else "float32"
