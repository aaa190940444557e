"""Example models for `mesh serve` and the end-to-end tests: built by examples/build_models.py."""
