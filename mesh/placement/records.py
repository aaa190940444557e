"""The records placement keeps in the KV store, and the keys they live under.

Small JSON records, one key each, so every update is a compare-and-swap on that key's mod revision:
  <prefix>/models/<id>      ModelRecord      what was registered (survives restarts)
  <prefix>/placements/<id>  PlacementRecord  where copies are, their state, load failures, last use
  <prefix>/vmodels/<id>     VModelRecord     alias → concrete model
  <prefix>/instances/<id>   InstanceRecord   a runtime instance, bound to a lease
  <prefix>/demand/<router>  DemandRecord     the models one router has requests in flight or waiting for (lease)
Ids are percent-encoded in keys so any string (including '/') is a valid id.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote, unquote


def now_ms() -> int:
    return int(time.time() * 1000)


MAX_LABEL_CHARS = 128
_LABEL = re.compile(r"[!-+\--~]+")  # printable ASCII but space and ',' (flags list labels separated by commas)


def checked_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels as stored (sorted, without repeats); a ValueError that names the first that cannot be one."""
    labels = tuple(labels)
    for label in labels:
        if not _LABEL.fullmatch(label) or len(label) > MAX_LABEL_CHARS:
            raise ValueError(
                f"label {label!r} is not one: 1 to {MAX_LABEL_CHARS} printable ASCII characters, no space or ','"
            )
    return tuple(sorted(set(labels)))


class Kind(enum.Enum):
    MODEL = "models"
    PLACEMENT = "placements"
    VMODEL = "vmodels"
    INSTANCE = "instances"
    DEMAND = "demand"


@dataclass(frozen=True)
class Keys:
    """Key layout under one prefix."""

    prefix: str

    def key(self, kind: Kind, record_id: str) -> str:
        return f"{self.prefix}/{kind.value}/{quote(record_id, safe='')}"

    def kind_prefix(self, kind: Kind) -> str:
        return f"{self.prefix}/{kind.value}/"

    @property
    def root(self) -> str:
        return f"{self.prefix}/"

    def parse(self, key: str) -> tuple[Kind, str] | None:
        """(kind, id) for a key under this prefix, None for anything else."""
        if not key.startswith(self.root):
            return None
        kind_name, _, encoded = key[len(self.root) :].partition("/")
        try:
            return Kind(kind_name), unquote(encoded)
        except ValueError:
            return None


class Record:
    """A record stored as JSON under one key."""

    def to_bytes(self) -> bytes:
        # vars(), not dataclasses.asdict: asdict deep-copies every field first, a quarter of a registration's cost.
        # Nested records (copies, failures) are dataclasses too and go through default=vars the same way.
        return json.dumps(vars(self), separators=(",", ":"), default=vars).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(**raw)


@dataclass(frozen=True)
class ModelRecord(Record):
    model_id: str
    model_type: str
    path: str = ""
    key: str = ""
    registered_ms: int = 0
    # Labels an instance must carry, all of them, to hold a copy (a tenant's runtime, say): empty, any instance of
    # the model's type.
    labels: tuple[str, ...] = ()
    # Its copies are never evicted to make room (idle extra copies may still be retired: one stays).
    pinned: bool = False
    # Copies kept loaded at all times (on as many instances, as far as they exist): loaded without waiting for a
    # request, and never evicted or retired below this many. 0: none kept (the first request loads it).
    min_copies: int = 0
    # Labels it prefers an instance to carry: among the instances that can hold it, those with more of them first.
    preferred_labels: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        labels = {"labels": tuple(raw.get("labels", ())), "preferred_labels": tuple(raw.get("preferred_labels", ()))}
        return cls(**{**raw, **labels})

    def keeping(self) -> tuple[bool, int, tuple[str, ...]]:
        """How the model is kept and placed beyond its spec: pinned, minimum copies, preferred labels. Registering
        the model again with the same spec sets these anew."""
        return (self.pinned, self.min_copies, self.preferred_labels)

    def kept_as(self, other: ModelRecord) -> ModelRecord:
        """This record with the other's keeping."""
        pinned, min_copies, preferred = other.keeping()
        return dataclasses.replace(self, pinned=pinned, min_copies=min_copies, preferred_labels=preferred)

    def same_spec(self, other: ModelRecord) -> bool:
        mine = (self.model_type, self.path, self.key, self.labels)
        return mine == (other.model_type, other.path, other.key, other.labels)


@dataclass(frozen=True)
class Footprint:
    """The memory a copy holds: host bytes, and accelerator (GPU) bytes where it runs on one."""

    size_bytes: int
    device_bytes: int = 0


class CopyState(enum.StrEnum):
    LOADING = "LOADING"
    LOADED = "LOADED"


@dataclass(frozen=True)
class CopyRecord(Record):
    state: CopyState
    since_ms: int
    size_bytes: int
    # The instance's started_ms when the copy was made: a copy from an earlier incarnation is gone.
    incarnation: int = 0
    # Accelerator memory it holds, besides size_bytes of host memory.
    device_bytes: int = 0


@dataclass(frozen=True)
class LoadFailure(Record):
    message: str
    time_ms: int


@dataclass(frozen=True)
class PlacementRecord(Record):
    """Where a model's copies are. Keyed by instance id."""

    copies: dict[str, CopyRecord] = field(default_factory=dict)
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    last_used_ms: int = 0
    # The best size known: predicted before the first load, measured after (host bytes, then device bytes).
    size_bytes: int = 0
    device_bytes: int = 0
    # How long the model's last load took (loadModel alone): what evicting a copy of it costs ("cost" policy).
    load_ms: int = 0

    @property
    def footprint(self) -> Footprint:
        return Footprint(self.size_bytes, self.device_bytes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(
            copies={
                i: CopyRecord(
                    CopyState(c["state"]),
                    c["since_ms"],
                    c["size_bytes"],
                    c.get("incarnation", 0),
                    c.get("device_bytes", 0),
                )
                for i, c in raw.get("copies", {}).items()
            },
            failures={i: LoadFailure(**f) for i, f in raw.get("failures", {}).items()},
            last_used_ms=raw.get("last_used_ms", 0),
            size_bytes=raw.get("size_bytes", 0),
            device_bytes=raw.get("device_bytes", 0),
            load_ms=raw.get("load_ms", 0),
        )

    def with_copy(self, instance_id: str, copy: CopyRecord) -> PlacementRecord:
        failures = {i: f for i, f in self.failures.items() if i != instance_id}
        if copy.state is CopyState.LOADED:  # measured
            size, device = copy.size_bytes, copy.device_bytes
        else:
            size, device = self.size_bytes or copy.size_bytes, self.device_bytes or copy.device_bytes
        copies = {**self.copies, instance_id: copy}
        return dataclasses.replace(self, copies=copies, failures=failures, size_bytes=size, device_bytes=device)

    def without_copy(self, instance_id: str) -> PlacementRecord:
        copies = {i: c for i, c in self.copies.items() if i != instance_id}
        return dataclasses.replace(self, copies=copies)

    def with_failure(self, instance_id: str, failure: LoadFailure) -> PlacementRecord:
        copies = {i: c for i, c in self.copies.items() if i != instance_id}
        return dataclasses.replace(self, copies=copies, failures={**self.failures, instance_id: failure})

    def used_at(self, last_used_ms: int) -> PlacementRecord:
        return dataclasses.replace(self, last_used_ms=max(self.last_used_ms, last_used_ms))


@dataclass(frozen=True)
class InstanceRecord(Record):
    """A runtime instance as the router sees it: where it is and how much it can hold."""

    instance_id: str
    endpoint: str
    capacity_bytes: int
    # Model types the runtime loads; empty means any.
    model_types: tuple[str, ...] = ()
    loading_slots: int = 1
    default_model_size: int = 1_000_000
    load_timeout_ms: int = 0
    # "package.Service/Method" → field-number path where the model id is injected.
    methods: dict[str, tuple[int, ...]] = field(default_factory=dict)
    started_ms: int = 0
    # Where inference goes when not to `endpoint` (an adapter's model server); empty: `endpoint` serves both.
    data_endpoint: str = ""
    # Both endpoints serve TLS: routers dial them with their runtime TLS settings.
    tls: bool = False
    # The runtime takes the model id from an mm-model-id request header (meshReadsModelIdHeader): the native data
    # plane may send it requests whose body names a vmodel or another name, as they are.
    reads_model_header: bool = False
    # What this instance offers beyond its types (meshLabels): models that require labels load only where all are.
    labels: tuple[str, ...] = ()
    # Told to stop: it serves what it holds while its recently used models are loaded elsewhere, and takes no
    # new copy (adapters/common/handoff.py).
    draining: bool = False
    # Accelerator (GPU) memory for models, the sum over its devices (meshDevices); 0: host memory only.
    device_capacity_bytes: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        raw = dict(raw)
        raw["model_types"] = tuple(raw.get("model_types", ()))
        raw["methods"] = {m: tuple(p) for m, p in raw.get("methods", {}).items()}
        raw["labels"] = tuple(raw.get("labels", ()))
        return cls(**raw)

    def supports(self, model_type: str, labels: tuple[str, ...] = ()) -> bool:
        """Whether a copy of a model of this type, requiring these labels, may load here."""
        return (not self.model_types or model_type in self.model_types) and set(labels) <= set(self.labels)


@dataclass(frozen=True)
class VModelRecord(Record):
    """An alias: requests for the vmodel go to active_model_id until target_model_id has loaded."""

    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str = ""
    auto_delete: bool = False
    failed: bool = False
    # While moving: the copies the target must have before the vmodel switches (the active model's, when the move
    # began).
    copies_wanted: int = 1

    def moved(self) -> VModelRecord:
        """The move is done: the target is the active model."""
        return VModelRecord(self.vmodel_id, self.target_model_id, self.target_model_id, self.owner, self.auto_delete)

    def failed_move(self) -> VModelRecord:
        """The target did not load: the active model stays, and says so."""
        return dataclasses.replace(self, failed=True)


@dataclass(frozen=True)
class DemandRecord(Record):
    """The models one router has requests in flight for or waiting for a load: no router evicts a copy of them."""

    router_id: str
    models: tuple[str, ...] = ()
    # Requests per minute this router routed (or its engine served) per model over its last rate review: the
    # cluster's rate of a model is the sum over routers (scaling.py).
    rates: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["router_id"], tuple(raw.get("models", ())), dict(raw.get("rates", {})))
