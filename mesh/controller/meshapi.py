"""The controller's calls to mesh: the ModelMesh management API (setVModel, deleteVModel) and mesh's admin
listings (every vmodel with its status and owner, every runtime instance) in one round trip each."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.controller.registration import ModelSpec
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.management import management_channel


@dataclass(frozen=True)
class MeshState:
    vmodels: dict[str, mm.VModelStatusInfo]
    instances: list[admin.InstanceEntry]
    kept: dict[str, tuple[bool, int]] = field(default_factory=dict)
    """How each registered model is kept: (pinned, minimum copies)."""

    def serves(self, model_type: str, labels: tuple[str, ...] = ()) -> bool:
        """Whether a reachable runtime instance takes models of this type (one listing no types takes all) and
        carries every one of `labels`."""
        return any(
            i.reachable and (not i.modelTypes or model_type in i.modelTypes) and set(labels) <= set(i.labels)
            for i in self.instances
        )


class MeshClient:
    def __init__(self, address: str, timeout_s: float) -> None:
        self._channel = management_channel(address)
        self._mm = mm_grpc.ModelMeshStub(self._channel)
        self._admin = admin_grpc.MeshAdminStub(self._channel)
        self._timeout_s = timeout_s

    def state(self) -> MeshState:
        models = self._admin.ListModels(admin.ListModelsRequest(), timeout=self._timeout_s)
        instances = self._admin.ListInstances(admin.ListInstancesRequest(), timeout=self._timeout_s)
        return MeshState(
            {v.vModelId: v.status for v in models.vmodels},
            list(instances.instances),
            {m.modelId: (m.pinned, m.minCopies) for m in models.models},
        )

    def set_vmodel(self, spec: ModelSpec) -> mm.VModelStatusInfo:
        """Point the vmodel at the spec's model (registered here if new), loading it now; the previous model
        serves until this one has loaded, and is then removed."""
        request = mm.SetVModelRequest(
            vModelId=spec.vmodel_id,
            targetModelId=spec.model_id,
            modelInfo=mm.ModelInfo(type=spec.model_type, path=spec.path, key=spec.key),
            autoDeleteTargetModel=True,
            loadNow=True,
            owner=spec.owner,
            meshRequiredLabels=spec.labels,
            meshPinned=spec.pinned,
            meshMinCopies=spec.min_copies,
        )
        return self._mm.setVModel(request, timeout=self._timeout_s)

    def delete_vmodel(self, vmodel_id: str, owner: str) -> None:
        """Delete the vmodel; its models go with it (they were registered with autoDeleteTargetModel)."""
        self._mm.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner), timeout=self._timeout_s)

    def close(self) -> None:
        self._channel.close()
