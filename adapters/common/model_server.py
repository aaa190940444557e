"""What an adapter knows about its model server: the one interface each runtime (MLServer, TorchServe, Triton)
implements, translating mesh's load/unload/size into the server's own model-management API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from adapters.puller import PulledModel

V2_METHODS: Mapping[str, tuple[int, ...]] = {
    "inference.GRPCInferenceService/ModelInfer": (1,),
    "inference.GRPCInferenceService/ModelMetadata": (1,),
}
"""The KServe v2 methods the router forwards, with the field holding the model name (injected by the router)."""


class ModelServer(ABC):
    """One model server process, reached over its own APIs. Models are named by their mesh model id there."""

    runtime_version: str
    """Reported in runtimeStatus, e.g. "mlserver/1.7.1"."""
    model_types: tuple[str, ...]
    """The ModelInfo.type values this server loads (the router places nothing else here)."""
    data_endpoint: str
    """host:port of the server's gRPC inference API, where the router forwards requests."""
    methods: Mapping[str, tuple[int, ...]] = V2_METHODS

    @abstractmethod
    async def wait_ready(self, timeout: float) -> None:
        """Return once the server answers; raise Unavailable when it does not within timeout seconds."""

    def check_model_id(self, model_id: str) -> None:
        """Raise InvalidArgument for an id the server cannot name a model by; called before anything is pulled."""
        return None  # by default every id can be a name

    @abstractmethod
    async def load(self, model_id: str, model_type: str, model: PulledModel) -> int | None:
        """Load the pulled files under the name model_id; the memory it reports in bytes, or None when it
        reports none. Raise ModelLoadFailed (with the server's message) when the server refuses the model."""

    @abstractmethod
    async def unload(self, model_id: str) -> None:
        """Unload; a model the server does not have is not an error (the router may unload twice)."""

    async def size(self, model_id: str) -> int | None:
        """The memory the server reports for a loaded model, or None when it reports none."""
        return None

    @abstractmethod
    async def unload_all(self) -> None:
        """Unload every model the server holds: the SPI contract at runtimeStatus (the router assumes none)."""

    @abstractmethod
    async def close(self) -> None:
        """Release clients (and stop a server this adapter launched)."""
