"""Names in a namespace: one mesh serves many Kubernetes namespaces, so an InferenceService's vmodel id is
qualified with its namespace (`fraud.team-a`: KServe's own `<name>.<namespace>` host order), and two namespaces
may each have a `fraud`. A router told its namespace (the one inside a runtime pod, which the InferenceService's
status URL names) answers the bare name too: `fraud` there means `fraud.<its namespace>` when that vmodel exists,
before any model or vmodel registered under the bare name, so a tenant's clients never reach another's model by
using the name they gave. Elsewhere (the shared router, no namespace) names are exact. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def namespaced_id(name: str, namespace: str) -> str:
    """The id a namespace's `name` is registered under."""
    return f"{name}.{namespace}"


class LocalNames:
    def __init__(self, namespace: str = "") -> None:
        self._suffix = f".{namespace}" if namespace else ""

    def lookup(self, table: Mapping[str, T], name: str) -> T | None:
        """The entry `name` means here: its namespace's first, then the exact one."""
        if self._suffix:
            local = table.get(name + self._suffix)
            if local is not None:
                return local
        return table.get(name)

    def candidates(self, name: str) -> tuple[str, ...]:
        """The ids `name` may mean here, first first."""
        return (name + self._suffix, name) if self._suffix else (name,)

    def local_name(self, qualified: str) -> str | None:
        """The bare name an id of this namespace also answers to here (None: exact only)."""
        if self._suffix and qualified.endswith(self._suffix) and len(qualified) > len(self._suffix):
            return qualified[: -len(self._suffix)]
        return None

    def names(self, ids: Mapping[str, object]) -> set[str]:
        """Every name requests may use here for these ids: the ids, and the bare names of this namespace's."""
        return set(ids) | {bare for i in ids if (bare := self.local_name(i)) is not None}
