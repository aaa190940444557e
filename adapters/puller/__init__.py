"""The model puller every runtime adapter shares: fetches a model's files from local storage or S3 into a
per-model folder the runtime loads from (see docs/runtimes/puller.md)."""

from adapters.puller.puller import PulledModel, Puller

__all__ = ["PulledModel", "Puller"]
