"""The hostile-input suites' fixture: one real router per module (tests/harness/hostile.py, which tests import from)."""

from harness.hostile import mesh

__all__ = ["mesh"]
