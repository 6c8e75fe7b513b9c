"""Running cells: a cell's two halves (the method's, confined by the sandbox, and the harness's
evaluation), the executors that run them (local processes, Ray), timing, run folders, the
environment facts, cost estimates.

May import: the top-level contract, registry, metrics, records and suite, the data layer, the audits,
and itself.
Never reporting.
"""
