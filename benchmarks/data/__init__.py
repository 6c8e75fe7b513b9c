"""The data layer: dataset cards, raw sources and their formats, canonical tables, frozen protocols
and the cache they live in (card -> canonical tables -> frozen protocol).

May import: the top-level contract and registry, and itself. Never execution or reporting.
"""
