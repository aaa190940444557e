"""The hostile-input suites' fixture: one real router per module (hostile_harness.py, which tests import from)."""

from hostile_harness import mesh

__all__ = ["mesh"]
