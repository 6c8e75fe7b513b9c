"""Audits that run on every cell beside the protocol's own leakage audit (:mod:`benchmarks.data.audit`):
the answer-in-prompt check of every rendered LLM prompt (:mod:`.prompts`), the candidate-order probe of
LLM next_item methods (:mod:`.order_probe`) and the backbone memorization probe (:mod:`.memorization`).

May import: the top-level contract, registry, metrics, records and suite, the data layer, and itself.
Never execution or reporting (both read what the audits return).
"""
