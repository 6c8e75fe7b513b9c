"""This CPU's matmul ceilings, the yardstick for LLM cell speed: ``python -m benchmarks.perf.matmul_ceiling``.

Prints the median GFLOP/s of float32 and bf16 matmuls (:func:`methods.cpu_dtype.matmul_gflops`) at a
decoder layer's shape and at a large square shape, their ratio, and the dtype ``cpu_dtype: auto``
picks here. Profile figures (``benchmarks.perf.profile_cell``) are read against these numbers.
"""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from methods import cpu_dtype

SHAPES = (cpu_dtype.SHAPE, (2048, 2048, 2048))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.matmul_ceiling",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per dtype and shape (default 1)")
    args = parser.parse_args(argv)
    rows = []
    for shape in SHAPES:
        fp32 = cpu_dtype.matmul_gflops("float32", shape, args.seconds)
        bf16 = cpu_dtype.matmul_gflops("bfloat16", shape, args.seconds)
        rows.append(["x".join(map(str, shape)), fp32, bf16, bf16 / fp32])
    print(cpu_dtype.machine_key())
    print(tabulate(rows, headers=["m x k x n", "float32 GFLOP/s", "bf16 GFLOP/s", "bf16 / float32"], floatfmt=".1f"))
    speedup = rows[0][3]
    print(f"cpu_dtype: auto -> {'bfloat16' if speedup >= cpu_dtype.MIN_SPEEDUP else 'float32'} "
          f"(bf16 chosen at >= {cpu_dtype.MIN_SPEEDUP}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
