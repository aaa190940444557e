"""Makes this folder importable for the runtime suites below it (`from runtime_harness import ...`): pytest puts
the folder of a conftest.py on sys.path."""
