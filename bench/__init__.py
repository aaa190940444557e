"""Benchmarks: real processes on 127.0.0.1, run by hand (`python bench/hop.py`), not part of the test suite."""
