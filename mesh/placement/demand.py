"""Demand across routers: which models each router has requests in flight for, or waiting for a load.

A router knows its own demand (the copy table's leases, the loader's waiting loads) and never evicts a copy a
request of its own is using. With several routers on one store, a copy busy on router B looks idle to router A;
so each router publishes its demand, as one small record under its lease, at most every `period` seconds and
only when it changed, and no router evicts a copy of a model in another router's demand. The record vanishes
with its router (the lease), and a router alone on its store reads no one else's.

The same record carries the router's request rate per model, as its last rate review measured it, so that the
rate that decides a scale-up is the cluster's (the sum over routers), not what one router happens to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from mesh.periodic import every
from mesh.placement.instances import LeasePublisher
from mesh.placement.records import DemandRecord, Kind
from mesh.placement.view import LocalView

log = logging.getLogger(__name__)

MAX_MODELS = 1000
"""At most this many models in one record (a router with more in flight publishes the first ones), and at most this
many rates (the highest)."""


class DemandBoard:
    def __init__(
        self, view: LocalView, publisher: LeasePublisher, local: Callable[[], set[str]], period: float
    ) -> None:
        """local: this router's demand now; period: how often it is published when it changed (0: never)."""
        self.router_id = uuid.uuid4().hex
        self._view = view
        self._publisher = publisher
        self._local = local
        self._period = period
        self._rates: dict[str, float] = {}
        self._published: DemandRecord | None = None
        self._task: asyncio.Task[None] | None = None

    def others(self) -> frozenset[str]:
        """The models every other router has demand for now (as its last published record says)."""
        return frozenset(
            model
            for router_id, demand in self._view.demands.items()
            if router_id != self.router_id
            for model in demand.record.models
        )

    def set_rates(self, rates: dict[str, float]) -> None:
        """This router's requests per minute per model, from its last rate review (published with the demand)."""
        top = sorted(rates.items(), key=lambda mr: -mr[1])[:MAX_MODELS]
        self._rates = {model_id: round(rate, 1) for model_id, rate in top if rate > 0}

    def cluster_rates(self) -> dict[str, float]:
        """Requests per minute per model across routers: this router's last review plus every other router's last
        published one."""
        rates = dict(self._rates)
        for router_id, demand in self._view.demands.items():
            if router_id != self.router_id:
                for model_id, rate in demand.record.rates.items():
                    rates[model_id] = rates.get(model_id, 0.0) + rate
        return rates

    def leads(self) -> bool:
        """This router is the one of the routers sharing the store (those with a demand record) with the lowest id:
        the one that does what only one should (a draining instance's hand-off). When it goes, its record goes
        with its lease, and the next takes over."""
        return self.router_id <= min(self._view.demands, default=self.router_id)

    def others_present(self) -> bool:
        """Another router shares the store (its demand record is in the view, under its lease)."""
        return any(router_id != self.router_id for router_id in self._view.demands)

    def start(self) -> None:
        if self._period > 0:
            publishing = every(self._period, self.publish, "publishing this router's demand", log)
            self._task = asyncio.create_task(publishing, name="demand-publish")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(self) -> None:
        """Publish this router's demand and rates if they changed since the last time."""
        record = DemandRecord(self.router_id, tuple(sorted(self._local()))[:MAX_MODELS], self._rates)
        if record == self._published:
            return
        written = await self._publisher.put(Kind.DEMAND, self.router_id, record)
        self._view.apply_put(written)
        self._published = record
