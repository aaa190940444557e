from mesh.gen import model_mesh_pb2 as _model_mesh_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainModelRequest(_message.Message):
    __slots__ = ("modelId",)
    MODELID_FIELD_NUMBER: _ClassVar[int]
    modelId: str
    def __init__(self, modelId: _Optional[str] = ...) -> None: ...

class ExplainModelResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelEntry(_message.Message):
    __slots__ = ("modelId", "modelInfo", "status", "sizeInBytes", "lastUsedTime", "requiredLabels", "pinned", "minCopies", "preferredLabels")
    MODELID_FIELD_NUMBER: _ClassVar[int]
    MODELINFO_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZEINBYTES_FIELD_NUMBER: _ClassVar[int]
    LASTUSEDTIME_FIELD_NUMBER: _ClassVar[int]
    REQUIREDLABELS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MINCOPIES_FIELD_NUMBER: _ClassVar[int]
    PREFERREDLABELS_FIELD_NUMBER: _ClassVar[int]
    modelId: str
    modelInfo: _model_mesh_pb2.ModelInfo
    status: _model_mesh_pb2.ModelStatusInfo
    sizeInBytes: int
    lastUsedTime: int
    requiredLabels: _containers.RepeatedScalarFieldContainer[str]
    pinned: bool
    minCopies: int
    preferredLabels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, modelId: _Optional[str] = ..., modelInfo: _Optional[_Union[_model_mesh_pb2.ModelInfo, _Mapping]] = ..., status: _Optional[_Union[_model_mesh_pb2.ModelStatusInfo, _Mapping]] = ..., sizeInBytes: _Optional[int] = ..., lastUsedTime: _Optional[int] = ..., requiredLabels: _Optional[_Iterable[str]] = ..., pinned: _Optional[bool] = ..., minCopies: _Optional[int] = ..., preferredLabels: _Optional[_Iterable[str]] = ...) -> None: ...

class VModelEntry(_message.Message):
    __slots__ = ("vModelId", "status")
    VMODELID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    vModelId: str
    status: _model_mesh_pb2.VModelStatusInfo
    def __init__(self, vModelId: _Optional[str] = ..., status: _Optional[_Union[_model_mesh_pb2.VModelStatusInfo, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "vmodels")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelEntry]
    vmodels: _containers.RepeatedCompositeFieldContainer[VModelEntry]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelEntry, _Mapping]]] = ..., vmodels: _Optional[_Iterable[_Union[VModelEntry, _Mapping]]] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceEntry(_message.Message):
    __slots__ = ("instanceId", "endpoint", "capacityInBytes", "usedInBytes", "modelTypes", "models", "loadsInFlight", "startedTime", "reachable", "labels", "deviceCapacityInBytes", "deviceUsedInBytes", "draining")
    INSTANCEID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CAPACITYINBYTES_FIELD_NUMBER: _ClassVar[int]
    USEDINBYTES_FIELD_NUMBER: _ClassVar[int]
    MODELTYPES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADSINFLIGHT_FIELD_NUMBER: _ClassVar[int]
    STARTEDTIME_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEVICECAPACITYINBYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICEUSEDINBYTES_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    instanceId: str
    endpoint: str
    capacityInBytes: int
    usedInBytes: int
    modelTypes: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    loadsInFlight: int
    startedTime: int
    reachable: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    deviceCapacityInBytes: int
    deviceUsedInBytes: int
    draining: bool
    def __init__(self, instanceId: _Optional[str] = ..., endpoint: _Optional[str] = ..., capacityInBytes: _Optional[int] = ..., usedInBytes: _Optional[int] = ..., modelTypes: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., loadsInFlight: _Optional[int] = ..., startedTime: _Optional[int] = ..., reachable: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ..., deviceCapacityInBytes: _Optional[int] = ..., deviceUsedInBytes: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceEntry]
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceEntry, _Mapping]]] = ...) -> None: ...
