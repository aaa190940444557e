"""mesh's adapter for custom models written with the KServe Python SDK (a `kserve.Model` subclass per model)."""
