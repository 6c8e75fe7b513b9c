"""From records to answers: statistics (bootstrap intervals, paired tests), tables, plots, the
HTML report, the papers' published numbers.

May import: the top-level contract, registry, metrics, records and suite, the data layer (cards), and
itself. Never execution.
"""
