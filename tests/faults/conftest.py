"""The `make_cluster` fixture and every process's output on a failing test (both in tests/harness/cluster.py)."""

from harness.cluster import make_cluster, pytest_runtest_makereport

__all__ = ["make_cluster", "pytest_runtest_makereport"]
