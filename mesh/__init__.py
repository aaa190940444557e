"""mesh: a multi-model serving router in the style of KServe ModelMesh."""

__version__ = "0.1.0"

import os as _os

# mesh starts runtimes and model servers with fork+exec. gRPC's fork handlers are for fork without exec, and when
# another thread is inside gRPC they print a line to stderr on every fork (breaking --log-format json). Off, unless
# whoever runs mesh set it.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
