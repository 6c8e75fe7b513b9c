"""Suite files (YAML). Schema: benchmarks/suites.py."""
