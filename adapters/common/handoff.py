"""A runtime told to stop hands its models over before it leaves routing (a rollout without cold-load storms).

On SIGTERM (a pod's termination) a runtime that published itself marks its record draining. Routers place
nothing more on it and load each model it holds that was used within their working-set window on other
instances (mesh/placement/scaling.py, CopyScaler.hand_off), while it goes on serving. The runtime watches the
store until each model it holds that was used within `recent_s` has a loaded copy on an instance that is not
draining, or cannot have one (no other instance takes its type and labels), or until `grace_s` has passed; only
then does it withdraw its record and finish the requests in flight. No router has to be the one told, and a
router dying meanwhile changes nothing: the others follow the same record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TypeVar

from mesh.kv.base import KV
from mesh.placement.instances import LeasePublisher
from mesh.placement.records import CopyState, InstanceRecord, Keys, Kind, ModelRecord, PlacementRecord, Record, now_ms

log = logging.getLogger(__name__)

POLL_S = 0.2
R = TypeVar("R", bound=Record)


async def _records(kv: KV, keys: Keys, kind: Kind, cls: type[R]) -> dict[str, R]:
    items, _revision = await kv.get_prefix(keys.kind_prefix(kind))
    records: dict[str, R] = {}
    for item in items:
        parsed = keys.parse(item.key)
        if parsed is not None:
            records[parsed[1]] = cls.from_bytes(item.value)
    return records


async def models_to_hand_off(kv: KV, keys: Keys, me: InstanceRecord, recent_s: float) -> list[str]:
    """The models loaded here, used within recent_s, with no loaded copy on an instance that is not draining and
    at least one such instance able to take them."""
    instances = await _records(kv, keys, Kind.INSTANCE, InstanceRecord)
    models = await _records(kv, keys, Kind.MODEL, ModelRecord)
    placements = await _records(kv, keys, Kind.PLACEMENT, PlacementRecord)
    others = {i: r for i, r in instances.items() if i != me.instance_id and not r.draining}
    horizon = now_ms() - recent_s * 1000
    waiting = []
    for model_id, placement in placements.items():
        mine = placement.copies.get(me.instance_id)
        model = models.get(model_id)
        if mine is None or mine.state is not CopyState.LOADED or mine.incarnation != me.started_ms:
            continue
        if model is None or placement.last_used_ms < horizon:
            continue
        if not any(r.supports(model.model_type, model.labels) for r in others.values()):
            continue  # nowhere to go: waiting would only delay the stop
        elsewhere = any(
            copy.state is CopyState.LOADED and i in others and copy.incarnation == others[i].started_ms
            for i, copy in placement.copies.items()
        )
        if not elsewhere:
            waiting.append(model_id)
    return sorted(waiting)


async def hand_off(
    kv: KV, keys: Keys, publisher: LeasePublisher, record: InstanceRecord, grace_s: float, recent_s: float
) -> list[str]:
    """Mark the instance draining and wait (at most grace_s) for its recently used models to be loaded elsewhere;
    the models that were not, if any."""
    await publisher.publish(dataclasses.replace(record, draining=True))
    deadline = time.monotonic() + grace_s
    waiting = await models_to_hand_off(kv, keys, record, recent_s)
    if waiting:
        log.info("draining: handing %d recently used model(s) to other instances first", len(waiting))
    while waiting and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        waiting = await models_to_hand_off(kv, keys, record, recent_s)
    if waiting:
        log.warning(
            "draining: %d model(s) not loaded elsewhere after %.0f s, leaving anyway: %s",
            len(waiting),
            grace_s,
            ", ".join(waiting[:10]),
        )
    else:
        log.info("draining: every recently used model is served elsewhere")
    return waiting
