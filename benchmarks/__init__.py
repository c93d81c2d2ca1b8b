"""Benchmarks of gancore: pytest-benchmark suites (bench_*.py) and the mode-coverage benchmark (``python -m benchmarks.modes``)."""
