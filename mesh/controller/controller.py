"""The controller's loop: informers wake it, it reconciles (reconcile.py), and it looks again soon while models
are on their way, else at the resync interval."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping

from kubernetes import client, config

from mesh.controller.kube import Informer, Kube
from mesh.controller.leader import LeaderElection, LeaseTiming
from mesh.controller.meshapi import MeshClient
from mesh.controller.reconcile import Reconciler, Snapshot
from mesh.controller.settings import ControllerSettings

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
LEASE_NAME = "mesh-controller"


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """A client for the cluster: this kubeconfig, else the pod's service account, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


class Controller:
    """Runs until stop(): one thread per informer, and the reconciling loop in run()'s caller."""

    def __init__(self, settings: ControllerSettings, api: client.ApiClient) -> None:
        self.settings = settings
        self._kube = Kube(api, settings.watch_namespace, settings.request_timeout_seconds)
        self._mesh = MeshClient(settings.mesh_address, settings.request_timeout_seconds)
        self._reconciler = Reconciler(settings, self._kube, self._mesh)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._informers = {
            name: Informer(self._kube, kind, self._wake.set, settings.watch_timeout_seconds)
            for name, kind in self._kube.kinds().items()
        }
        self.election = election(settings, api) if settings.leader_election else None
        self.passes = 0
        """Reconciliations done so far (for tests and logs)."""

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Reconcile while leading (always, without leader election) until stop(); then hand the Lease back and
        stop the informers (each within a bounded wait). Informers run on every replica: a new leader's picture is
        complete the moment it takes over."""
        if self.election is not None:
            self.election.start()
        for informer in self._informers.values():
            informer.start()
        try:
            if self._wait_synced():
                self._loop()
        finally:
            if self.election is not None:
                self.election.stop()
            for informer in self._informers.values():
                informer.stop()
            for name, informer in self._informers.items():
                if not informer.join(STOP_TIMEOUT_S):
                    log.warning("the %s informer did not stop within %.0f s", name, STOP_TIMEOUT_S)
            self._mesh.close()

    def _wait_synced(self) -> bool:
        """Wait until every informer has listed once: a pass on a partial picture could delete what exists."""
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        for name, informer in self._informers.items():
            while not informer.synced.wait(0.1):
                if self._stop.is_set():
                    return False
                if time.monotonic() > deadline:
                    log.warning("still listing %s after %.0f s (is the API server reachable?)", name, SYNC_TIMEOUT_S)
                    deadline = time.monotonic() + SYNC_TIMEOUT_S
        log.info("controller started: %s", ", ".join(f"{len(i.snapshot())} {n}" for n, i in self._informers.items()))
        return True

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            self._wake.wait(delay)
            if self._stop.is_set():
                break
            # Let a burst of events (a kubectl apply of many objects) settle into one pass.
            self._stop.wait(self.settings.debounce_seconds)
            self._wake.clear()
            if not self.leading():
                delay = self.settings.lease_seconds / 10  # look again soon: take over at once when it is ours
                continue
            try:
                unsettled = self._reconciler.reconcile(self._snapshot())
            except Exception:
                log.exception("reconciliation failed; trying again")
                unsettled = True
            self.passes += 1
            delay = self.settings.poll_seconds if unsettled else self.settings.resync_seconds

    def leading(self) -> bool:
        return self.election is None or self.election.is_leader()

    def _snapshot(self) -> Snapshot:
        i = self._informers
        return Snapshot(
            isvcs=i["isvc"].snapshot(),
            runtimes=i["sr"].snapshot(),
            cluster_runtimes=i["csr"].snapshot(),
            deployments=i["deployment"].snapshot(),
            services=i["service"].snapshot(),
        )


def election(
    settings: ControllerSettings, api: client.ApiClient, environ: Mapping[str, str] = os.environ
) -> LeaderElection:
    """The controller's candidacy: its pod's name (else host name and a random suffix) for the Lease."""
    namespace = settings.leader_election_namespace or environ.get("POD_NAMESPACE") or "mesh-system"
    identity = environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    lease = settings.lease_seconds
    timing = LeaseTiming(lease, lease * 2 / 3, lease / 7.5)
    return LeaderElection(
        api, namespace, LEASE_NAME, identity, timing, request_timeout_s=settings.request_timeout_seconds
    )


class ConfigError(Exception):
    """The controller cannot start as configured; the message says what to set."""


def own_image(api: client.ApiClient, environ: Mapping[str, str] = os.environ) -> str:
    """The image of the pod this process runs in (its first container), from POD_NAMESPACE and POD_NAME."""
    namespace, name = environ.get("POD_NAMESPACE"), environ.get("POD_NAME")
    if not namespace or not name:
        raise ConfigError(
            "no image for runtime pods: set --image or MESH_CONTROLLER_IMAGE (in a pod: POD_NAME and "
            "POD_NAMESPACE, and the controller reads its own)"
        )
    pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace, _request_timeout=SYNC_TIMEOUT_S)
    return pod.spec.containers[0].image


def run(settings: ControllerSettings, kubeconfig: str | None = None, context: str | None = None) -> None:
    """`mesh controller`: run until SIGTERM or SIGINT."""
    import signal

    api = api_client(kubeconfig, context)
    if not settings.image:
        settings = dataclasses.replace(settings, image=own_image(api))
        log.info("runtime pods run this controller's image, %s", settings.image)
    controller = Controller(settings, api)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop())
    log.info("watching InferenceServices for mesh at %s", settings.mesh_address)
    controller.run()
