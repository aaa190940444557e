"""The states a model and a vmodel report (ModelMesh's ModelStatusInfo and VModelStatusInfo, by name and order)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ModelState(enum.Enum):
    # Names and order follow mmesh.ModelStatusInfo.ModelStatus.
    NOT_FOUND = 0
    NOT_LOADED = 1
    LOADING = 2
    LOADED = 3
    LOADING_FAILED = 4


class VModelState(enum.Enum):
    NOT_FOUND = 0
    DEFINED = 1
    TRANSITIONING = 2
    TRANSITION_FAILED = 3


@dataclass(frozen=True)
class CopyStatus:
    instance_id: str
    state: ModelState
    time_ms: int


@dataclass(frozen=True)
class ModelStatus:
    state: ModelState
    errors: list[str] = field(default_factory=list)
    copies: list[CopyStatus] = field(default_factory=list)


@dataclass(frozen=True)
class VModelStatus:
    state: VModelState
    active_model_id: str = ""
    target_model_id: str = ""
    active: ModelStatus = ModelStatus(ModelState.NOT_FOUND)
    target: ModelStatus = ModelStatus(ModelState.NOT_FOUND)
    owner: str = ""
    copies_wanted: int = 0
    """While moving: the loaded copies the target must have before the vmodel switches (0 when not moving)."""
