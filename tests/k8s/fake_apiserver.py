"""A small Kubernetes API server for tests: real HTTP on 127.0.0.1, generic over group/version/plural.

It speaks enough of the API for the real `kubernetes` client: list (with a label selector), watch
(`?watch=true`, from a resourceVersion, newline-delimited events, 410 Gone once the history is compacted past
it), get, create, replace, merge and JSON patch, delete, and the status subresource (the main endpoint keeps
status; /status changes only status). Every write takes the next resourceVersion of one store-wide counter, and
metadata.generation counts spec changes. Objects are validated by an optional per-type hook (a CRD's schema).

Not here: finalizers and graceful deletion, field selectors, bookmarks, server-side apply, strategic merge (a
strategic merge patch is applied as a merge patch), and ADDED/DELETED events for objects that start or stop
matching a watch's label selector.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from fake_rules import ApiError, Obj, json_patch, label_selector, merge_patch

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    validate: Callable[[Obj], None] | None = field(default=None, compare=False, hash=False)
    """Raises ValueError for an object the type does not accept (answered 422 Invalid)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN_TYPES = (
    ResourceType("apps", "v1", "deployments", "Deployment"),
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
)


@dataclass
class Event:
    rv: int
    type: ResourceType
    kind: str  # ADDED, MODIFIED, DELETED
    obj: Obj


class FakeApiServer:
    """Start it, point a kubernetes.client.Configuration at `url`, stop it (also ends every watch)."""

    def __init__(self, types: tuple[ResourceType, ...] = (), history: int = 10_000) -> None:
        self._types = {(t.group, t.version, t.plural): t for t in (*BUILTIN_TYPES, *types)}
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {t: {} for t in self._types.values()}
        self._rv = 0
        self._events: deque[Event] = deque(maxlen=history)
        self._forgotten_rv = 0  # events at or below this are no longer in the history
        self._changed: asyncio.Condition | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.writes: list[tuple[str, str]] = []
        """(method, path) of every request that changed something, in order."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-apiserver", daemon=True)
        self._thread.start()
        if not started.wait(STOP_TIMEOUT_S) or failure:
            raise RuntimeError(f"the fake API server did not start: {failure}")
        return self

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        """End every watch and connection, then the loop and its thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(STOP_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)

    async def _shutdown(self) -> None:
        self._closing = True
        assert self._changed is not None and self._runner is not None
        async with self._changed:
            self._changed.notify_all()  # watches see _closing and end their response
        await self._runner.cleanup()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    # ---- for tests --------------------------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: watches from an older version get 410 Gone."""
        assert self._loop is not None

        def forget() -> None:
            self._events.clear()
            self._forgotten_rv = self._rv

        self._loop.call_soon_threadsafe(forget)

    def resource_version(self) -> int:
        return self._rv

    # ---- dispatch ---------------------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
        """(type, namespace, name, subresource) from /api/v1/... or /apis/group/version/..."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        kind = self._types.get((group, version, rest[0]))
        if kind is None or (namespace is not None and not kind.namespaced):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (sub != "status" or not kind.status_subresource):
            raise ApiError(404, "NotFound", f"no subresource {sub!r} on {kind.plural}")
        if kind.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", f"{kind.plural} are namespaced: {path}")
        return kind, namespace, name, sub

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            kind, namespace, name, sub = self._route(request.path)
            method = request.method
            if method == "GET" and name is None:
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, kind, namespace)
                return web.json_response(self._list(kind, namespace, request.query.get("labelSelector", "")))
            if method == "GET":
                return web.json_response(self._get(kind, namespace, name))
            body = await request.json() if request.can_read_body else None
            if method == "POST" and name is None:
                result, code = self._create(kind, namespace, body), 201
            elif method == "PUT" and name is not None:
                result, code = self._replace(kind, namespace, name, sub, body), 200
            elif method == "PATCH" and name is not None:
                result, code = self._patch(kind, namespace, name, sub, body, request.content_type), 200
            elif method == "DELETE" and name is not None and sub is None:
                result, code = self._delete(kind, namespace, name), 200
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {request.path}")
            self.writes.append((method, request.path))
            return web.json_response(result, status=code)
        except ApiError as exc:
            return exc.response()
        except json.JSONDecodeError as exc:
            return ApiError(400, "BadRequest", f"the body is not JSON: {exc}").response()

    # ---- reads ------------------------------------------------------------------------------------------

    def _matching(self, kind: ResourceType, namespace: str | None, selector: str) -> list[Obj]:
        matches = label_selector(selector)
        return [
            o
            for (ns, _), o in sorted(self._objects[kind].items())
            if (namespace is None or ns == namespace) and matches(o["metadata"].get("labels") or {})
        ]

    def _list(self, kind: ResourceType, namespace: str | None, selector: str) -> Obj:
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": self._matching(kind, namespace, selector),
        }

    def _get(self, kind: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects[kind].get((namespace or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
        return obj

    async def _watch(self, request: web.Request, kind: ResourceType, namespace: str | None) -> web.StreamResponse:
        assert self._changed is not None
        query = request.query
        matches = label_selector(query.get("labelSelector", ""))
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = asyncio.get_running_loop().time() + timeout
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        def line(event_type: str, obj: Obj) -> bytes:
            return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        start = query.get("resourceVersion") or "0"
        if start == "0":  # current state as ADDED events, then what follows
            for obj in self._matching(kind, namespace, query.get("labelSelector", "")):
                await response.write(line("ADDED", obj))
            seen = self._rv
        else:
            seen = int(start)
            if seen < self._forgotten_rv:
                gone = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Expired",
                    "code": 410,
                    "message": f"too old resource version: {seen} ({self._forgotten_rv})",
                }
                await response.write(line("ERROR", gone))
                return response
        while True:
            pending = [e for e in self._events if e.rv > seen]
            for event in pending:  # writes may yield: events committed meanwhile are taken on the next round
                seen = event.rv
                ns = event.obj["metadata"].get("namespace", "")
                if event.type is kind and (namespace is None or ns == namespace):
                    if matches(event.obj["metadata"].get("labels") or {}):
                        await response.write(line(event.kind, event.obj))
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._closing:
                return response
            if pending:
                continue
            # Nothing yields between the check above and wait() below, so no commit can slip in unnoticed.
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return response

    # ---- writes -----------------------------------------------------------------------------------------

    def _commit(self, kind: ResourceType, event: str, obj: Obj) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if event == "DELETED":
            self._objects[kind].pop(key, None)
        else:
            self._objects[kind][key] = obj
        if len(self._events) == self._events.maxlen:
            self._forgotten_rv = self._events[0].rv
        self._events.append(Event(self._rv, kind, event, copy.deepcopy(obj)))
        changed = self._changed
        assert changed is not None

        async def notify() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(notify())
        return copy.deepcopy(obj)

    def _check(self, kind: ResourceType, obj: Obj) -> None:
        if obj.get("kind") not in (None, kind.kind) or obj.get("apiVersion") not in (None, kind.api_version):
            raise ApiError(400, "BadRequest", f"expected {kind.api_version} {kind.kind}, got {obj.get('kind')}")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        if kind.validate is not None:
            try:
                kind.validate(obj)
            except ValueError as exc:
                raise ApiError(422, "Invalid", f"{kind.kind} {obj['metadata'].get('name')} is invalid: {exc}") from None

    def _create(self, kind: ResourceType, namespace: str | None, body: Obj) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict) or not body["metadata"].get("name"):
            raise ApiError(422, "Invalid", "metadata.name is required")
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        if kind.namespaced:
            if namespace is None or meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            meta["namespace"] = namespace
        if (meta.get("namespace", ""), meta["name"]) in self._objects[kind]:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists')
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        if kind.status_subresource:
            obj.pop("status", None)
        self._check(kind, obj)
        return self._commit(kind, "ADDED", obj)

    def _replace(self, kind: ResourceType, namespace: str | None, name: str, sub: str | None, body: Obj) -> Obj:
        current = self._get(kind, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(422, "Invalid", "the body must be an object with metadata")
        wanted_rv = body["metadata"].get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return self._update(kind, current, body, sub)

    def _patch(
        self, kind: ResourceType, namespace: str | None, name: str, sub: str | None, body: Any, content_type: str
    ) -> Obj:
        current = self._get(kind, namespace, name)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            patched = json_patch(current, body)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            patched = merge_patch(current, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported")
        return self._update(kind, current, patched, sub)

    def _update(self, kind: ResourceType, current: Obj, body: Obj, sub: str | None) -> Obj:
        if sub == "status":
            obj = copy.deepcopy(current)
            obj["status"] = copy.deepcopy(body.get("status"))
            if obj["status"] is None:
                obj.pop("status")
        else:
            obj = copy.deepcopy(body)
            meta, old_meta = obj.setdefault("metadata", {}), current["metadata"]
            for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if fixed in old_meta:
                    meta[fixed] = old_meta[fixed]
                else:
                    meta.pop(fixed, None)
            if kind.status_subresource:
                obj.pop("status", None)
                if "status" in current:
                    obj["status"] = copy.deepcopy(current["status"])

            def spec(o: Obj) -> Obj:
                return {k: v for k, v in o.items() if k not in ("metadata", "status", "kind", "apiVersion")}

            if spec(obj) != spec(current):
                meta["generation"] = old_meta.get("generation", 1) + 1
        self._check(kind, obj)
        unchanged = {**obj, "metadata": {**obj["metadata"], "resourceVersion": None}} == {
            **current,
            "metadata": {**current["metadata"], "resourceVersion": None},
        }
        if unchanged:  # as the API server does: a no-op write is not an event and keeps the version
            return copy.deepcopy(current)
        return self._commit(kind, "MODIFIED", obj)

    def _delete(self, kind: ResourceType, namespace: str | None, name: str) -> Obj:
        current = self._get(kind, namespace, name)
        self._commit(kind, "DELETED", copy.deepcopy(current))
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": kind.plural, "uid": current["metadata"]["uid"]},
        }
