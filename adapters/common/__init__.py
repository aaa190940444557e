"""What every runtime process shares: its gRPC process lifecycle, and the adapter core that drives a model server."""
