"""One reconciliation: from what the informers hold and what mesh reports, make the cluster and mesh agree with
the InferenceServices. Level-based: every pass recomputes the whole wanted state and changes only what differs,
so running it twice, or after a restart, writes nothing the first run got right.

The steps, in order:
1. each ModelMesh InferenceService: its predictor, its runtime (selection.py) and its registration
   (registration.py), or why it cannot be served;
2. workloads: a Deployment and a Service per runtime in use per namespace (workloads.py); those of runtimes no
   longer used are removed once unused for the grace period (unless scale-to-zero is off);
3. mesh: each predictor's vmodel is pointed at its model once a runtime instance serving its type is up; vmodels
   owned by InferenceServices that are gone are deleted;
4. status: each InferenceService's status is written when it differs from what it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from mesh.controller import resources as r
from mesh.controller import status as st
from mesh.controller.kube import Key, Kube, key_of
from mesh.controller.meshapi import MeshClient, MeshState
from mesh.controller.registration import ModelSpec, claim_of, model_spec, owner_namespace
from mesh.controller.selection import NoRuntime, select_runtime
from mesh.controller.settings import ControllerSettings
from mesh.controller.workloads import (
    RUNTIME_KIND_LABEL,
    RUNTIME_LABEL,
    SPEC_HASH,
    Workload,
    WorkloadError,
    build,
    workload_name,
)

log = logging.getLogger(__name__)

RUNTIME_UNHEALTHY = "RuntimeUnhealthy"
VMODEL_TAKEN = "InvalidPredictorSpec"
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)


@dataclass
class Entry:
    """One ModelMesh InferenceService in this pass."""

    isvc: dict[str, Any]
    runtime: r.Runtime | None = None
    spec: ModelSpec | None = None
    workload: Workload | None = None
    problem: tuple[str, str] | None = None
    """(KServe failure reason, message) when it cannot be served as it is."""
    model_status: dict[str, Any] = field(default_factory=st.pending)
    waiting_for: str = ""

    @property
    def key(self) -> Key:
        return key_of(self.isvc)


@dataclass(frozen=True)
class Snapshot:
    """What the informers held when the pass began."""

    isvcs: list[dict[str, Any]]
    runtimes: list[dict[str, Any]]
    cluster_runtimes: list[dict[str, Any]]
    deployments: list[dict[str, Any]]
    services: list[dict[str, Any]]


class Reconciler:
    def __init__(self, settings: ControllerSettings, kube: Kube, mesh: MeshClient) -> None:
        self.settings = settings
        self.kube = kube
        self.mesh = mesh
        # (kind, namespace, name) of workloads no InferenceService uses → when this controller first saw that.
        self._unused_since: dict[tuple[str, str, str], float] = {}

    def reconcile(self, snapshot: Snapshot) -> bool:
        """One pass; True when something is still on its way (loading, starting) and worth a look again soon."""
        entries = self._entries(snapshot)
        self._workloads(entries, snapshot)
        mesh_state = self._mesh_state()
        if mesh_state is not None:
            self._register(entries, mesh_state, snapshot)
            self._sweep(entries, mesh_state)
        for entry in entries:
            # Without mesh's answer a model's state is unknown: the status it has stays (it may well be right).
            if mesh_state is not None or entry.problem is not None:
                self._write_status(entry)
        removal_pending = bool(self._unused_since)  # look again soon: remove them when their grace ends
        return mesh_state is None or removal_pending or not all(st.settled(e.model_status) for e in entries)

    # ---- 1. predictors and runtimes --------------------------------------------------------------------

    def _entries(self, snapshot: Snapshot) -> list[Entry]:
        by_namespace: dict[str, list[r.Runtime]] = {}
        for obj in snapshot.runtimes:
            runtime = r.parse_runtime(obj, r.SERVING_RUNTIME)
            by_namespace.setdefault(runtime.namespace, []).append(runtime)
        cluster = [r.parse_runtime(obj, r.CLUSTER_SERVING_RUNTIME) for obj in snapshot.cluster_runtimes]
        entries = []
        for isvc in snapshot.isvcs:
            if not r.is_model_mesh(isvc) or r.metadata(isvc).get("deletionTimestamp"):
                continue
            entry = Entry(isvc)
            entries.append(entry)
            try:
                predictor = r.parse_predictor(isvc)
                chosen = select_runtime(predictor, by_namespace.get(predictor.namespace, []), cluster)
                if isinstance(chosen, NoRuntime):
                    entry.problem = (chosen.reason, chosen.message)
                    continue
                entry.runtime = chosen
                labels = chosen.instance_labels(predictor.namespace) if self.settings.isolate_runtimes else ()
                entry.spec = model_spec(predictor, labels, self.settings.vmodel_id)
            except r.SpecError as exc:
                entry.problem = (st.INVALID_PREDICTOR_SPEC, str(exc))
        self._build_workloads(entries)
        return entries

    def _build_workloads(self, entries: list[Entry]) -> None:
        """Each entry's runtime workload, mounting every persistent volume claim its namespace's models of that
        runtime are on."""
        claims: dict[tuple[str, str], set[str]] = {}
        for entry in entries:
            if entry.runtime is not None and entry.spec is not None and entry.problem is None:
                claim = claim_of(entry.spec.path)
                if claim is not None:
                    claims.setdefault((entry.key[0], entry.runtime.ref), set()).add(claim)
        for entry in entries:
            if entry.runtime is None or entry.spec is None or entry.problem is not None:
                continue
            namespace = entry.key[0]
            try:
                used = tuple(sorted(claims.get((namespace, entry.runtime.ref), ())))
                entry.workload = build(entry.runtime, namespace, self.settings, used)
            except WorkloadError as exc:
                entry.problem = (RUNTIME_UNHEALTHY, str(exc))

    # ---- 2. workloads ------------------------------------------------------------------------------------

    def _workloads(self, entries: list[Entry], snapshot: Snapshot) -> None:
        wanted = {(e.workload.namespace, e.workload.name): e.workload for e in entries if e.workload and not e.problem}
        if not self.settings.scale_to_zero:
            wanted.update(self._kept(snapshot, wanted))
        for kind, current in (("Deployment", snapshot.deployments), ("Service", snapshot.services)):
            existing = {key_of(obj): obj for obj in current}
            for key, workload in wanted.items():
                desired = workload.deployment if kind == "Deployment" else workload.service
                self._apply(kind, desired, existing.get(key))
            unused = existing.keys() - wanted.keys()
            for key in unused:
                if self._grace_over(kind, key):
                    self._write(
                        f"delete {kind} {key[0]}/{key[1]} (no InferenceService used its runtime for "
                        f"{self.settings.scale_to_zero_grace_seconds:.0f} s)",
                        self.kube.delete,
                        kind,
                        *key,
                    )
            for gone in [k for k in self._unused_since if k[0] == kind and k[1:] not in unused]:
                del self._unused_since[gone]  # used again, or removed

    def _grace_over(self, kind: str, key: Key) -> bool:
        """Whether an unused workload has been unused for the grace period (counted from this call's first)."""
        first_seen = self._unused_since.setdefault((kind, *key), time.monotonic())
        return time.monotonic() - first_seen >= self.settings.scale_to_zero_grace_seconds

    def _kept(self, snapshot: Snapshot, wanted: dict[Key, Workload]) -> dict[Key, Workload]:
        """With scale-to-zero off: the workloads that exist and whose runtime still does, kept up to date."""
        namespaced = {key_of(o): o for o in snapshot.runtimes}
        cluster = {key_of(o)[1]: o for o in snapshot.cluster_runtimes}
        kept = {}
        for deployment in snapshot.deployments:
            key = key_of(deployment)
            labels = r.metadata(deployment).get("labels") or {}
            name, kind = labels.get(RUNTIME_LABEL, ""), labels.get(RUNTIME_KIND_LABEL)
            if key in wanted:
                continue
            obj = namespaced.get((key[0], name)) if kind == r.SERVING_RUNTIME else cluster.get(name)
            if obj is None or workload_name(name) != key[1]:
                continue
            try:
                kept[key] = build(r.parse_runtime(obj, kind), key[0], self.settings)
            except WorkloadError:
                continue
        return kept

    def _apply(self, kind: str, desired: dict[str, Any], current: dict[str, Any] | None) -> None:
        namespace, name = key_of(desired)
        if current is None:
            self._write(f"create {kind} {namespace}/{name}", self.kube.create, desired)
            return
        # The API server adds defaults to what it stores: compare what was asked for, by its hash.
        current_hash = (r.metadata(current).get("annotations") or {}).get(SPEC_HASH)
        if current_hash != desired["metadata"]["annotations"][SPEC_HASH]:
            self._write(f"update {kind} {namespace}/{name}", self.kube.replace, desired, current)

    def _write(self, what: str, call: Callable[..., Any], *args: Any) -> bool:
        """One API write; a failure is logged and left to the next pass (which sees the state afresh)."""
        try:
            call(*args)
        except Exception as exc:
            code = getattr(exc, "status", None)
            if code == 409:  # our copy is behind: the next pass, with the watch caught up, decides again
                log.info("%s: conflict, trying again on the next pass", what)
            else:
                log.warning("%s failed: %s", what, getattr(exc, "reason", None) or exc)
            return False
        log.info("%s", what)
        return True

    # ---- 3. mesh -----------------------------------------------------------------------------------------

    def _mesh_state(self) -> MeshState | None:
        try:
            return self.mesh.state()
        except grpc.RpcError as exc:
            log.warning(
                "mesh at %s did not answer (%s); registrations wait",
                self.settings.mesh_address,
                exc.code().name,  # type: ignore[attr-defined]
            )
            return None

    def _register(self, entries: list[Entry], mesh: MeshState, snapshot: Snapshot) -> None:
        ready = {key_of(d): (d.get("status") or {}).get("readyReplicas") or 0 for d in snapshot.deployments}
        for entry in entries:
            spec = entry.spec
            if spec is None or entry.problem is not None:
                continue
            vmodel = mesh.vmodels.get(spec.vmodel_id)
            if vmodel is not None and vmodel.owner and vmodel.owner != spec.owner:
                entry.problem = (
                    VMODEL_TAKEN,
                    f"the name '{spec.vmodel_id}' is served for namespace '{owner_namespace(vmodel.owner)}' "
                    "already (vmodel ids are bare names: InferenceService names must differ across namespaces, "
                    "unless the controller runs with MESH_CONTROLLER_VMODEL_IDS=namespaced)",
                )
                continue
            unchanged = mesh.kept.get(spec.model_id) == (spec.pinned, spec.min_copies)
            if vmodel is not None and vmodel.targetModelId == spec.model_id and unchanged:
                entry.model_status = st.from_vmodel(vmodel)
                continue
            if not mesh.serves(spec.model_type, spec.labels):
                workload = entry.workload
                assert workload is not None
                replicas = ready.get((workload.namespace, workload.name), 0)
                entry.waiting_for = (
                    f"waiting for a runtime instance serving model type '{spec.model_type}' (Deployment "
                    f"{workload.namespace}/{workload.name}: {replicas} ready)"
                )
                continue
            try:
                status = self.mesh.set_vmodel(spec)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                details = f"{code.name}: {exc.details()}"  # type: ignore[attr-defined]
                log.warning("registering %s/%s as %s failed: %s", *entry.key, spec.model_id, details)
                if code in TRANSIENT:  # stay Pending, say why, and try again soon
                    entry.waiting_for = f"registration with mesh failed ({details})"
                else:
                    entry.problem = (st.INVALID_PREDICTOR_SPEC, f"mesh refused the model: {details}")
                continue
            log.info(
                "registered InferenceService %s/%s as model %s (type %s)", *entry.key, spec.model_id, spec.model_type
            )
            entry.model_status = st.from_vmodel(status)

    def _sweep(self, entries: list[Entry], mesh: MeshState) -> None:
        """Delete the vmodels of InferenceServices that are gone (or no longer ModelMesh): their models go too."""
        present = {
            (namespace, self.settings.vmodel_id(namespace, name)) for namespace, name in (e.key for e in entries)
        }
        for vmodel_id, vmodel in mesh.vmodels.items():
            namespace = owner_namespace(vmodel.owner)
            if namespace is None or (namespace, vmodel_id) in present:
                continue
            if self.settings.watch_namespace and namespace != self.settings.watch_namespace:
                continue  # another controller's
            try:
                self.mesh.delete_vmodel(vmodel_id, vmodel.owner)
            except grpc.RpcError as exc:
                log.warning("unregistering %s/%s failed: %s", namespace, vmodel_id, exc)
                continue
            log.info("unregistered InferenceService %s/%s (model %s)", namespace, vmodel_id, vmodel.targetModelId)

    # ---- 4. status ---------------------------------------------------------------------------------------

    def _write_status(self, entry: Entry) -> None:
        if entry.problem is not None:
            entry.model_status = st.invalid(*entry.problem)
        urls = None
        if entry.workload is not None:
            host = f"{entry.workload.name}.{entry.workload.namespace}"
            urls = st.Urls(f"grpc://{host}:8033", f"http://{host}:8008")
        previous = entry.isvc.get("status") or {}
        status = st.isvc_status(
            entry.model_status, urls, r.metadata(entry.isvc).get("generation"), previous, entry.waiting_for
        )
        if status != previous:
            namespace, name = entry.key
            self._write(
                f"status of InferenceService {namespace}/{name}: {status['modelStatus']['states']['activeModelState']}",
                self.kube.write_isvc_status,
                namespace,
                name,
                status,
            )
