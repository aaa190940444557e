"""The model registry: registration of models and vmodels, what a request's name resolves to, and statuses.

ModelRegistry is the management API's library core (register, unregister, load now, vmodels and their
transitions) and the data path's name lookup (resolve). Records live in the store (models/, vmodels/); where
copies are is placement's, asked through the PlacementManager façade.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging

from mesh.errors import AlreadyExists, Conflict, MeshError, ModelNotFound
from mesh.naming import LocalNames
from mesh.placement.manager import PlacementManager
from mesh.placement.records import CopyState, Kind, ModelRecord, VModelRecord, now_ms
from mesh.placement.store import UNCHANGED
from mesh.registry.ids import check_id, check_path
from mesh.registry.status import CopyStatus, ModelState, ModelStatus, VModelState, VModelStatus
from mesh.registry.transitions import VModelTransitions

log = logging.getLogger(__name__)


class Naming(enum.Enum):
    """Where a request's name came from, which decides what it may name."""

    BODY = "model_name"
    """The request's own model name: a vmodel id if one exists, else a model id."""
    MODEL_HEADER = "mm-model-id"
    """The mm-model-id header: a model id only."""
    VMODEL_HEADER = "mm-vmodel-id"
    """The mm-vmodel-id header: a vmodel id only."""


_WHAT_NAMES = {Naming.BODY: "model name", Naming.MODEL_HEADER: "model id", Naming.VMODEL_HEADER: "vmodel id"}


class ModelRegistry:
    """What is registered: models and vmodels (records in the store), what a request's name means, and each one's
    status. Registration is idempotent for the same spec; a vmodel moves to a new target only once it has loaded.
    Loading and unloading copies is placement's, asked through the façade."""

    def __init__(self, manager: PlacementManager) -> None:
        self._manager = manager
        self._view = manager.view
        self._store = manager.store
        self._background: set[asyncio.Task[object]] = set()
        self.names = LocalNames(manager.settings.namespace)
        self._namespaced = bool(manager.settings.namespace)
        self._transitions = VModelTransitions(manager, self._delete_if_unused, manager.settings.last_used_flush_seconds)

    # ---- lookups for the data path -------------------------------------------------------------------

    def resolve(self, name: str, naming: Naming = Naming.BODY) -> str:
        """The concrete model id a request names. No I/O: on the data path."""
        if naming is not Naming.MODEL_HEADER:
            vmodels = self._view.vmodels
            # A router serving no namespace takes names exactly: one dict lookup, as before namespaces.
            alias = self.names.lookup(vmodels, name) if self._namespaced else vmodels.get(name)
            if alias is not None:
                return alias.record.active_model_id
            if naming is Naming.VMODEL_HEADER:
                raise ModelNotFound(name, "vmodel")
        if name in self._view.models:
            return name
        raise ModelNotFound(name)

    async def resolve_fresh(self, name: str, naming: Naming = Naming.BODY) -> str:
        """resolve(), reading the store when the view does not know the name yet.

        Another router may have registered it a moment ago, and its watch event may still be on the way; asking
        the store costs a round trip only for names the view does not know, never on the hot path.
        """
        try:
            return self.resolve(name, naming)
        except ModelNotFound:
            # No registration can have this name (and an error echoing 64 MiB of it could not be sent).
            check_id(name, _WHAT_NAMES[naming])
            if naming is not Naming.MODEL_HEADER:
                for vmodel_id in self.names.candidates(name):
                    await self._view.refresh(Kind.VMODEL, vmodel_id)
            if naming is not Naming.VMODEL_HEADER:
                await self._view.refresh(Kind.MODEL, name)
            return self.resolve(name, naming)

    def models(self) -> list[ModelRecord]:
        return [v.record for v in self._view.models.values()]

    def vmodels(self) -> list[VModelRecord]:
        return [v.record for v in self._view.vmodels.values()]

    def size_bytes(self, model_id: str) -> int:
        """The best size known: measured after a load, predicted before (0 when never placed)."""
        placement = self._view.placements.get(model_id)
        return placement.record.size_bytes if placement else 0

    def last_used_ms(self, model_id: str) -> int:
        return self._manager.usage.last_used_ms(model_id)

    # ---- models --------------------------------------------------------------------------------------

    async def register(self, model: ModelRecord, load_now: bool = False, sync: bool = False) -> ModelStatus:
        """Add a model; the same spec again is a no-op (but for pinning, which it sets), a different spec under the
        same id is refused."""
        check_id(model.model_id, "modelId")
        check_id(model.model_type, f"modelInfo.type of model '{model.model_id}'")
        check_path(model.path, f"modelInfo.path of model '{model.model_id}'")
        stamped = dataclasses.replace(model, registered_ms=model.registered_ms or now_ms())

        def change(current: ModelRecord | None) -> object:
            if current is None:
                return stamped
            if not current.same_spec(stamped):
                raise AlreadyExists(
                    f"model '{model.model_id}' is already registered with type '{current.model_type}' and path "
                    f"'{current.path}'; unregister it first or use a new id"
                )
            # How it is kept is not the model's spec: registering it again sets it anew.
            return current.kept_as(model) if current.keeping() != model.keeping() else UNCHANGED

        await self._store.update(Kind.MODEL, model.model_id, change)
        if load_now:
            return self._with_unrecorded(model.model_id, await self._load(model.model_id, sync))
        return self.status(model.model_id)

    async def unregister(self, model_id: str) -> None:
        """Remove a model and unload its copies; unknown ids are a no-op (as in ModelMesh)."""
        users = [v.vmodel_id for v in self.vmodels() if model_id in (v.active_model_id, v.target_model_id)]
        if users:
            raise Conflict(f"model '{model_id}' is still used by vmodel(s) {', '.join(sorted(users))}")
        if model_id not in self._view.models:
            return
        await self._store.update(Kind.MODEL, model_id, lambda _: None)
        placement = self._view.placements.get(model_id)
        for instance_id in list(placement.record.copies) if placement else []:
            await self._manager.unload_copy(model_id, instance_id)
        await self._store.update(Kind.PLACEMENT, model_id, lambda _: None)
        await self._manager.decisions.forget(model_id)
        await self._manager.routes_published()
        log.info("unregistered model %s", model_id)

    async def ensure_loaded(self, model_id: str, sync: bool) -> ModelStatus:
        if model_id not in self._view.models:
            check_id(model_id, "modelId")
            raise ModelNotFound(model_id)
        return self._with_unrecorded(model_id, await self._load(model_id, sync))

    async def _load(self, model_id: str, sync: bool) -> str:
        """Load now; with `sync`, wait, and say why it did not load ("" when it did, or it is not waited for)."""
        if sync:
            try:
                await self._manager.ensure_loaded(model_id)
            except MeshError as exc:
                return exc.message
            return ""
        self._spawn(self._manager.ensure_loaded(model_id))
        return ""

    def _with_unrecorded(self, model_id: str, error: str) -> ModelStatus:
        """The model's status, with the error of a synchronous load that no instance recorded (nowhere could hold
        it: no instance of its type, none with its labels, none large enough), so the caller learns why."""
        status = self.status(model_id)
        if not error or status.state is not ModelState.NOT_LOADED:
            return status
        return ModelStatus(ModelState.LOADING_FAILED, [*status.errors, error], status.copies)

    def status(self, model_id: str) -> ModelStatus:
        if model_id not in self._view.models:
            return ModelStatus(ModelState.NOT_FOUND)
        placement = self._view.placements.get(model_id)
        copies: list[CopyStatus] = []
        errors: list[str] = []
        if placement:
            for instance_id, copy in placement.record.copies.items():
                if self._manager.counts(instance_id, copy):
                    state = ModelState.LOADED if copy.state is CopyState.LOADED else ModelState.LOADING
                    copies.append(CopyStatus(instance_id, state, copy.since_ms))
            for instance_id, failure in placement.record.failures.items():
                copies.append(CopyStatus(instance_id, ModelState.LOADING_FAILED, failure.time_ms))
                errors.append(f"{instance_id}: {failure.message}")
        copies.sort(key=lambda c: c.time_ms, reverse=True)
        states = {c.state for c in copies}
        if ModelState.LOADED in states:
            state = ModelState.LOADED
        elif ModelState.LOADING in states or self._manager.loading(model_id):
            state = ModelState.LOADING
        elif ModelState.LOADING_FAILED in states:
            state = ModelState.LOADING_FAILED
        else:
            state = ModelState.NOT_LOADED
        return ModelStatus(state, errors, copies)

    # ---- vmodels -------------------------------------------------------------------------------------

    def _registers(self, model_id: str, model: ModelRecord) -> bool:
        """Whether a setVModel that carries a model registers it: when it is new, or when it is registered with
        the same spec but kept otherwise (pinned, minimum copies), which the call then updates. Another spec
        under the id is left as it is (the call points the vmodel at the registered model)."""
        known = self._view.models.get(model_id)
        if known is None:
            return True
        current = known.record
        return current.same_spec(model) and current.keeping() != model.keeping()

    async def set_vmodel(
        self,
        vmodel_id: str,
        target_model_id: str,
        *,
        model: ModelRecord | None = None,
        update_only: bool = False,
        auto_delete: bool = False,
        load_now: bool = False,
        force: bool = False,
        sync: bool = False,
        expected_target: str = "",
        owner: str = "",
    ) -> VModelStatus:
        """Point a vmodel at a model; the old target keeps serving until the new one has loaded."""
        check_id(vmodel_id, "vModelId")
        check_id(target_model_id, "targetModelId")
        if model is not None and self._registers(target_model_id, model):
            await self.register(dataclasses.replace(model, model_id=target_model_id, registered_ms=0))
        if target_model_id not in self._view.models:
            raise ModelNotFound(target_model_id)

        def change(current: VModelRecord | None) -> object:
            if current is None:
                if update_only:
                    raise ModelNotFound(vmodel_id, "vmodel")
                return VModelRecord(vmodel_id, target_model_id, target_model_id, owner, auto_delete)
            if owner and current.owner and owner != current.owner:
                raise Conflict(f"vmodel '{vmodel_id}' belongs to owner '{current.owner}', not '{owner}'")
            if expected_target and current.target_model_id != expected_target:
                raise Conflict(
                    f"vmodel '{vmodel_id}' targets '{current.target_model_id}', not the expected '{expected_target}'"
                )
            if current.target_model_id == target_model_id and not current.failed:
                return UNCHANGED
            active = target_model_id if force else current.active_model_id
            wanted = self._transitions.copies_wanted(active)
            return VModelRecord(vmodel_id, active, target_model_id, current.owner or owner, auto_delete, False, wanted)

        record: VModelRecord = await self._store.update(Kind.VMODEL, vmodel_id, change)
        if record.active_model_id != record.target_model_id:
            move = self._transitions.drive(vmodel_id)
            if sync:
                await asyncio.shield(move)  # a caller that gives up leaves the move running
        elif load_now:
            loading = self._load_quietly(vmodel_id, record.target_model_id)
            if sync:
                await loading
            else:
                self._spawn(loading)
        await self._manager.routes_published()
        return self.vmodel_status(vmodel_id)

    async def _load_quietly(self, vmodel_id: str, model_id: str) -> None:
        """Load a vmodel's model now (setVModel's loadNow); a failure shows in the model's status."""
        try:
            await self._manager.ensure_loaded(model_id)
        except MeshError as exc:
            log.warning("vmodel %s: model %s did not load: %s", vmodel_id, model_id, exc.message)

    async def delete_vmodel(self, vmodel_id: str, owner: str = "") -> None:
        existing = self._view.vmodels.get(vmodel_id)
        if existing is None:
            return
        record = existing.record
        if owner and record.owner and owner != record.owner:
            raise Conflict(f"vmodel '{vmodel_id}' belongs to owner '{record.owner}', not '{owner}'")
        await self._store.update(Kind.VMODEL, vmodel_id, lambda _: None)
        await self._manager.routes_published()
        if record.auto_delete:
            for model_id in {record.active_model_id, record.target_model_id}:
                await self._delete_if_unused(model_id)

    async def _delete_if_unused(self, model_id: str) -> None:
        try:
            await self.unregister(model_id)
        except Conflict:
            pass  # another vmodel still uses it

    def vmodel_status(self, vmodel_id: str, owner: str = "") -> VModelStatus:
        existing = self._view.vmodels.get(vmodel_id)
        if existing is None or (owner and existing.record.owner and owner != existing.record.owner):
            return VModelStatus(VModelState.NOT_FOUND)
        record = existing.record
        if record.active_model_id == record.target_model_id:
            state = VModelState.DEFINED
        else:
            state = VModelState.TRANSITION_FAILED if record.failed else VModelState.TRANSITIONING
        return VModelStatus(
            state,
            record.active_model_id,
            record.target_model_id,
            self.status(record.active_model_id),
            self.status(record.target_model_id),
            record.owner,
            record.copies_wanted if state is not VModelState.DEFINED else 0,
        )

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: failures are recorded

    def start(self) -> None:
        """Drive the vmodel moves under way in the store (another router's too, should it die) from now on."""
        self._transitions.start()

    async def resume_moves(self) -> None:
        """Drive, now, every vmodel move under way that this router is not driving (start() does it periodically)."""
        await self._transitions.resume()

    async def close(self) -> None:
        await self._transitions.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
