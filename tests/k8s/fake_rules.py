"""The parts of the fake API server that are rules rather than storage: label selectors, merge patch (RFC 7386)
and JSON patch (RFC 6902), and the error every request handler answers with."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        return web.json_response(body, status=self.code)


def label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A label selector (k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b); comma-separated) as a predicate."""
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        part = part.strip().strip(",").strip()
        if not part:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            requirements.append((m.group(1), m.group(2), frozenset(v.strip() for v in m.group(3).split(","))))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", part):
            requirements.append((m.group(1), "notin" if m.group(2) == "!=" else "in", frozenset([m.group(3)])))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            requirements.append((m.group(2), "absent" if m.group(1) else "present", frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")

    def matches(labels: dict[str, str]) -> bool:
        for key, operator, values in requirements:
            if operator == "in" and labels.get(key) not in values:
                return False
            if operator == "notin" and labels.get(key) in values:
                return False
            if operator == "present" and key not in labels:
                return False
            if operator == "absent" and key in labels:
                return False
        return True

    return matches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)

    def parent(parts: list[str]) -> tuple[Any, str]:
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(parts: list[str]) -> Any:
        node: Any = doc
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def add(parts: list[str], value: Any) -> None:
        node, last = parent(parts)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value

    def remove(parts: list[str]) -> Any:
        node, last = parent(parts)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    for op in ops:
        try:
            parts = _pointer(op["path"])
            name = op["op"]
            if not parts and name in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
            elif name == "add":
                add(parts, copy.deepcopy(op["value"]))
            elif name == "remove":
                remove(parts)
            elif name == "replace":
                remove(parts)
                add(parts, copy.deepcopy(op["value"]))
            elif name in ("move", "copy"):
                source = _pointer(op["from"])
                value = remove(source) if name == "move" else copy.deepcopy(get(source))
                add(parts, value)
            elif name == "test":
                if get(parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"test of {op['path']} failed")
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {name!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {op!r} does not apply: {exc!r}") from None
    return doc
