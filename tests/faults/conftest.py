"""The `make_cluster` fixture and every process's output on a failing test (both in tests/cluster_harness.py)."""

from cluster_harness import make_cluster, pytest_runtest_makereport

__all__ = ["make_cluster", "pytest_runtest_makereport"]
