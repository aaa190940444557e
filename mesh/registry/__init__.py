"""Models and vmodels: what is registered, what a request's name means, and each one's status."""

from mesh.registry.ids import MAX_ID_BYTES, MAX_PATH_BYTES, check_id, check_path
from mesh.registry.registry import ModelRegistry, Naming
from mesh.registry.status import CopyStatus, ModelState, ModelStatus, VModelState, VModelStatus

__all__ = [
    "MAX_ID_BYTES",
    "MAX_PATH_BYTES",
    "CopyStatus",
    "ModelRegistry",
    "ModelState",
    "ModelStatus",
    "Naming",
    "VModelState",
    "VModelStatus",
    "check_id",
    "check_path",
]
