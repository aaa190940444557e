"""Which runtime instances placement may use now, and how much each may hold, as this router has seen them.

An instance that did not answer a call is set aside for `unreachable_retry_seconds`, then tried again. One that ran
out of memory below the capacity it reports is weighed, until it restarts, as holding no more than it held then.
Both are this router's own observations, kept in memory: another router learns them from its own calls.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from mesh.placement.instances import RuntimeClients
from mesh.placement.records import CopyState, InstanceRecord
from mesh.placement.view import LocalView

log = logging.getLogger(__name__)


class InstanceHealth:
    def __init__(
        self, view: LocalView, clients: RuntimeClients, retry_after_seconds: float, default_load_timeout: float
    ) -> None:
        self._view = view
        self._clients = clients
        self._retry_after = retry_after_seconds
        self._default_load_timeout = default_load_timeout
        # Instance id → monotonic time until which it is left alone after failing to answer.
        self._unreachable: dict[str, float] = {}
        # Instance id → (incarnation, bytes): what it held when it ran out of memory, below the capacity it reports.
        self._capacity_caps: dict[str, tuple[int, int]] = {}
        self._device_caps: dict[str, tuple[int, int]] = {}

    # ---- reachability ------------------------------------------------------------------------------------

    def mark_unreachable(self, instance_id: str, reason: str) -> None:
        """Keep new loads and requests off an instance that did not answer, for a while."""
        if instance_id not in self._unreachable:
            log.warning(
                "runtime instance %s is unreachable (%s); routing around it",
                instance_id,
                reason,
                extra={"event": "instance_unreachable", "instance": instance_id, "error": reason},
            )
        self._unreachable[instance_id] = time.monotonic() + self._retry_after

    def mark_reachable(self, instance_id: str) -> None:
        """The instance answered a probe (it was just added): route to it at once."""
        self._unreachable.pop(instance_id, None)

    def reachable(self, instance_id: str) -> bool:
        until = self._unreachable.get(instance_id)
        if until is None:
            return True
        if time.monotonic() >= until:
            del self._unreachable[instance_id]  # worth one more try
            return True
        return False

    def answering(self, instance_id: str) -> bool:
        """reachable(), and its channel is not failing to connect now. Off the data path: a look at a channel
        starts it connecting when idle, so a runtime that died unnoticed shows here by the next look."""
        return self.reachable(instance_id) and not self._clients.get(instance_id).cannot_connect()

    # ---- capacity ----------------------------------------------------------------------------------------

    def cap_capacity(self, instance_id: str, reason: str, device: bool = False) -> bool:
        """The runtime ran out of memory below the capacity it reports: trust what it held then (the sizes its
        ModelSize answers gave) as its capacity, until it restarts; device: its accelerator memory ran out (the
        load needed some), so that is the dimension capped. False when it held nothing: then the model alone is
        too big for it, which is the model's failure there, not the instance's."""
        known = self._view.instances.get(instance_id)
        if known is None:
            return False
        incarnation = known.record.started_ms
        held = sum(
            copy.device_bytes if device else copy.size_bytes
            for placement in self._view.placements.values()
            if (copy := placement.record.copies.get(instance_id)) is not None
            and copy.state is CopyState.LOADED
            and copy.incarnation == incarnation
        )
        if held == 0:
            return False
        (self._device_caps if device else self._capacity_caps)[instance_id] = (incarnation, held)
        reported = known.record.device_capacity_bytes if device else known.record.capacity_bytes
        log.warning(
            "runtime instance %s ran out of %s memory holding %d of the %d bytes it reports (%s); placing as if it "
            "had %d",
            instance_id,
            "accelerator" if device else "host",
            held,
            reported,
            reason,
            held,
            extra={"event": "capacity_capped", "instance": instance_id, "bytes": held, "device": device},
        )
        return True

    def weighed(self, record: InstanceRecord) -> InstanceRecord:
        """The record as placement should weigh it: capped where the runtime ran out of memory below it."""
        cap = self._capacity_caps.get(record.instance_id)
        if cap is not None and cap[0] == record.started_ms and cap[1] < record.capacity_bytes:
            record = dataclasses.replace(record, capacity_bytes=cap[1])
        cap = self._device_caps.get(record.instance_id)
        if cap is not None and cap[0] == record.started_ms and cap[1] < record.device_capacity_bytes:
            record = dataclasses.replace(record, device_capacity_bytes=cap[1])
        return record

    def load_timeout(self, instance_id: str) -> float:
        """How long one load may take there: what the runtime states, else the router's setting."""
        known = self._view.instances.get(instance_id)
        if known is not None and known.record.load_timeout_ms:
            return known.record.load_timeout_ms / 1000
        return self._default_load_timeout
