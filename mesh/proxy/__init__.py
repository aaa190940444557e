"""The front doors: gRPC (inference + management) and REST, over one transport-agnostic data plane."""
