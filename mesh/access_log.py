"""The access log: one line per request mesh's doors forward (Settings.access_log, off by default), as
ModelMesh's log-each-invocation: method, the name asked for, the model it resolved to, the instance that served
it, the status, the latency (load wait included), the request's and the response's sizes, whether the copy was
loaded already (a hit), and the model's size. Logger `mesh.access`, INFO; with `--log-format json` each line is
a JSON object with those fields (event "access"), which `mesh simulate` reads as a trace.

Requests the native data plane (HAProxy) routes itself come here through engine/access.py, which writes a line for
each that the engine reports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("mesh.access")


@dataclass(slots=True)
class AccessNote:
    """What the forward learned on the way, for its line."""

    model_id: str = ""
    instance_id: str = ""
    hit: bool = False


def write(
    method: str,
    name: str,
    note: AccessNote,
    code: str,
    started: float,
    request_bytes: int,
    response_bytes: int,
    model_bytes: int,
) -> None:
    ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        "%s %s -> %s on %s: %s in %.1f ms (%d B in, %d B out, %s)",
        method,
        name,
        note.model_id or "-",
        note.instance_id or "-",
        code,
        ms,
        request_bytes,
        response_bytes,
        "hit" if note.hit else "miss",
        extra={
            "event": "access",
            "method": method,
            "asked": name,
            "model": note.model_id,
            "instance": note.instance_id,
            "code": code,
            "ms": ms,
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "hit": note.hit,
            "model_bytes": model_bytes,
        },
    )
