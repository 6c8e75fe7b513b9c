"""llmrec-bench: the harness (suites, data, frozen protocols, metrics, timing, records, reports).

Run it with ``python -m benchmarks.run``; see README.md.
"""
