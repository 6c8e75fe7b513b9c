"""Measurement tools, not the product: micro-benchmarks and the GPU check, each runnable as
``python -m benchmarks.perf.<name>``.

May import anything in the project; nothing in the project imports it.
"""
