"""mesh's runtime adapter for TorchServe: `python -m adapters.torchserve` (docs/runtimes/torchserve.md)."""
