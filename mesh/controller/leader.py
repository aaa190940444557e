"""Leader election on a coordination.k8s.io Lease, so the controller can run as several replicas: one reconciles,
the others wait to take over. The rules are client-go's leaderelection, in small:

- the leader renews the Lease every `renew_seconds`; it stops acting as leader (is_leader() turns False) once it
  has not renewed for `renew_deadline_seconds`, which is shorter than the lease, so it has stopped before anyone
  else may start;
- a candidate takes the Lease only when its record (holder and renew time) has not changed for
  `lease_seconds` as this candidate measured it on its own monotonic clock: no clocks are compared across pods;
- every write is a replace at the resourceVersion read, so two candidates taking an expired Lease at once cannot
  both win (the API server answers the second with 409 Conflict);
- a leader that stops hands the Lease back (an empty holder), so the next one takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    renew_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("leader election needs 0 < renew_seconds < renew_deadline_seconds < lease_seconds")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] = time.monotonic,
        request_timeout_s: float = 5.0,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self._api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self._timing = timing
        self._clock = clock
        self._timeout = request_timeout_s
        self._renewed_at: float | None = None  # when this candidate last held the Lease (its clock)
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last read, and when it changed
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what the controller asks ------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """This replica holds the Lease and renewed it within the renew deadline."""
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self._timing.renew_deadline_seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trying, and hand the Lease back if this replica holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout * 2)
        if self._renewed_at is not None:
            self._release()

    # ---- one round ---------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt: take the Lease if it is free or expired, renew it if held; whether this replica holds it."""
        try:
            lease = self._read()
            if lease is None:
                held = self._create()
            else:
                held = self._take_or_renew(lease)
        except ApiException as exc:
            if exc.status != 409:  # a conflict is another candidate's write winning: not an error
                log.warning(
                    "leader election: the Lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason
                )
            held = False
        except Exception as exc:  # noqa: BLE001 - the API server unreachable: not leader until it answers
            log.warning("leader election: the Lease %s/%s: %s", self.namespace, self.name, exc)
            held = False
        if held:
            if self._renewed_at is None:
                log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
            self._renewed_at = self._clock()
        elif self._renewed_at is not None and not self.is_leader():
            log.warning("leader election: %s lost the Lease %s/%s", self.identity, self.namespace, self.name)
            self._renewed_at = None
        return held

    def _take_or_renew(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder and holder != self.identity and now - self._observed_at < self._timing.lease_seconds:
            return False  # held by another, renewed recently enough as this replica saw it
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        acquired = spec.get("acquireTime") if holder == self.identity else _now()
        lease["spec"] = self._spec(acquired, transitions)
        self._replace(lease)
        return True

    def _spec(self, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self._timing.lease_seconds),
            "acquireTime": acquire_time or _now(),
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }

    def _release(self) -> None:
        try:
            lease = self._read()
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "renewTime": _now()}
                self._replace(lease)
                log.info("leader election: %s handed the Lease back", self.identity)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("leader election: the Lease was not handed back (%s); it expires by itself", exc)
        self._renewed_at = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            self._stop.wait(self._timing.renew_seconds)

    # ---- the API -----------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        try:
            lease = self._leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._api.sanitize_for_serialization(lease)

    def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(None, 0),
        }
        self._leases.create_namespaced_lease(self.namespace, body, _request_timeout=self._timeout)
        return True

    def _replace(self, lease: dict[str, Any]) -> None:
        self._leases.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._timeout)
